#!/usr/bin/env bash
# The runtime tier's OCI tests start Debian's docker-registry on 127.0.0.1 and use htpasswd
# (apache2-utils) for the authenticated case. Idempotent: a no-op once both are installed.
set -euo pipefail

if command -v docker-registry >/dev/null 2>&1 && command -v htpasswd >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "[setup] docker-registry missing and apt-get unavailable: OCI tests will skip" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  command -v sudo >/dev/null 2>&1 || { echo "[setup] need root (or sudo) to install docker-registry" >&2; exit 0; }
  SUDO="sudo"
fi
echo "[setup] installing docker-registry and apache2-utils" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends docker-registry apache2-utils >/dev/null
