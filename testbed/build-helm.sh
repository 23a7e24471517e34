#!/usr/bin/env bash
# Builds Helm, which renders and lints the chart (charts/rewind) and generates manifests/, from the
# Go module proxy into a cache outside the repository, keyed by version. A second run with the
# binary present returns at once. Prints the bin directory on stdout.
#
# HELM_VERSION is the newest Helm 3 release the proxy served when it was pinned
# (`go list -m -versions helm.sh/helm/v3`); Helm 4 is a separate module (helm.sh/helm/v4).
set -euo pipefail
HELM_VERSION=v3.22.0

cache=${REWIND_CACHE:-$HOME/.cache/rewind}
bin="$cache/bin/helm-$HELM_VERSION"
if [ -x "$bin/helm" ]; then echo "$bin"; exit 0; fi

export GOTOOLCHAIN=local CGO_ENABLED=0
log() { echo "[testbed build] $*" >&2; }
mkdir -p "$bin" "$cache/src"
work=$(mktemp -d "$cache/src/helm-$HELM_VERSION.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$(date +%s)

module=helm.sh/helm/v3
log "fetching $module@$HELM_VERSION"
gomod=$(go mod download -json "$module@$HELM_VERSION" | python3 -c 'import json,sys;print(json.load(sys.stdin)["GoMod"])')
# The ldflags of Helm's own Makefile: its version, and the Kubernetes version that `helm template`
# and `helm lint` assume without a cluster (that of the client-go it is built with: v0.37 -> 1.37).
client_go=$(sed -n 's#^\tk8s\.io/client-go v0\.\([0-9]*\)\..*#\1#p' "$gomod")
[ -n "$client_go" ] || { log "no k8s.io/client-go in $gomod"; exit 1; }
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$client_go"
done
log "building helm $HELM_VERSION (cold: a few minutes)"
# `go install module/cmd@version` builds with the module's own go.mod and go.sum: the dependency
# set Helm's maintainers tested.
GOBIN="$work" go install -trimpath -ldflags "$ldflags" "$module/cmd/helm@$HELM_VERSION" >&2
"$work/helm" version --short >&2
# Moved into place whole, so an interrupted build never leaves a binary that looks finished.
mv "$work/helm" "$bin/helm"
log "built in $(( $(date +%s) - start ))s into $bin"
echo "$bin"
