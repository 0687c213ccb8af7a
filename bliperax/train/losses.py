"""Masked next-token cross-entropy in float32."""
from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp

IGNORE = -100


def token_nll(logits: jax.Array, labels: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """Per-token negative log-likelihood of the shifted labels.

  Args:
    logits: float[B, T, V]; position t predicts labels[:, t + 1].
    labels: int[B, T], IGNORE (-100) off the loss.
  Returns:
    (nll float32[B, T-1], 0 where the target is ignored; mask bool[B, T-1]).
  """
  targets = labels[:, 1:]
  mask = targets != IGNORE
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(logp, jnp.where(mask, targets, 0)[..., None], axis=-1)[..., 0]
  return jnp.where(mask, -picked, 0.0), mask


def mean_nll(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean NLL over the loss tokens (the reference's loss); 0, not NaN, when there are none."""
  nll, mask = token_nll(logits, labels)
  return nll.sum() / jnp.maximum(mask.sum(), 1)
