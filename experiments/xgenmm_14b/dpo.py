r"""xGen-MM 14B DPO: preference pairs, LoRA rank 100 (2.49% of the LLM), from the SFT model.

  python -m bliperax.export --checkpoint=CKPT/sft_interleaved --output=CKPT/sft_params
  python tools/make_preferences.py --input=DATA/sft_1m --checkpoint=CKPT/sft_params \
      --output=DATA/noised_pairs
  python -m bliperax.train --config=experiments/xgenmm_14b/dpo.py:root=DATA,init=CKPT/sft_params \
      --workdir=CKPT/dpo

VLFeedback pairs and noised-image pairs drawn 1 : 1, β 0.1, lr 5e-6, 1000 steps of 128
x 2048 tokens (64 pair rows), 10 crops per row; the reference is the frozen base (bf16).
Sized for a TPU v5p-128 (`python -m bliperax.aot
--config=experiments/xgenmm_14b/dpo.py:synthetic=1,init=random --topology=v5p-128`).
Knobs and the choices behind the numbers: bliperax/configs/recipes.py (`dpo`).
"""
from bliperax.configs import recipes


def get_config(arg=None):
  return recipes.dpo("xgenmm_14b", arg)
