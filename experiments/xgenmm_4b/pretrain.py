r"""xGen-MM 4B pre-training (bliperax/DESIGN.md §9): the paper's mixture, SigLIP frozen.

  python -m bliperax.train --config=experiments/xgenmm_4b/pretrain.py:root=DATA,init=CKPT/backbones \
      --workdir=CKPT/pretrain

DATA holds the shard sets (bliperax/configs/mixtures.py names the folders); init is
tools/convert_checkpoint.py --from=hf_backbones's output. Batch 512 x 2048 tokens, up
to 16 base crops per row, bf16 / float32 master weights, scan + full remat, FSDP;
sized for a TPU v5e-256 (check: `python tools/aot_compile.py
--config=experiments/xgenmm_4b/pretrain.py:synthetic=1,init=random --topology=v5e-256`).
Knobs: bliperax/configs/recipes.py.
"""
from bliperax import configs


def get_config(arg=None):
  return configs.pretrain("xgenmm_4b", arg)
