#!/usr/bin/env bash
# Opt-in test group `hf`: installs torch and transformers into .venv (after
# launch/setup.sh), then checks the Hugging Face GPT-2 export against them.
#   bash launch/setup_hf.sh                    # install if missing, run -m hf
#   LOGAH_TORCH_INDEX=https://download.pytorch.org/whl/cpu \
#     bash launch/setup_hf.sh                  # torch's CPU wheel instead
# PyPI's Linux torch wheel is the CUDA build: it pulls the nvidia-* and triton
# wheels (several GB). Where PyTorch's own index is reachable, the CPU wheel
# from LOGAH_TORCH_INDEX is a few hundred MB and enough for these tests.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  LOGAH_SKIP_DATA=1 bash launch/setup.sh
fi
if ! .venv/bin/python -c 'import torch, transformers' 2>/dev/null; then
  .venv/bin/python -m pip install -q \
    ${LOGAH_TORCH_INDEX:+--index-url "$LOGAH_TORCH_INDEX"} torch
  .venv/bin/python -m pip install -q transformers
fi
.venv/bin/python -c 'import torch, transformers as t
print(f"torch {torch.__version__}, transformers {t.__version__}")'
.venv/bin/python -m pytest -p no:xdist -m hf "$@"
