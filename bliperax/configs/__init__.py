"""Config building blocks for the experiment files in experiments/.

  base.py      the base config, `parse_arg` for `file.py:k=v` knobs, `model_config`
  mixtures.py  the paper's data mixtures: source names, shard folders, weights, crops
  recipes.py   the paper's stages (pretrain, sft, sft_interleaved) for a model preset
  digits.py    the digits experiment's stages (the main job)
"""
from bliperax.configs.base import base, model_config, parse_arg
from bliperax.configs.digits import digits_root, digits_stage
from bliperax.configs.recipes import pretrain, sft, sft_interleaved

__all__ = ["base", "model_config", "parse_arg", "digits_root", "digits_stage", "pretrain",
           "sft", "sft_interleaved"]
