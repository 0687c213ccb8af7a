"""Optimizer from config: AdamW, warmup + cosine, global-norm clipping, freezing, finite guard.

- Frozen parameters (paths matching any `freeze` regex, e.g. `^vision/`) go through
  `optax.set_to_zero()`: no optimizer state at all and a zero update.
- Weight decay skips norms, biases and embedding tables (`no_decay` regexes), unlike
  the reference (bliperax/DESIGN.md §8).
- `optax.apply_if_finite` skips an update whose gradients are not finite and counts it.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import flax
import jax
import ml_collections
import optax

NO_DECAY_DEFAULT = (r"/scale$", r"/bias$", r"additional_bias$", r"/embedding$",
                    r"additional_embedding$", r"position_embedding$", r"/latents$",
                    r"/probe$")


def _paths(tree: Any) -> Any:
  """The same tree with each leaf replaced by its '/'-joined path."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")
  return flax.traverse_util.unflatten_dict({k: k for k in flat}, sep="/")


def path_labels(params: Any, freeze: Sequence[str]) -> Any:
  """'frozen' or 'train' per parameter."""
  pats = [re.compile(p) for p in freeze]
  return jax.tree.map(lambda p: "frozen" if any(r.search(p) for r in pats) else "train",
                      _paths(params))


def decay_mask(params: Any, no_decay: Sequence[str] = NO_DECAY_DEFAULT) -> Any:
  pats = [re.compile(p) for p in no_decay]
  return jax.tree.map(lambda p: not any(r.search(p) for r in pats), _paths(params))


def schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `lr`, then cosine to `lr * final_lr_ratio` at total_steps."""
  warmup = int(cfg.get("warmup_steps", 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.lr, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1),
      end_value=cfg.lr * cfg.get("final_lr_ratio", 0.0))


def make(cfg: ml_collections.ConfigDict, params: Any, total_steps: int
         ) -> optax.GradientTransformation:
  """The full transformation for `params` (a tree of arrays or ShapeDtypeStructs).

  cfg fields: lr, warmup_steps, final_lr_ratio, b1, b2, eps, weight_decay,
  grad_clip (0 = off), freeze (regexes), no_decay (regexes, optional),
  max_consecutive_nonfinite.
  """
  sched = schedule(cfg, total_steps)
  train = optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip) if cfg.get("grad_clip", 0) else optax.identity(),
      optax.adamw(sched, b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999),
                  eps=cfg.get("eps", 1e-8), weight_decay=cfg.get("weight_decay", 0.0),
                  mask=decay_mask(params, cfg.get("no_decay", NO_DECAY_DEFAULT))),
  )
  tx = optax.multi_transform({"train": train, "frozen": optax.set_to_zero()},
                             path_labels(params, cfg.get("freeze", ())))
  return optax.apply_if_finite(tx, max_consecutive_errors=cfg.get(
      "max_consecutive_nonfinite", 1_000_000_000))


def trainable_mask(params: Any, freeze: Sequence[str]) -> Any:
  return jax.tree.map(lambda label: label == "train", path_labels(params, freeze))

