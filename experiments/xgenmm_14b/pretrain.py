r"""xGen-MM 14B pre-training: the 4B recipe with a Phi-3-medium decoder (GQA, 10 kv heads).

  python -m bliperax.train --config=experiments/xgenmm_14b/pretrain.py:root=DATA,init=CKPT/backbones \
      --workdir=CKPT/pretrain

Batch 512 x 2048 tokens, up to 16 base crops per row, bf16 / float32 master weights,
scan + full remat, FSDP; sized for a TPU v5p-128 (`python tools/aot_compile.py
--config=experiments/xgenmm_14b/pretrain.py:synthetic=1,init=random --topology=v5p-128`).
Knobs: bliperax/configs/recipes.py.
"""
from bliperax import configs


def get_config(arg=None):
  return configs.pretrain("xgenmm_14b", arg)
