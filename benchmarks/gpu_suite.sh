#!/usr/bin/env bash
# The accelerator figures of docs/performance.md in one run (at most about
# 10 minutes on one H100/H200): fine-tuning throughput and MFU (GPT-2-M with
# its blocks unrolled and scanned, each with a profiler trace; ViT-B/16),
# GHN training's compile time per new architecture (8 threads compiling
# ahead, with and without autotuning), and a cold GPT-2-Large prediction.
# GPT-2-S (past its goal on an H200) is left out to fit the time:
#   benchmarks/finetune.py --targets gpt2-small --dtype bfloat16 \
#       --batch gpt2-small=16
# Each part has its own time limit, so a slow one costs its row, not the
# rest.
#   bash benchmarks/gpu_suite.sh [OUTPUT_DIR]
set -u
out=${1:-${OUT:-/tmp/logah_gpu_suite}}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}. PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null
$py -c "import jax; print('jax', jax.__version__, jax.devices())"
run() { local limit=$1; shift; echo "== $* ($(date +%T))"; timeout "$limit" "$py" "$@" || echo "== exit $? (limit ${limit}s): $*"; }
prof=/tmp/logah_gpu_profile
rm -rf "$prof"  # a rerun on the same machine must not report old traces
# In order of the goals they measure; the limits sum to about 9 minutes
# (560 s).
# Unrolled first, each way in its own process of at most 85 s (the unrolled
# one took 69 s on an H100): one that runs over becomes an error row, and
# the JSON keeps the other.
run 175 benchmarks/finetune.py --targets gpt2-medium --dtype bfloat16 \
    --batch gpt2-medium=8 --scan-blocks both --timeout 85 \
    --profile-dir "$prof" --json-out "$out/finetune_m.json"
# ~120 s to the end of the first pass on an H100; the TIMINGS line (stderr)
# comes before the FLOP count, which the limit may cut off.
run 150 benchmarks/train_ghn.py --child gpt-m2 --compile-workers 8 \
    > "$out/train_ghn.txt" 2>&1
grep -v cuda_timer "$out/train_ghn.txt"
# The same order as GHN training compiles it by default on GPUs
# (train.quick_compile: no GEMM autotuning for the per-arch programs).
run 120 benchmarks/train_ghn.py --child gpt-m2 --compile-workers 8 \
    --quick-compile > "$out/train_ghn_quick.txt" 2>&1
grep -v cuda_timer "$out/train_ghn_quick.txt"
run 75 benchmarks/finetune.py --targets vit-b/16 --dtype bfloat16 \
    --batch vit-b/16=64 --json-out "$out/finetune_vit.json"
$py benchmarks/op_profile.py "$prof" --top 30 > "$out/op_profile.md"
cat "$out/op_profile.md"
find "$prof" -name '*.trace.json.gz' -print0 | while IFS= read -r -d '' f; do
  run_dir=${f%/plugins/*}  # $prof/TARGET-DTYPE[-scan]/plugins/profile/...
  cp "$f" "$out/$(basename "$run_dir").trace.json.gz"
done
run 40 benchmarks/predict.py --targets gpt2-large-untied --repeats 2
ls -la "$out"
