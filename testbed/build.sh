#!/usr/bin/env bash
# Builds the test control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, kwok) from the Go module proxy into a cache outside the repository, keyed by version.
# A second run with the binaries present returns at once. Prints the bin directory on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache=${REWIND_CACHE:-$HOME/.cache/rewind}
key="k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}"
bin="$cache/bin/$key"
wanted=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok)

have_all() { for b in "${wanted[@]}"; do [ -x "$bin/$b" ] || return 1; done; }
if have_all; then echo "$bin"; exit 0; fi

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
log() { echo "[testbed build] $*" >&2; }
work="$cache/src/$key"
mkdir -p "$bin" "$work"
start=$(date +%s)

# Kubernetes and etcd share one module so that they share one dependency set (the one Kubernetes
# tested), and compile shared packages once.
k8s="$work/kubernetes"
if [ ! -f "$k8s/.ready" ]; then
  rm -rf "$k8s"; mkdir -p "$k8s"; cd "$k8s"
  go mod init rewind.local/testbed-kubernetes >&2
  go mod edit -go=1.26.0 -require="k8s.io/kubernetes@$KUBERNETES_VERSION" \
    -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  gomod=$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | python3 -c 'import json,sys;print(json.load(sys.stdin)["GoMod"])')
  # k8s.io/kubernetes requires its staging modules at v0.0.0 and resolves them with replace lines
  # that a consumer does not inherit; map each to its published tag.
  for m in $(sed -n 's#^\t\(k8s\.io/[a-z0-9-]*\) v0\.0\.0$#\1#p' "$gomod"); do
    go mod edit -replace="$m=$m@$KUBERNETES_STAGING_VERSION"
  done
  cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  log "resolving Kubernetes $KUBERNETES_VERSION and etcd $ETCD_VERSION modules"
  go mod tidy -e >&2 || true
  touch .ready
fi
cd "$k8s"
ldk8s="-s -w -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$KUBERNETES_VERSION" | cut -d. -f2) -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION -X k8s.io/component-base/version.gitTreeState=clean"
log "building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (cold: tens of minutes)"
go build -trimpath -ldflags "$ldk8s" -o "$bin/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl >&2
log "building etcd"
go build -trimpath -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3 >&2

kw="$work/kwok"
if [ ! -f "$kw/.ready" ]; then
  rm -rf "$kw"; mkdir -p "$kw"; cd "$kw"
  go mod init rewind.local/testbed-kwok >&2
  go mod edit -go=1.26.0 -require="sigs.k8s.io/kwok@$KWOK_VERSION"
  printf '//go:build tools\n\npackage tools\n\nimport _ "sigs.k8s.io/kwok/cmd/kwok"\n' > tools.go
  log "resolving kwok $KWOK_VERSION modules"
  go mod tidy -e >&2 || true
  touch .ready
fi
cd "$kw"
log "building kwok"
go build -trimpath -ldflags "-s -w" -o "$bin/kwok" sigs.k8s.io/kwok/cmd/kwok >&2

have_all || { log "missing binaries in $bin"; exit 1; }
log "built in $(( $(date +%s) - start ))s into $bin"
echo "$bin"
