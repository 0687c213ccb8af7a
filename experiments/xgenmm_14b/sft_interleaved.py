r"""xGen-MM 14B interleaved SFT: multi-image chats, from the 14B SFT export.

  python -m bliperax.export --checkpoint=CKPT/sft --output=CKPT/sft_params
  python -m bliperax.train \
      --config=experiments/xgenmm_14b/sft_interleaved.py:root=DATA,init=CKPT/sft_params \
      --workdir=CKPT/sft_interleaved

The SFT shapes (batch 64 x 4096 tokens, 20 crops per row); sized for a TPU v5p-128
(`python tools/aot_compile.py
--config=experiments/xgenmm_14b/sft_interleaved.py:synthetic=1,init=random --topology=v5p-128`).
Knobs: bliperax/configs/recipes.py.
"""
from bliperax import configs


def get_config(arg=None):
  return configs.sft_interleaved("xgenmm_14b", arg)
