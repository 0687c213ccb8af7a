"""Masked next-token cross-entropy in float32."""
from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp

from bliperax.data.batch_spec import IGNORE


def token_nll(logits: jax.Array, labels: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """Per-token negative log-likelihood of the shifted labels.

  Args:
    logits: float[B, T, V]; position t predicts labels[:, t + 1].
    labels: int[B, T], IGNORE (-100) off the loss.
  Returns:
    (nll float32[B, T-1], 0 where the target is ignored; mask bool[B, T-1]).
  """
  nll = gathered_nll(logits[:, :-1], labels[:, 1:])
  return nll, labels[:, 1:] != IGNORE


def mean_nll(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean NLL over the loss tokens (the reference's loss); 0, not NaN, when there are none."""
  nll, mask = token_nll(logits, labels)
  return nll.sum() / jnp.maximum(mask.sum(), 1)


def loss_positions(labels: jax.Array, per_row: int
                   ) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """The first `per_row` positions of each row that predict a loss token.

  Computing the head only there saves most of its cost when few tokens carry
  loss (SFT answers): the 32015-wide head dominates small models.

  Args:
    labels: int[B, T], IGNORE (-100) off the loss.
    per_row: K, a static cap on the loss tokens kept per row.
  Returns:
    (positions int[B, K] into [0, T-1), where position t predicts labels[:, t+1];
     targets int[B, K]; mask bool[B, K], False for padding slots). Loss tokens past
    the cap are dropped; count them as `(labels[:, 1:] != IGNORE).sum() - mask.sum()`.
  """
  wanted = labels[:, 1:] != IGNORE
  positions = jax.vmap(lambda m: jnp.nonzero(m, size=per_row, fill_value=0)[0])(wanted)
  mask = jnp.arange(per_row)[None, :] < wanted.sum(axis=1, keepdims=True)
  targets = jnp.take_along_axis(labels[:, 1:], positions, axis=1)
  return positions, jnp.where(mask, targets, IGNORE), mask


def gathered_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """NLL float32[B, K] of `targets` under `logits` [B, K, V] (same position; 0 where IGNORE)."""
  mask = targets != IGNORE
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(logp, jnp.where(mask, targets, 0)[..., None], axis=-1)[..., 0]
  return jnp.where(mask, -picked, 0.0)
