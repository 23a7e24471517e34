#!/usr/bin/env bash
# Rewind on a kind cluster, from this repository: the README's "Quick start on a real cluster", as
# one script. Needs docker, kind and kubectl on PATH, and a network that serves nginx:1.27 and the
# Python base image; Helm comes from `make bootstrap` (built from the Go module proxy), or set HELM.
#
#   bash scripts/kind-quickstart.sh            # KIND_CLUSTER=rewind by default
#
# It is not run on Rewind's development machines (they have no Docker engine). What it runs is
# tested there piece by piece: the image's contents (tests/unit/test_image.py), the chart (lint,
# render, server-side dry run, and one rollback under exactly its ServiceAccount and rules:
# tests/operator/test_chart.py), and these very example files, applied as they are below, with the
# operator the chart starts (tests/operator/test_quickstart.py).
set -euo pipefail
cd "$(dirname "$0")/.."
cluster=${KIND_CLUSTER:-rewind}
image=rewind:0.1.0
helm=${HELM:-$(bash testbed/build-helm.sh)/helm}
say() { printf '\n== %s\n' "$*"; }

say "a kind cluster ($cluster)"
kind get clusters | grep -qx "$cluster" || kind create cluster --name "$cluster" --wait 120s
kubectl config use-context "kind-$cluster"

say "the operator's image, loaded into the cluster"
docker build -t "$image" .
kind load docker-image "$image" --name "$cluster"

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
kubectl -n quickstart get deployment web -o jsonpath='{.spec.template.spec.containers[0].image}{"\n"}'
