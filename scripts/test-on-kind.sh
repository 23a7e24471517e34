#!/usr/bin/env bash
# The test suite against a kind cluster, where database Jobs run as real pods on real kubelets
# (issue 15 item 5). Needs docker, kind and kubectl on PATH and a network that serves postgres:16
# and the Python base image. Runs `make test` with REWIND_TEST_EXISTING_CLUSTER=1 and what
# testbed/rewind_testbed/external.py says a real cluster must be told:
#
#   - a directory of this machine mounted at the same path on the node (kind extraMounts): the
#     tests' PVCs are hostPath volumes in it, so the backup a test writes is the file a Job reads;
#   - the address the pods reach this machine at (the kind network's gateway): the tests'
#     PostgreSQL and S3 server listen there;
#   - the API server's audit log (the test bed's own audit policy, the log directory mounted out),
#     for the tests that count writes;
#   - the cluster CA (copied out of the node), for the tests that need distinct users.
#
# Tests that cannot run on a real cluster skip and say why (`-ra` lists them): those whose
# workloads run made-up images only the local test bed's kwok nodes start, and those of the test
# bed's own stand-ins. Not run on Rewind's development machines (no Docker engine there).
#
#   bash scripts/test-on-kind.sh [pytest args]      # KIND_CLUSTER=rewind-test by default
set -euo pipefail
cd "$(dirname "$0")/.."
cluster=${KIND_CLUSTER:-rewind-test}
shared=${REWIND_TEST_SHARED_DIR:-/tmp/rewind-kind-shared}
mkdir -p "$shared/audit" "$shared/pki"
chmod 1777 "$shared"
cp testbed/rewind_testbed/audit-policy.yaml "$shared/audit/policy.yaml"

if ! kind get clusters | grep -qx "$cluster"; then
  cat > "$shared/kind.yaml" <<KIND
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
    extraMounts:
      - {hostPath: "$shared", containerPath: "$shared"}
      - {hostPath: "$shared/audit", containerPath: /etc/kubernetes/audit}
    kubeadmConfigPatches:
      - |
        kind: ClusterConfiguration
        apiServer:
          extraArgs:
            audit-policy-file: /etc/kubernetes/audit/policy.yaml
            audit-log-path: /etc/kubernetes/audit/audit.jsonl
            audit-log-format: json
            audit-log-mode: blocking
          extraVolumes:
            - {name: audit, hostPath: /etc/kubernetes/audit, mountPath: /etc/kubernetes/audit}
KIND
  kind create cluster --name "$cluster" --config "$shared/kind.yaml" --wait 180s
fi
kubeconfig="$shared/kubeconfig"
kind get kubeconfig --name "$cluster" > "$kubeconfig"
node="$cluster-control-plane"
docker cp "$node:/etc/kubernetes/pki/ca.crt" "$shared/pki/ca.crt"
docker cp "$node:/etc/kubernetes/pki/ca.key" "$shared/pki/ca.key"
chmod 600 "$shared/pki/ca.key"
# The API server writes its audit log as root, mode 0600: readable by the tests here.
docker exec "$node" sh -c 'touch /etc/kubernetes/audit/audit.jsonl; chmod 644 /etc/kubernetes/audit/audit.jsonl'
# The address pods reach this machine at: the kind network's IPv4 gateway.
host=$(docker network inspect kind --format '{{range .IPAM.Config}}{{.Gateway}} {{end}}' \
  | tr ' ' '\n' | grep -E '^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$' | head -n 1)
[ -n "$host" ] || { echo "no IPv4 gateway on the kind network" >&2; exit 1; }

# The images the Job pods run: the PostgreSQL client image, and the operator's own (the `s3`
# container of backups in object storage).
docker build -t rewind:0.1.0 .
docker pull postgres:16
kind load docker-image rewind:0.1.0 postgres:16 --name "$cluster"

export KUBECONFIG="$kubeconfig" REWIND_TEST_EXISTING_CLUSTER=1 REWIND_TEST_HOST_ADDRESS="$host" \
  REWIND_TEST_SHARED_DIR="$shared" REWIND_TEST_AUDIT_LOG="$shared/audit/audit.jsonl" \
  REWIND_TEST_PKI_DIR="$shared/pki"
make test PYTEST_ARGS="-ra $*"
