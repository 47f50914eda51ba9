#!/usr/bin/env bash
# The accelerator figures of docs/performance.md in one run (about 8 minutes
# on one H100/H200): fine-tuning throughput and MFU, a cold GPT-2-Large
# prediction, and GHN training's compile time per new architecture.
#   bash benchmarks/gpu_suite.sh [OUTPUT_DIR]
set -u
out=${1:-${OUT:-/tmp/logah_gpu_suite}}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}.
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null
$py -c "import jax; print('jax', jax.__version__, jax.devices())"
run() { local limit=$1; shift; echo "== $*"; timeout "$limit" "$py" "$@" || echo "== exit $? (limit ${limit}s): $*"; }
run 150 benchmarks/finetune.py --targets gpt2-medium gpt2-small --dtype bfloat16 \
    --batch gpt2-medium=8 gpt2-small=16 --json-out "$out/finetune_bf16.json"
run 50 benchmarks/predict.py --targets gpt2-large-untied --repeats 2
run 80 benchmarks/finetune.py --targets gpt2-medium --dtype float32 \
    --batch gpt2-medium=8 --json-out "$out/finetune_fp32.json"
run 110 benchmarks/finetune.py --targets gpt2-large vit-b/16 --dtype bfloat16 \
    --batch gpt2-large=8 vit-b/16=64 --json-out "$out/finetune_large.json"
run 120 benchmarks/train_ghn.py --runs gpt-m2
