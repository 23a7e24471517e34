#!/usr/bin/env bash
# Builds a real node for the test control plane: kubelet and kube-proxy (from the same Kubernetes
# module as the control plane, so testbed/build.sh runs first), containerd with its runc shim and
# ctr, runc, the CNI plugins the node's pod network uses (bridge, host-local, loopback) and CoreDNS
# (its cluster DNS), all from the Go module proxy into a cache outside the repository, keyed by
# version. A second run with the binaries present returns at once. Prints the bin directory on
# stdout (the CNI plugins in its cni/).
#
# runc is built with cgo against Debian's libseccomp (the `seccomp` build tag): the Job pods ask for
# the RuntimeDefault seccomp profile, which a runc without seccomp cannot apply.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache=${REWIND_CACHE:-$HOME/.cache/rewind}
key="node-k8s-${KUBERNETES_VERSION}_containerd-${CONTAINERD_VERSION}_runc-${RUNC_VERSION}_cni-${CNI_PLUGINS_VERSION}_coredns-${COREDNS_VERSION}"
bin="$cache/bin/$key"
wanted=(kubelet kube-proxy containerd containerd-shim-runc-v2 ctr runc coredns cni/bridge cni/host-local cni/loopback)

have_all() { for b in "${wanted[@]}"; do [ -x "$bin/$b" ] || return 1; done; }
if have_all; then echo "$bin"; exit 0; fi

log() { echo "[testbed build] $*" >&2; }
for tool in gcc pkg-config; do
  command -v "$tool" >/dev/null || { log "$tool is missing (scripts/bootstrap-node.sh installs it)"; exit 1; }
done
pkg-config --exists libseccomp || { log "libseccomp-dev is missing (scripts/bootstrap-node.sh installs it)"; exit 1; }

control_plane=$("$here/build.sh")   # the Kubernetes module kubelet is built in
k8s="$cache/src/$(basename "$control_plane")/kubernetes"
[ -f "$k8s/.ready" ] || { log "no Kubernetes module at $k8s"; exit 1; }

export GOTOOLCHAIN=local
mkdir -p "$bin/cni"
work=$(mktemp -d "$cache/src/$key.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$(date +%s)

log "building kubelet and kube-proxy $KUBERNETES_VERSION"
ldk8s="-s -w -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$KUBERNETES_VERSION" | cut -d. -f2) -X k8s.io/component-base/version.gitTreeState=clean"
(cd "$k8s" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "$ldk8s" -o "$work/" k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy >&2)

# `go install module/cmd@version` builds each with the module's own go.mod and go.sum: the
# dependency set its maintainers tested.
log "building containerd $CONTAINERD_VERSION (containerd, containerd-shim-runc-v2, ctr)"
for cmd in containerd containerd-shim-runc-v2 ctr; do
  GOBIN="$work" CGO_ENABLED=0 go install -trimpath -tags "no_btrfs no_devmapper no_zfs" \
    -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/$cmd@$CONTAINERD_VERSION" >&2
done
log "building runc $RUNC_VERSION (cgo, seccomp)"
GOBIN="$work" CGO_ENABLED=1 go install -trimpath -tags "seccomp urfave_cli_no_docs" \
  -ldflags "-s -w -X main.version=${RUNC_VERSION#v}" "github.com/opencontainers/runc@$RUNC_VERSION" >&2
log "building CoreDNS $COREDNS_VERSION"
GOBIN="$work" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION" >&2
log "building CNI plugins $CNI_PLUGINS_VERSION (bridge, host-local, loopback)"
mkdir -p "$work/cni"
for plugin in main/bridge ipam/host-local main/loopback; do
  GOBIN="$work/cni" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" \
    "github.com/containernetworking/plugins/plugins/$plugin@$CNI_PLUGINS_VERSION" >&2
done

# Moved into place whole, so an interrupted build never leaves a set that looks finished.
for b in "${wanted[@]}"; do mv "$work/$b" "$bin/$b"; done
have_all || { log "missing binaries in $bin"; exit 1; }
log "built in $(( $(date +%s) - start ))s into $bin"
echo "$bin"
