r"""xGen-MM 14B SFT: instruction chats with anyres, from the 14B pre-training export.

  python -m bliperax.export --checkpoint=CKPT/pretrain --output=CKPT/pretrain_params
  python -m bliperax.train --config=experiments/xgenmm_14b/sft.py:root=DATA,init=CKPT/pretrain_params \
      --workdir=CKPT/sft

Batch 64 x 4096 tokens, up to 20 crops per row, lr 2e-5; sized for a TPU v5p-128
(`python tools/aot_compile.py --config=experiments/xgenmm_14b/sft.py:synthetic=1,init=random
--topology=v5p-128`). Knobs: bliperax/configs/recipes.py.
"""
from bliperax import configs


def get_config(arg=None):
  return configs.sft("xgenmm_14b", arg)
