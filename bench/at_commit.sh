#!/usr/bin/env bash
# Runs a benchmark against the operator as committed at COMMIT, not as it is in the working tree
# (which may be mid-edit): in a detached git worktree of COMMIT, with this checkout's .venv and its
# bench/ scripts, the worktree's operator/, testbed/, crds/, manifests/ and examples/. Results go
# to this checkout's bench/results/.
#
#   bash bench/at_commit.sh COMMIT bench/workload_undo.py --rounds 7 --tag before
#   bash bench/at_commit.sh HEAD bench/api_requests.py --tag head
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
commit=${1:?usage: bench/at_commit.sh COMMIT bench/SCRIPT.py [ARGS...]}; shift
script=${1:?usage: bench/at_commit.sh COMMIT bench/SCRIPT.py [ARGS...]}; shift
sha=$(git -C "$repo" rev-parse --verify "$commit^{commit}")
wt=$(mktemp -d "/tmp/rewind-bench-${sha:0:7}-XXXXXX")
git -C "$repo" worktree add --detach "$wt" "$sha" >/dev/null
trap 'git -C "$repo" worktree remove --force "$wt" >/dev/null 2>&1 || true' EXIT
mkdir -p "$wt/bench" "$repo/bench/results"
cp "$repo"/bench/*.py "$repo"/bench/*.yaml "$wt/bench/"
cd "$wt"
PYTHONPATH="$wt/operator:$wt/testbed" "$repo/.venv/bin/python" "$script" --results-dir "$repo/bench/results" "$@"
