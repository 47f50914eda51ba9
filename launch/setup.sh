#!/usr/bin/env bash
# Installs logah-jax (CPU) into .venv and prepares the offline data.
# Idempotent: pip runs only when the requirements changed.
#   PYTHON=python3.12 bash launch/setup.sh    # another interpreter
#   LOGAH_SKIP_DATA=1 bash launch/setup.sh    # code only
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt requirements-test.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements-test.txt
  echo "$want" > "$stamp"
fi
.venv/bin/python -c 'import jax, flax; print(f"jax {jax.__version__}, flax {flax.__version__}, devices {jax.devices()}")'
if [ "${LOGAH_SKIP_DATA:-0}" != 1 ]; then
  PATH="$PWD/.venv/bin:$PATH" bash launch/setup_data.sh
fi
