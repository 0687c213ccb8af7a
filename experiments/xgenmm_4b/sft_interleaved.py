r"""xGen-MM 4B interleaved SFT (bliperax/DESIGN.md §9): multi-image chats, from the SFT model.

  python -m bliperax.export --checkpoint=CKPT/sft --output=CKPT/sft_params
  python -m bliperax.train \
      --config=experiments/xgenmm_4b/sft_interleaved.py:root=DATA,init=CKPT/sft_params \
      --workdir=CKPT/sft_interleaved

The SFT shapes (batch 64 x 4096 tokens, 20 crops per row); sized for a TPU v5e-64
(`python tools/aot_compile.py
--config=experiments/xgenmm_4b/sft_interleaved.py:synthetic=1,init=random --topology=v5e-64`).
Knobs: bliperax/configs/recipes.py.
"""
from bliperax import configs


def get_config(arg=None):
  return configs.sft_interleaved("xgenmm_4b", arg)
