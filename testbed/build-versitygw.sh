#!/usr/bin/env bash
# Builds the Versity S3 Gateway (Apache-2.0; an S3 server over a plain directory), which the tests
# run on loopback as the object store backups come from, from the Go module proxy into a cache
# outside the repository, keyed by version. A second run with the binary present returns at once.
# Prints the bin directory on stdout. (MinIO's server is AGPL, so it is not used.)
set -euo pipefail
VERSITYGW_VERSION=v1.8.0

cache=${REWIND_CACHE:-$HOME/.cache/rewind}
bin="$cache/bin/versitygw-$VERSITYGW_VERSION"
if [ -x "$bin/versitygw" ]; then echo "$bin"; exit 0; fi

export GOTOOLCHAIN=local CGO_ENABLED=0
log() { echo "[testbed build] $*" >&2; }
mkdir -p "$bin" "$cache/src"
work=$(mktemp -d "$cache/src/versitygw-$VERSITYGW_VERSION.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
log "building versitygw $VERSITYGW_VERSION (cold: a few minutes)"
# `go install module/cmd@version` builds with the module's own go.mod and go.sum.
GOBIN="$work" go install -trimpath -ldflags "-s -w" "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION" >&2
"$work/versitygw" --version >&2
mv "$work/versitygw" "$bin/versitygw"
log "built in $(( $(date +%s) - start ))s into $bin"
echo "$bin"
