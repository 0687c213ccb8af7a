"""Config building blocks for the experiment files in experiments/.

  base.py     the base config, `parse_arg` for `file.py:k=v` knobs, `model_config`
  recipes.py  the paper's stage recipes for a model preset
  digits.py   the digits experiment's stages (the main job)
"""
from bliperax.configs.base import base, model_config, parse_arg
from bliperax.configs.digits import digits_root, digits_stage
from bliperax.configs.recipes import pretrain

__all__ = ["base", "model_config", "parse_arg", "digits_root", "digits_stage", "pretrain"]
