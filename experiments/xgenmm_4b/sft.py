r"""xGen-MM 4B SFT (bliperax/DESIGN.md §9): instruction chats with anyres, from pre-training.

  python -m bliperax.export --checkpoint=CKPT/pretrain --output=CKPT/pretrain_params
  python -m bliperax.train --config=experiments/xgenmm_4b/sft.py:root=DATA,init=CKPT/pretrain_params \
      --workdir=CKPT/sft

Batch 64 x 4096 tokens, up to 20 crops per row, lr 2e-5; sized for a TPU v5e-64
(`python tools/aot_compile.py --config=experiments/xgenmm_4b/sft.py:synthetic=1,init=random
--topology=v5e-64`). Knobs: bliperax/configs/recipes.py.
"""
from bliperax import configs


def get_config(arg=None):
  return configs.sft("xgenmm_4b", arg)
