#!/usr/bin/env bash
# Builds Alertmanager, whose silences the operator sets during a rollback, from the Go module proxy
# into a cache outside the repository, keyed by version. A second run with the binary present
# returns at once. Prints the bin directory on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache=${REWIND_CACHE:-$HOME/.cache/rewind}
bin="$cache/bin/alertmanager-$ALERTMANAGER_VERSION"
if [ -x "$bin/alertmanager" ]; then echo "$bin"; exit 0; fi

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
log() { echo "[testbed build] $*" >&2; }
mkdir -p "$bin" "$cache/src"
# The module cache is read-only and lacks the built UI, so the build works on a copy.
work=$(mktemp -d "$cache/src/alertmanager-$ALERTMANAGER_VERSION.XXXXXX")
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
start=$(date +%s)

module=github.com/prometheus/alertmanager
cd "$work"
log "fetching $module@$ALERTMANAGER_VERSION"
dir=$(go mod download -json "$module@$ALERTMANAGER_VERSION" | python3 -c 'import json,sys;print(json.load(sys.stdin)["Dir"])')
cp -r "$dir" src && chmod -R u+w src
# ui/web.go embeds ui/app/dist, which the release process builds with npm; the tests use the API
# only, so a placeholder page stands in for the UI.
mkdir -p src/ui/app/dist && echo '<html>UI not built</html>' > src/ui/app/dist/index.html
cd src
# The version variable is the one .promu.yml sets for release builds.
ldflags="-s -w -X github.com/prometheus/common/version.Version=${ALERTMANAGER_VERSION#v}"
log "building alertmanager $ALERTMANAGER_VERSION (cold: about a minute)"
go build -trimpath -buildvcs=false -tags netgo -ldflags "$ldflags" -o "$work/alertmanager" \
  ./cmd/alertmanager >&2
# Moved into place whole, so an interrupted build never leaves a binary that looks finished.
mv "$work/alertmanager" "$bin/alertmanager"
log "built in $(( $(date +%s) - start ))s into $bin"
echo "$bin"
