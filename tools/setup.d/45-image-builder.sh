#!/usr/bin/env bash
# `kaito dev images build` and its test: buildah (daemonless OCI builds from a Dockerfile),
# mmdebstrap (the Debian base image, since public bases are unreachable) and skopeo (registry
# inspection), all from Debian packages. Idempotent: a no-op once all three are installed.
set -euo pipefail

TOOLS=(buildah mmdebstrap skopeo)
missing=()
for tool in "${TOOLS[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

skip() {
  # Without the builder the image tests skip, unless CI demands every tier.
  if [ "${KAITO_REQUIRE_CLUSTER:-0}" = "1" ]; then
    echo "[image-builder] KAITO_REQUIRE_CLUSTER=1 but $1" >&2
    exit 1
  fi
  echo "[image-builder] $1: the image build tests will be skipped" >&2
  exit 0
}

command -v apt-get >/dev/null 2>&1 || skip "${missing[*]} missing and apt-get unavailable"
SUDO=""
if [ "$(id -u)" != "0" ]; then
  command -v sudo >/dev/null 2>&1 || skip "need root (or sudo) to install ${missing[*]}"
  SUDO="sudo"
fi
echo "[image-builder] installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# The package lists may be fresh already (20-registry.sh); update only when an install fails.
if ! $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
