#!/usr/bin/env bash
# Several GPU hosts: run this on every host (or as an srun task under SLURM).
#   LOGAH_COORDINATOR=host0:1234 LOGAH_NUM_PROCESSES=4 LOGAH_PROCESS_ID=$RANK \
#     bash launch/gpu_multinode.sh configs/paper_gpts.py:ghn=logah-base /shared/runs/x
# Under SLURM the three variables can be left unset (JAX reads SLURM's).
# Every host needs the repository with a CUDA .venv (see BUILD.md) and the
# same workdir and LOGAH_DATA_DIR on shared storage.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG[:VARIANT] WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
# Paths the caller gave relative to where they ran this, made absolute
# before moving to the repository (a config path that is not there is the
# repository's own, e.g. configs/default.py).
absolute() { case $1 in /*|*://*) printf '%s' "$1" ;; *) printf '%s/%s' "$PWD" "$1" ;; esac; }
config=$1 workdir=$(absolute "$2")
if [ -e "${config%%:*}" ]; then config=$(absolute "${config%%:*}")${config#"${config%%:*}"}; fi
if [ -n "${LOGAH_DATA_DIR:-}" ]; then export LOGAH_DATA_DIR=$(absolute "$LOGAH_DATA_DIR"); fi
shift 2
cd "$(dirname "$0")/.."
export LOGAH_JAX_DISTRIBUTED=1
exec .venv/bin/python -m logah_jax.main --config="$config" --workdir="$workdir" "$@"
