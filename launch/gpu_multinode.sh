#!/usr/bin/env bash
# Several GPU hosts: run this on every host (or as an srun task under SLURM).
#   LOGAH_COORDINATOR=host0:1234 LOGAH_NUM_PROCESSES=4 LOGAH_PROCESS_ID=$RANK \
#     bash launch/gpu_multinode.sh configs/paper_gpts.py:ghn=logah-base /shared/runs/x
# Under SLURM the three variables can be left unset (JAX reads SLURM's).
# Every host needs the repository with a CUDA .venv (see BUILD.md) and the
# same workdir and LOGAH_DATA_DIR on shared storage.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG[:VARIANT] WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
export LOGAH_JAX_DISTRIBUTED=1
exec .venv/bin/python -m logah_jax.main --config="$config" --workdir="$workdir" "$@"
