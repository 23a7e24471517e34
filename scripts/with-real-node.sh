#!/usr/bin/env bash
# Runs a command against the test bed's control plane with one real node instead of kwok's:
# kubelet, kube-proxy, containerd and runc on this machine (testbed/rewind_testbed/node.py), where
# pods run for real. The command gets what the suite needs to run in the mode any existing cluster
# gets (KUBECONFIG, kubectl on PATH, REWIND_TEST_EXISTING_CLUSTER=1 and the settings
# testbed/rewind_testbed/external.py describes); the bed stops when it ends. Needs root
# (namespaces, cgroups, mounts, iptables).
#
#   bash scripts/with-real-node.sh .venv/bin/python -m pytest -ra    # make test-real-node
#   bash scripts/with-real-node.sh bash scripts/quickstart.sh        # make quickstart-real-node
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; }
bash scripts/bootstrap.sh
bash scripts/bootstrap-node.sh
dir=$(mktemp -d /tmp/rewind-real-node.XXXXXX)
chmod 755 "$dir"
.venv/bin/rewind-testbed up --real-node --no-postgres --dir "$dir" > "$dir/up.log" 2>&1 &
bed=$!
# The bed stops (its node unmounts what it mounted), then its directory goes (containerd's images
# and snapshots: about a GiB), unless REWIND_KEEP_BED=1.
finish() {
  kill -TERM "$bed" 2>/dev/null; wait "$bed" 2>/dev/null || true
  if [ "${REWIND_KEEP_BED:-}" != 1 ] && ! grep -q " $dir/" /proc/mounts; then rm -rf "$dir"; fi
}
trap finish EXIT
until grep -q "Press Ctrl-C" "$dir/up.log"; do
  kill -0 $bed 2>/dev/null || { cat "$dir/up.log" >&2; echo "the control plane or the node did not start" >&2; exit 1; }
  sleep 1
done
head -n 1 "$dir/up.log"
# shellcheck disable=SC1091
source "$dir/existing-cluster.env"
"$@"
