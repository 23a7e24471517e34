#!/usr/bin/env bash
# Installs what Rewind's tests and demo need on a fresh machine, and reuses what is there:
#   - PostgreSQL server (Debian's `postgresql` package) for the database tests;
#   - shellcheck (Debian's `shellcheck`), which a unit test runs on the database Jobs' scripts;
#   - a Python virtual environment in .venv with the pinned packages;
#   - the test control plane, built from the Go module proxy into ~/.cache/rewind (testbed/build.sh),
#     and Alertmanager, Helm and the Versity S3 Gateway the same way (testbed/build-*.sh).
# Safe to run again: each part is skipped when it is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "[bootstrap] $*" >&2; }

apt_packages=()
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && [ -z "${REWIND_PG_BINDIR:-}" ]; then
  apt_packages+=(postgresql)
fi
command -v shellcheck >/dev/null || apt_packages+=(shellcheck)
bash scripts/apt-install.sh "${apt_packages[@]}"

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  log "Python 3.11 or newer is needed (found $("$python" --version 2>&1)); set PYTHON=..."
  exit 1
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  log "creating .venv and installing Python packages"
  [ -x .venv/bin/python ] || "$python" -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
  rm -f .venv/.installed-*; touch "$stamp"
fi

command -v go >/dev/null || { log "Go is needed to build the test control plane"; exit 1; }
bash testbed/build.sh >/dev/null
bash testbed/build-alertmanager.sh >/dev/null
bash testbed/build-helm.sh >/dev/null
bash testbed/build-versitygw.sh >/dev/null
log "ready"
