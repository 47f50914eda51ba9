#!/usr/bin/env bash
# One host (CPU, or every local GPU): set up, then run a config.
#   bash launch/local.sh configs/default.py /tmp/logah_demo
#   bash launch/local.sh configs/paper_vits.py:dataset=cifar100,m=4 ~/runs/x --config.ghn.rank=64
# Re-running with the same workdir resumes from its last checkpoint.
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
LOGAH_SKIP_DATA=${LOGAH_SKIP_DATA:-0} bash launch/setup.sh
exec .venv/bin/python -m logah_jax.main --config="$config" --workdir="$workdir" "$@"
