#!/usr/bin/env bash
# One host (CPU, or every local GPU): set up, then run a config.
#   bash launch/local.sh configs/default.py /tmp/logah_demo
#   bash launch/local.sh configs/paper_vits.py:dataset=cifar100,m=4 ~/runs/x --config.ghn.rank=64
# Re-running with the same workdir resumes from its last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG[:VARIANT] WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
LOGAH_SKIP_DATA=${LOGAH_SKIP_DATA:-0} bash launch/setup.sh
exec .venv/bin/python -m logah_jax.main --config="$config" --workdir="$workdir" "$@"
