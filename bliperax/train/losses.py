"""Masked next-token cross-entropy in float32."""
from __future__ import annotations

from typing import Optional, Tuple

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


def decoupled_nll(base: jax.Array, added: Optional[jax.Array], targets: jax.Array,
                  base_vocab: int) -> jax.Array:
  """NLL float32[B, K] of `targets` under the decoupled head's uncut parts.

  Equals gathered_nll on the logits [base[..., :base_vocab] ; added] without forming
  them: the dead columns base_vocab.. of `base` are masked out of the log-sum-exp and
  the two parts' sums are added, so neither the forward (cut + concatenate) nor the
  backward (a padded copy of the [B, K, V] gradient) copies the logits.

  Args:
    base: float32[B, K, vocab_rows], x·W + b over the whole base table.
    added: float32[B, K, num_added] (the added tokens' logits) or None.
    targets: int[B, K], ids in [0, base_vocab + num_added) or IGNORE.
  Returns:
    float32[B, K], 0 where the target is IGNORE.
  """
  mask = targets != IGNORE
  live = jnp.arange(base.shape[-1]) < base_vocab
  base = jnp.where(live, base.astype(jnp.float32), -jnp.inf)
  top = jnp.max(base, axis=-1)
  if added is not None:
    added = added.astype(jnp.float32)
    top = jnp.maximum(top, jnp.max(added, axis=-1))
  top = jax.lax.stop_gradient(top)[..., None]  # a shift only: the gradient is unchanged
  total = jnp.sum(jnp.exp(base - top), axis=-1)
  target = jnp.where(mask, targets, 0)
  picked = jnp.take_along_axis(base, jnp.minimum(target, base_vocab - 1)[..., None],
                               axis=-1)[..., 0]
  if added is not None:
    total = total + jnp.sum(jnp.exp(added - top), axis=-1)
    extra = jnp.clip(target - base_vocab, 0, added.shape[-1] - 1)
    picked_added = jnp.take_along_axis(added, extra[..., None], axis=-1)[..., 0]
    picked = jnp.where(target >= base_vocab, picked_added, picked)
  nll = jnp.log(total) + top[..., 0] - picked
  return jnp.where(mask, nll, 0.0)
