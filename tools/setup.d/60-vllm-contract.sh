#!/usr/bin/env bash
# `make test` hook: the vLLM the GPU image installs (pyproject.toml's `gpu` extra) in an
# environment of its own, $KAITO_HOME/vllm-contract, for the vLLM contract test: only vLLM's
# argument parser and validators run, on the CPU (VLLM_TARGET_DEVICE=cpu; no GPU, no server, no
# model). Instant when the pin is unchanged; the first install downloads about 4.2 GiB (numbers
# in docs/testing.md).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
KAITO_HOME="${KAITO_HOME:-$HOME/.cache/kaito}"
ENV_DIR="$KAITO_HOME/vllm-contract"
STAMP="$ENV_DIR/.kaito-stamp"
PYTHON="${PYTHON:-python3}"
# The one pin: the `vllm==` requirement of the gpu extra.
PIN="$("$PYTHON" - "$ROOT/pyproject.toml" <<'PY'
import sys, tomllib
extras = tomllib.load(open(sys.argv[1], "rb"))["project"]["optional-dependencies"]
print(next(r for r in extras["gpu"] if r.replace(" ", "").startswith("vllm==")))
PY
)"
WANT="$PIN"

if [ -x "$ENV_DIR/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi

skip() {
  # Without the environment the contract test skips, unless CI demands every tier.
  if [ "${KAITO_REQUIRE_CLUSTER:-0}" = "1" ] || [ -n "${CI:-}" ]; then
    echo "[vllm-contract] KAITO_REQUIRE_CLUSTER=1/CI but $1" >&2
    exit 1
  fi
  echo "[vllm-contract] $1: the vLLM contract test will be skipped" >&2
  exit 0
}

# vLLM publishes manylinux x86_64 wheels (and aarch64); a CPU-only build from source is not
# worth it for a parser check.
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64 | Linux-aarch64) ;;
  *) skip "no vLLM wheel for $(uname -s)-$(uname -m)" ;;
esac
UV="$KAITO_HOME/bootstrap/bin/uv"   # tools/setup.sh's bootstrap venv
[ -x "$UV" ] || skip "uv is missing at $UV (run tools/setup.sh)"
export UV_CACHE_DIR="${UV_CACHE_DIR:-$KAITO_HOME/uv}"

echo "[vllm-contract] installing $PIN into $ENV_DIR" >&2
start=$(date +%s)
[ -x "$ENV_DIR/bin/python" ] || "$UV" venv --quiet --python "$PYTHON" "$ENV_DIR" \
  || skip "could not create $ENV_DIR"
rm -f "$STAMP"
VLLM_TARGET_DEVICE=cpu "$UV" pip install --quiet --python "$ENV_DIR/bin/python" "$PIN" \
  || skip "could not install $PIN"
# The stamp goes last: an interrupted install is redone next time.
echo "$WANT" > "$STAMP"
echo "[vllm-contract] ready in $(( $(date +%s) - start )) s" >&2
