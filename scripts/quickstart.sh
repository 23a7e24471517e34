#!/usr/bin/env bash
# The README's quick start after the cluster and the operator's image are in place: the example
# application, Rewind by its chart, a broken release, the Rollback, followed until it ends. Runs
# against kubectl's current cluster. scripts/kind-quickstart.sh calls it on kind,
# scripts/real-node-quickstart.sh on the test bed's real node. Helm comes from `make bootstrap`
# (built from the Go module proxy), or set HELM. Exits non-zero unless the Deployment is back on
# its first release.
set -euo pipefail
cd "$(dirname "$0")/.."
helm=${HELM:-$(bash testbed/build-helm.sh)/helm}
say() { printf '\n== %s\n' "$*"; }

say "the application, first release"
kubectl apply -f examples/quickstart/app.yaml
kubectl -n quickstart rollout status deployment/web --timeout=180s

say "Rewind, by its chart, watching the quickstart namespace"
"$helm" upgrade --install rewind charts/rewind --namespace rewind-system --create-namespace \
  --set 'watchNamespaces={quickstart}' --set image.repository=rewind --set image.tag=0.1.0 \
  --set image.pullPolicy=Never --wait --timeout 180s
kubectl wait --for=condition=Established crd/rollbacks.rewind.dev --timeout=60s
kubectl apply -f examples/quickstart/policy.yaml

say "a broken release: an image tag that does not exist"
kubectl -n quickstart set image deployment/web nginx=nginx:1.27-broken
sleep 5
kubectl -n quickstart get pods

say "the rollback: apply it, then follow it until it ends"
kubectl apply -f examples/quickstart/rollback.yaml
kubectl wait --for=condition=Ready rollback/web-back -n quickstart --timeout=300s
kubectl get rollbacks -n quickstart
image=$(kubectl -n quickstart get deployment web -o jsonpath='{.spec.template.spec.containers[0].image}')
echo "web runs $image"
[ "$image" = nginx:1.27 ]
kubectl -n quickstart rollout status deployment/web --timeout=120s
