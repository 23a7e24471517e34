#!/usr/bin/env bash
# Installs the Debian packages named, with sudo unless root; nothing when none are named. The
# bootstrap scripts decide what is missing and call this for it.
#   bash scripts/apt-install.sh PACKAGE...
set -euo pipefail
[ $# -gt 0 ] || exit 0
echo "[bootstrap] installing $* (Debian packages)" >&2
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
