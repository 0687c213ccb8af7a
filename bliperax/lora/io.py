"""A LoRA training run's checkpoint: its frozen base, its adapters and their settings.

A LoRA run (`cfg.lora.enabled`, bliperax/lora/config.py) saves a LoraTrainState: the
base parameters under `params`, the adapters under `adapters`, and an optimizer
state over the adapters only, so restoring all of it costs about one copy of the
base. The run's `checkpoints/config.json` holds the `lora` block (targets, rank,
alpha), from which the plan is rebuilt for the run's own model config.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import ml_collections

from bliperax import configs
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
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from bliperax.infer import checkpoints  # pylint: disable=g-import-not-at-top
  source = checkpoints.source_of(path)
  if "workdir" not in source:
    raise ValueError(f"{path}: a parameter checkpoint holds no adapters; give the LoRA "
                     "run's workdir, its checkpoints/ or a step folder")
  step_dir = pathlib.Path(source["workdir"]) / "checkpoints" / str(source["step"])
  train_cfg = ml_collections.ConfigDict(
      json.loads((step_dir.parent / "config.json").read_text()))
  if not lora_config.enabled(train_cfg):
    raise ValueError(f"{path}: not a LoRA run (its config has no lora.enabled)")
  model_cfg = configs.model_config(train_cfg)
  state = ocp.StandardCheckpointer().restore(step_dir / "state")
  if "adapters" not in state:
    raise ValueError(f"{step_dir}: the saved state has no adapters")
  return Run(base=state["params"], adapters=state["adapters"],
             lora=Lora.from_config(model_cfg, train_cfg.lora), model_cfg=model_cfg,
             settings=train_cfg.lora, source=source)
