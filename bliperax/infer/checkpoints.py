"""Load parameters for inference from a parameter checkpoint or a training workdir.

Accepted paths:
  * a parameter checkpoint (`bliperax.convert.params_io`: `bliperax.json` + `params/`);
  * a training workdir (`python -m bliperax.train --workdir=...`): its latest step;
  * its `checkpoints/` folder, or one step folder `checkpoints/<step>/`.
For training checkpoints the model config comes from `checkpoints/config.json`
(the experiment config the trainer saved), so nothing else has to be passed; a
LoRA run's adapters (bliperax/lora) come merged into their kernels. Paths may be
in a bucket (gs://).
"""
from __future__ import annotations

import json
import os
from typing import Tuple

import ml_collections
from etils import epath

from bliperax import configs
from bliperax import paths
from bliperax.convert import params_io
from bliperax.lora import config as lora_config
from bliperax.lora.apply import Lora
from bliperax.models.config import XGenMMConfig


class CheckpointNotFound(FileNotFoundError):
  """The path is neither a parameter checkpoint nor a training checkpoint."""


def step_dir(path: epath.Path) -> epath.Path:
  """The step folder holding `state/` for a workdir, checkpoints/ or step path."""
  if (path / "state").is_dir():
    return path
  folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
  steps = [p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()
           and (p / "state").is_dir()] if folder.is_dir() else []
  if not steps:
    raise CheckpointNotFound(
        f"{path}: no checkpoint here (expected a parameter checkpoint with "
        f"{params_io.CARD}, or a training workdir with checkpoints/<step>/state)")
  return max(steps, key=lambda p: int(p.name))


def train_config(step: epath.Path) -> ml_collections.ConfigDict:
  """The experiment config a training step folder was saved by."""
  config_path = step.parent / "config.json"
  if not config_path.exists():
    raise CheckpointNotFound(f"{step}: no {config_path.name} beside the step folders, "
                             "so the model config is unknown")
  return ml_collections.ConfigDict(json.loads(config_path.read_text()))


def load(path: str | os.PathLike) -> Tuple[dict, XGenMMConfig]:
  """(params as arrays, model config) from any accepted path (module docstring).

  Raises:
    CheckpointNotFound: nothing loadable at `path`.
  """
  path = paths.resolve(path)  # local or gs://
  if not path.exists():
    raise CheckpointNotFound(f"{path}: does not exist")
  if (path / params_io.CARD).exists():
    params, model_cfg, _ = params_io.load_params(path)
    return params, model_cfg
  step = step_dir(path)
  train_cfg = train_config(step)
  model_cfg = configs.model_config(train_cfg)
  # Only the params: the optimizer state (Adam's two moments, twice the params'
  # bytes: ~110 GB more for 14B) stays on disk.
  params = params_io.restore_arrays(step / "state", subtree="params")
  if lora_config.enabled(train_cfg):  # a LoRA run: its frozen base + its adapters
    adapters = params_io.restore_arrays(step / "state", subtree="adapters")
    params = Lora.from_config(model_cfg, train_cfg.lora).merge(params, adapters)
  return params, model_cfg


def source_of(path: str | os.PathLike) -> dict:
  """What `load(path)` reads, for an export's card: the checkpoint it came from.

  A training checkpoint: {"workdir", "step", "run_record"} (the sha256 of the
  workdir's run_record.json, which names the run's config, code, init and data);
  a parameter checkpoint: {"params": path}.
  """
  from bliperax import run_record  # pylint: disable=g-import-not-at-top
  path = paths.resolve(path)
  if (path / params_io.CARD).exists():
    return {"params": str(path)}
  step = step_dir(path)
  workdir = step.parent.parent  # WORKDIR/checkpoints/<step>
  record = workdir / run_record.FILENAME
  return {"workdir": str(workdir), "step": int(step.name),
          "run_record": (run_record.digest(json.loads(record.read_text()))
                         if record.exists() else None)}


def export(path: str | os.PathLike, dst: str | os.PathLike) -> epath.Path:
  """Writes the params at `path` as a parameter checkpoint (for `model.init_from`).

  The card records where they came from (`source_of`); `dst` is replaced only once
  the new checkpoint is complete.
  """
  params, model_cfg = load(path)
  return params_io.save_params(dst, params, model_cfg, overwrite=True,
                               source=source_of(path))


INFERENCE_DTYPES = ("auto", "float32", "bfloat16")


def inference_dtype(name: str, backend: str) -> str:
  """'auto' -> bfloat16 on accelerators (decode reads every weight and the whole cache
  per token: half the bytes is nearly twice the tokens/s where it is memory-bound),
  float32 on CPU (whose bf16 matmuls are converted, not faster); else `name`."""
  if name not in INFERENCE_DTYPES:
    raise ValueError(f"dtype must be one of {', '.join(INFERENCE_DTYPES)}, got {name!r}")
  if name == "auto":
    return "float32" if backend == "cpu" else "bfloat16"
  return name


def for_inference(params: dict, cfg: XGenMMConfig, dtype: str) -> Tuple[dict, XGenMMConfig]:
  """Parameters and model config that compute, store weights and keep the KV cache in
  `dtype` (the cache takes the compute dtype); float32 leaves them as they are.

  Norms, softmax and the logits still run in float32 inside the layers.
  """
  if dtype == "float32":
    return params, cfg
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  target = jnp.dtype(dtype)
  cast = jax.tree.map(lambda p: p.astype(target) if jnp.issubdtype(p.dtype, jnp.floating)
                      else p, params)
  return cast, cfg.with_numerics(dtype=dtype, param_dtype=dtype)
