r"""xGen-MM 14B safety fine-tuning: VLGuard + SFT chats, LoRA rank 100 (2.49% of the LLM).

  python -m bliperax.export --checkpoint=CKPT/dpo --output=CKPT/dpo_params
  python -m bliperax.train \
      --config=experiments/xgenmm_14b/safety.py:root=DATA,init=CKPT/dpo_params \
      --workdir=CKPT/safety

The 4B recipe (experiments/xgenmm_4b/safety.py) at 14B shapes with a larger rank.
Knobs: bliperax/configs/recipes.py (`safety`).
"""
from bliperax.configs import recipes


def get_config(arg=None):
  return recipes.safety("xgenmm_14b", arg)
