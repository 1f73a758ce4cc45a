#!/usr/bin/env bash
# `make test` hook: what the real CPU node of the e2e tier runs. containerd, runc, the CNI plugins,
# iptables and conntrack from Debian packages; kubelet, kube-proxy and the pause program built by
# hack/build-real-node.sh. Idempotent: about a second when everything is present.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"

skip() {
  # Without a real node the tests that need one skip, unless CI demands every tier.
  if [ "${KAITO_REQUIRE_CLUSTER:-0}" = "1" ]; then
    echo "[real-node] KAITO_REQUIRE_CLUSTER=1 but $1" >&2
    exit 1
  fi
  echo "[real-node] $1: tests that need a real node will be skipped" >&2
  exit 0
}

PACKAGES=(containerd runc containernetworking-plugins iptables conntrack)
missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || skip "${missing[*]} missing and apt-get unavailable"
  SUDO=""
  if [ "$(id -u)" != "0" ]; then
    command -v sudo >/dev/null 2>&1 || skip "need root (or sudo) to install ${missing[*]}"
    SUDO="sudo"
  fi
  echo "[real-node] installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  # The node's containerd is started by kaito with its own configuration and state, never as
  # the system service: policy-rc.d (exit 101) keeps the package from starting it, if present.
  if ! $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi
command -v go >/dev/null || skip "go is not installed: cannot build kubelet and kube-proxy"
exec "$ROOT/hack/build-real-node.sh"
