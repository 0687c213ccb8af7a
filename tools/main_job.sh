#!/usr/bin/env bash
# The README's first command: install bliperax, then run the digits main job on CPU
# (make data, pre-train, fine-tune, evaluate, DPO and its control, chat; see
# tools/main_job.py --help).
#   bash tools/main_job.sh [--workdir=/tmp/digits_run] [--sft_steps=N ...]
set -euo pipefail
cd "$(dirname "$0")/.."
echo "=== 0/11 install (pip install -e .)"
python -m pip install --quiet --disable-pip-version-check -e .
# One CPU process; keep XLA's thread pool to the machine and hide TPU probing noise.
export JAX_PLATFORMS=cpu
exec python tools/main_job.py "$@"
