"""xGen-MM 4B pre-training (bliperax/DESIGN.md §9): SigLIP frozen, resampler + Phi-3-mini trained.

Global batch 512 sequences x 2048 tokens, 4 single-crop images (128 tokens each) per
sequence, bf16 compute with float32 master weights, scanned layers with full remat,
FSDP over the whole slice. Sized for a TPU v5e-256:

  python tools/aot_compile.py --config=experiments/xgenmm_4b/pretrain.py --topology=v5e-256

Knobs: `:batch=...,seq=...,remat=...,images=...`.
"""
from bliperax import configs


def get_config(arg=None):
  return configs.pretrain("xgenmm_4b", arg)
