r"""xGen-MM 4B safety fine-tuning: VLGuard + SFT chats, LoRA rank 64 (2.63% of the LLM).

  python tools/build_shards.py --format=vlguard --input=VLGUARD/train.json \
      --images=VLGUARD/train --output=DATA/vlguard
  python -m bliperax.export --checkpoint=CKPT/dpo --output=CKPT/dpo_params
  python -m bliperax.train \
      --config=experiments/xgenmm_4b/safety.py:root=DATA,init=CKPT/dpo_params \
      --workdir=CKPT/safety

VLGuard : SFT chats drawn 2 : 5, lr 2e-4, ~80 steps of 64 x 4096 tokens (3 epochs of
~7k samples), 20 crops per row; the export merges the adapters. Knobs and the
choices behind the numbers: bliperax/configs/recipes.py (`safety`).
"""
from bliperax.configs import recipes


def get_config(arg=None):
  return recipes.safety("xgenmm_4b", arg)
