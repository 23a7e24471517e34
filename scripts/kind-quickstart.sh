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
# operator the chart starts (tests/operator/test_chart.py::test_the_quick_start_runs_as_written).
# The steps after the image (scripts/quickstart.sh) also run on the test bed's real node, the
# operator in a pod of the chart's: scripts/real-node-quickstart.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
cluster=${KIND_CLUSTER:-rewind}
image=rewind:0.1.0
say() { printf '\n== %s\n' "$*"; }

say "a kind cluster ($cluster)"
kind get clusters | grep -qx "$cluster" || kind create cluster --name "$cluster" --wait 120s
kubectl config use-context "kind-$cluster"

say "the operator's image, loaded into the cluster"
docker build -t "$image" .
kind load docker-image "$image" --name "$cluster"

bash scripts/quickstart.sh
