#!/usr/bin/env bash
# Installs what the real node of the test bed needs (testbed/rewind_testbed/node.py), on top of
# scripts/bootstrap.sh: Debian's libseccomp-dev and pkg-config (runc is built with seccomp),
# debootstrap (the pods' root filesystem) and iproute2 (the pod network's bridge); then builds the
# node (testbed/build-node.sh) and its images (testbed/rewind_testbed/nodeimage.py) into
# ~/.cache/rewind. Safe to run again: each part is skipped when it is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "[bootstrap-node] $*" >&2; }

apt_packages=()
dpkg -s libseccomp-dev >/dev/null 2>&1 || apt_packages+=(libseccomp-dev)
command -v pkg-config >/dev/null || apt_packages+=(pkg-config)
command -v debootstrap >/dev/null || apt_packages+=(debootstrap)
command -v ip >/dev/null || apt_packages+=(iproute2)
bash scripts/apt-install.sh "${apt_packages[@]}"
bash testbed/build-node.sh >/dev/null
.venv/bin/python -m rewind_testbed.nodeimage >/dev/null
log "ready"
