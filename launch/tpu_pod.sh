#!/usr/bin/env bash
# A TPU pod slice: install on every worker, then start main.py on all of them.
#   TPU_NAME=my-v4-32 ZONE=us-central2-b \
#     bash launch/tpu_pod.sh configs/paper_vits.py:m=8 gs://bucket/runs/x
# The repository must already be on every worker at $REPO (default ~/logah-jax),
# e.g. with `gcloud compute tpus tpu-vm scp --worker=all`. The workdir and the
# data directory (LOGAH_DATA_DIR) must be reachable from every worker (GCS).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG[:VARIANT] WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
REPO=${REPO:-'~/logah-jax'}
# Quoted for the remote shell; no overrides must add no (empty) argument.
config=$(printf '%q' "$1") workdir=$(printf '%q' "$2")
shift 2
args=''
if [ $# -gt 0 ]; then args=$(printf ' %q' "$@"); fi
data_dir=$(printf '%q' "${LOGAH_DATA_DIR:-}")
remote="cd $REPO && (test -x .venv/bin/python || python3 -m venv .venv) \
  && .venv/bin/pip install -q -r requirements.txt 'jax[tpu]>=0.10,<0.13' \
  && LOGAH_JAX_DISTRIBUTED=1 LOGAH_DATA_DIR=$data_dir \
     .venv/bin/python -m logah_jax.main --config=$config --workdir=$workdir$args"
exec gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all \
  --command="$remote"
