"""The train state and one jitted training step (gradient accumulation, masked CE, optax).

Loss: cross-entropy of the next token in float32, summed over the loss tokens of the
whole global batch and divided by their global count (a row without loss tokens adds
zero; an all-masked batch gives loss 0, never NaN). Gradient accumulation splits the
batch into k micro-batches and sums their gradients of that same normalised loss, so
k micro-batches equal one big batch up to float32 round-off.

With `loss_tokens_per_row` = K > 0 the head runs only at the first K loss positions
of each row (losses.loss_positions) instead of all T: the same loss when no row has
more than K loss tokens, and far cheaper when few tokens carry loss (SFT answers).
Tokens past the cap are left out of the loss and counted in `dropped_loss_tokens`.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import flax
import jax
import jax.numpy as jnp
import optax

from bliperax.data import batch_spec
from bliperax.models.xgenmm import XGenMM
from bliperax.train import losses

@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32[]
  params: Any
  opt_state: Any


def init_state(rng: jax.Array, model: XGenMM, tx: optax.GradientTransformation,
               dummy: Dict[str, jax.Array]) -> TrainState:
  """Fresh state, boxed with logical axis names (for sharding); callers unbox it.

  The optimizer state is initialised from the boxed params so Adam's moments carry
  the parameters' axis names and shard like them (ZeRO), instead of replicating.
  """
  params = model.init(rng, **dummy)["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def _split_micro(batch: Dict[str, jax.Array], k: int) -> Dict[str, jax.Array]:
  """[B, ...] -> [k, B/k, ...] with micro-batch j = rows j, j+k, j+2k, ...

  Interleaved rather than contiguous so every device keeps an equal share of each
  micro-batch when the batch axis is sharded in contiguous blocks.
  """
  def split(x):
    b = x.shape[0]
    if b % k:
      raise ValueError(f"batch {b} is not divisible by {k} micro-batches")
    return jnp.swapaxes(x.reshape((b // k, k) + x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def train_step(state: TrainState, batch: Dict[str, jax.Array], *, model: XGenMM,
               tx: optax.GradientTransformation, accum_steps: int,
               lr_schedule: Callable[[jax.Array], jax.Array],
               trainable: Any, loss_tokens_per_row: int = 0
               ) -> Tuple[TrainState, Dict[str, jax.Array]]:
  """One optimizer step on a global batch; returns the new state and scalar metrics."""
  labels = batch["labels"]
  wanted = jnp.sum(labels[:, 1:] != batch_spec.IGNORE)
  if loss_tokens_per_row:
    count = jnp.sum(losses.loss_positions(labels, loss_tokens_per_row)[2])
  else:
    count = wanted
  denom = jnp.maximum(count, 1).astype(jnp.float32)

  def loss_fn(params, micro):
    inputs = batch_spec.model_inputs(micro)
    hidden = model.apply({"params": params}, **inputs, method=XGenMM.features)
    if loss_tokens_per_row:
      positions, targets, _ = losses.loss_positions(micro["labels"], loss_tokens_per_row)
      hidden = jnp.take_along_axis(hidden, positions[..., None], axis=1)  # [b, K, D]
    else:
      hidden, targets = hidden[:, :-1], micro["labels"][:, 1:]  # t predicts label t+1
    base, added = model.apply({"params": params}, hidden, method=XGenMM.logit_parts)
    nll = losses.decoupled_nll(base, added, targets, model.config.text.base_vocab)
    return jnp.sum(nll) / denom

  grad_fn = jax.value_and_grad(loss_fn)
  if accum_steps == 1:
    loss, grads = grad_fn(state.params, batch)
  else:
    def body(carry, micro):
      loss_acc, grad_acc = carry
      loss, grads = grad_fn(state.params, micro)
      return (loss_acc + loss, jax.tree.map(jnp.add, grad_acc, grads)), None
    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
    (loss, grads), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros),
                                    _split_micro(batch, accum_steps))
  grad_norm = optax.tree.norm(
      jax.tree.map(lambda g, t: g if t else jnp.zeros((), g.dtype), grads, trainable))
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {
      "loss": loss,
      "grad_norm": grad_norm,
      "learning_rate": lr_schedule(state.step),
      "loss_tokens": count,
      "dropped_loss_tokens": wanted - count,
      "skipped_updates": opt_state.total_notfinite,
  }
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics
