#!/usr/bin/env bash
# The GPU measurements of the speed work, as one script for a session that is lent a
# CUDA machine for a few minutes. Not yet run on a GPU: no session so far had one.
#
#   bash tools/gpu_check.sh [OUT_DIR]        (OUT_DIR default: ${OUT:-/tmp/gpu_check})
#
# Each step appends its JSON lines or log to OUT_DIR and a failing step does not stop
# the rest, so whatever the time allows comes back:
#   1. install bliperax with jax[cuda12] (pip), nvidia-smi
#   2. train-step compile time of the digits config with XLA's default GPU autotuning
#      and with --xla_gpu_autotune_level=0 (the first suspect for the ~2 minutes seen on
#      an H100), each in a fresh process with the compilation cache off
#   3. decode: tools/bench_generate.py on the small preset, float32 and bfloat16
#   4. a 4B-shaped training step on one GPU: bf16, scanned, full remat, batch 4 x 2048,
#      synthetic data and random init, with the trainer's MFU from bliperax/train/flops.py
#   5. the side-by-side process benchmark (bliperax only: no reference environment there)
set -u
OUT_DIR=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$OUT_DIR"
cd "$(dirname "$0")/.."
export BLIPERAX_COMPILATION_CACHE=0

step() {  # step NAME COMMAND...: run, keep stdout+stderr, note the exit status
  local name=$1; shift
  echo "== $name: $*" | tee -a "$OUT_DIR/steps.log"
  local t0=$(date +%s)
  "$@" >"$OUT_DIR/$name.log" 2>&1
  echo "== $name: exit $? after $(( $(date +%s) - t0 )) s" | tee -a "$OUT_DIR/steps.log"
  tail -n 3 "$OUT_DIR/$name.log"
}

step install pip install -q -e ".[test]" "jax[cuda12]"
step nvidia_smi nvidia-smi
step digits_data python tools/make_digits.py --output=/tmp/gpu_digits
step compile_default python tools/bench_train_step.py \
  --config=experiments/digits/sft.py:root=/tmp/gpu_digits --steps=3
XLA_FLAGS=--xla_gpu_autotune_level=0 step compile_no_autotune python tools/bench_train_step.py \
  --config=experiments/digits/sft.py:root=/tmp/gpu_digits --steps=3
step decode_bf16 python tools/bench_generate.py --preset=small --batch_sizes=1,16
step decode_f32 python tools/bench_generate.py --preset=small --batch_sizes=1,16 --dtype=float32
step train_4b python tools/bench_train_step.py --steps=3 \
  --config=experiments/xgenmm_4b/pretrain.py:synthetic=1,init=random,batch=4,seq=2048,remat=full
step process python tools/bench_process.py
