"""A LoRA training run's checkpoint: its frozen base, its adapters and their settings.

A LoRA run (`cfg.lora.enabled`, bliperax/lora/config.py) saves a LoraTrainState: the
base parameters under `params`, the adapters under `adapters`, and an optimizer
state over the adapters only; `load_run` reads the first two (local or gs://). The run's `checkpoints/config.json` holds the `lora` block (targets, rank,
alpha), from which the plan is rebuilt for the run's own model config.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import ml_collections

from bliperax import configs
from bliperax import paths
from bliperax.lora import config as lora_config
from bliperax.lora.apply import Lora
from bliperax.models.config import XGenMMConfig


@dataclasses.dataclass
class Run:
  """base: the frozen parameters (host arrays); adapters: the adapter tree; lora: the
  plan and scale; settings: the run's `lora` config block; source: where it came from
  ({"workdir", "step", "run_record"}, as `infer.checkpoints.source_of`)."""
  base: Any
  adapters: Any
  lora: Lora
  model_cfg: XGenMMConfig
  settings: ml_collections.ConfigDict
  source: dict

  def merged(self) -> dict:
    """The base with the adapters merged into their kernels (float32)."""
    return self.lora.merge(self.base, self.adapters)


def load_run(path: str | os.PathLike) -> Run:
  """Reads a LoRA training run: its workdir (latest step), `checkpoints/`, or a step folder.

  Raises:
    infer.checkpoints.CheckpointNotFound: no training checkpoint at `path`.
    ValueError: the run did not train LoRA adapters.
  """
  from bliperax.convert import params_io  # pylint: disable=g-import-not-at-top
  from bliperax.infer import checkpoints  # pylint: disable=g-import-not-at-top
  source = checkpoints.source_of(path)
  if "workdir" not in source:
    raise ValueError(f"{path}: a parameter checkpoint holds no adapters; give the LoRA "
                     "run's workdir, its checkpoints/ or a step folder")
  step = checkpoints.step_dir(paths.resolve(path))
  train_cfg = checkpoints.train_config(step)
  if not lora_config.enabled(train_cfg):
    raise ValueError(f"{path}: not a LoRA run (its config has no lora.enabled)")
  model_cfg = configs.model_config(train_cfg)
  try:  # the base and the adapters; the adapters' optimizer state stays on disk
    base = params_io.restore_arrays(step / "state", subtree="params")
    adapters = params_io.restore_arrays(step / "state", subtree="adapters")
  except params_io.CheckpointError as e:
    raise ValueError(f"{step}: the saved state has no adapters") from e
  return Run(base=base, adapters=adapters,
             lora=Lora.from_config(model_cfg, train_cfg.lora), model_cfg=model_cfg,
             settings=train_cfg.lora, source=source)
