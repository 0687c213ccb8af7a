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

With LoRA (`lora` given; bliperax/lora) the state is a `LoraTrainState`: `params` is
the frozen base, `adapters` the trained tree, and the loss is differentiated with
respect to the adapters alone (no gradient, update or optimizer state for the base).
Without it the step is the plain one, operation for operation.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import optax

from bliperax.data import batch_spec
from bliperax.lora import adapters as adapters_lib
from bliperax.lora.apply import Lora
from bliperax.models.xgenmm import XGenMM
from bliperax.train import losses

@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32[]
  params: Any
  opt_state: Any


InitParams = Callable[[jax.Array], Any]  # rng -> boxed parameters (`model_params`)


def model_params(model: XGenMM, dummy: Dict[str, jax.Array], rng: jax.Array) -> Any:
  """The model's freshly drawn parameters, boxed with logical axis names.

  TrainSetup jits this once per setup (`functools.partial(model_params, model, dummy)`)
  and the init functions below call that jitted function: its trace is then cached
  by JAX, so the model's init is traced once for the optimizer's tree, the state's
  shapes and the init's lowering together.
  """
  return model.init(rng, **dummy)["params"]


def init_state(rng: jax.Array, init_params: InitParams, tx: optax.GradientTransformation
               ) -> TrainState:
  """Fresh state, boxed with logical axis names (for sharding); callers unbox it.

  The optimizer state is initialised from the boxed params so Adam's moments carry
  the parameters' axis names and shard like them (ZeRO), instead of replicating.
  """
  params = init_params(rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


@flax.struct.dataclass
class LoraTrainState(TrainState):
  """`params`: the frozen base; `adapters`: the LoRA tree the optimizer trains
  (`opt_state` is its state alone)."""
  adapters: Any = None


def init_lora_state(rng: jax.Array, init_params: InitParams,
                    tx: optax.GradientTransformation, lora: Lora,
                    base_dtype: str = "") -> LoraTrainState:
  """Fresh LoRA state, boxed like `init_state`'s: the base drawn from `rng` exactly as
  `init_state` draws it (then cast to `base_dtype` if given), the adapters from a key
  folded from it, the optimizer state over the adapters only."""
  params = init_params(rng)
  if base_dtype:
    params = jax.tree.map(lambda p: p.astype(base_dtype), params)
  adapters = adapters_lib.init(jax.random.fold_in(rng, 1), lora.plan, params, lora.rank)
  return LoraTrainState(step=jnp.zeros((), jnp.int32), params=params,
                        opt_state=tx.init(adapters), adapters=adapters)


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


def policy_variables(state: Any, weights: Any, lora: Optional[Lora],
                     rng: Optional[jax.Array]) -> Tuple[Dict[str, Any], Any, Dict[str, Any]]:
  """What a loss applies the trained model with: (variables, context, apply kwargs).

  `weights` is the tree being differentiated (the params, or with LoRA the adapters on
  `state.params`, applied under the adapters' intercept); `rng` is the micro-batch's
  dropout key, None when the adapters have no dropout.
  """
  if lora is None:
    return {"params": weights}, contextlib.nullcontext(), {}
  rngs = {} if rng is None else {"rngs": {"dropout": rng}}
  return {"params": lora.params(state.params, weights)}, lora.intercept(train=True), rngs


def dropout_key(lora: Optional[Lora], seed: int, step: jax.Array) -> Optional[jax.Array]:
  """The step's adapter-dropout key (`seed` folded with the step, so a resumed run draws
  the same masks); None without LoRA dropout."""
  if lora is None or not lora.dropout > 0:
    return None
  return jax.random.fold_in(jax.random.PRNGKey(seed), step)


def summed_over_micro_batches(grad_fn: Callable[..., Any], weights: Any, batch: Any,
                              accum_steps: int, split: Callable[[Any, int], Any],
                              step_key: Optional[jax.Array],
                              aux_names: Tuple[str, ...] = ()) -> Any:
  """`grad_fn(weights, micro, rng) -> ((loss, aux), grads)` summed over the batch's
  `accum_steps` micro-batches (`split(batch, k)` -> [k, ...]) in one scan; micro-batch
  j draws its dropout from `step_key` folded with j. `aux` is a dict of float32
  scalars named `aux_names`. Everything adds up in float32."""
  if accum_steps == 1:
    return grad_fn(weights, batch, step_key)
  micros = split(batch, accum_steps)

  def body(carry, xs):
    if step_key is None:
      micro, rng = xs, None
    else:
      micro, rng = xs[0], jax.random.fold_in(step_key, xs[1])
    (loss, aux), grads = grad_fn(weights, micro, rng)
    (loss_acc, aux_acc), grad_acc = carry
    return ((loss_acc + loss, jax.tree.map(jnp.add, aux_acc, aux)),
            jax.tree.map(jnp.add, grad_acc, grads)), None

  scalar = jnp.zeros((), jnp.float32)
  init = ((scalar, {name: scalar for name in aux_names}),
          jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), weights))
  if step_key is not None:
    micros = (micros, jnp.arange(accum_steps))
  summed, _ = jax.lax.scan(body, init, micros)
  return summed


def train_step(state: TrainState, batch: Dict[str, jax.Array], *, model: XGenMM,
               tx: optax.GradientTransformation, accum_steps: int,
               lr_schedule: Callable[[jax.Array], jax.Array],
               trainable: Any, loss_tokens_per_row: int = 0, lora: Optional[Lora] = None,
               dropout_seed: int = 0) -> Tuple[TrainState, Dict[str, jax.Array]]:
  """One optimizer step on a global batch; returns the new state and scalar metrics.

  With `lora`, `state` is a LoraTrainState and `trainable` masks the adapter tree;
  adapter dropout draws from `dropout_seed` folded with the step and micro-batch, so a
  resumed run draws the same masks.
  """
  labels = batch["labels"]
  wanted = jnp.sum(labels[:, 1:] != batch_spec.IGNORE)
  if loss_tokens_per_row:
    count = jnp.sum(losses.loss_positions(labels, loss_tokens_per_row)[2])
  else:
    count = wanted
  denom = jnp.maximum(count, 1).astype(jnp.float32)

  # The tree being trained: all parameters, or (LoRA) the adapters on a frozen base.
  weights = state.params if lora is None else state.adapters

  def loss_fn(weights, micro, rng=None):
    inputs = batch_spec.model_inputs(micro)
    variables, context, rngs = policy_variables(state, weights, lora, rng)
    with context:
      hidden = model.apply(variables, **inputs, method=XGenMM.features, **rngs)
      if loss_tokens_per_row:
        positions, targets, _ = losses.loss_positions(micro["labels"], loss_tokens_per_row)
        hidden = jnp.take_along_axis(hidden, positions[..., None], axis=1)  # [b, K, D]
      else:
        hidden, targets = hidden[:, :-1], micro["labels"][:, 1:]  # t predicts label t+1
      base, added = model.apply(variables, hidden, method=XGenMM.logit_parts)
    nll = losses.decoupled_nll(base, added, targets, model.config.text.base_vocab)
    return jnp.sum(nll) / denom, {}

  (loss, _), grads = summed_over_micro_batches(
      jax.value_and_grad(loss_fn, has_aux=True), weights, batch, accum_steps,
      _split_micro, dropout_key(lora, dropout_seed, state.step))
  return apply_update(state, weights, grads, tx=tx, lr_schedule=lr_schedule,
                      trainable=trainable, lora=lora,
                      metrics={"loss": loss, "loss_tokens": count,
                               "dropped_loss_tokens": wanted - count})


def apply_update(state: Any, weights: Any, grads: Any, *, tx: optax.GradientTransformation,
                 lr_schedule: Callable[[jax.Array], jax.Array], trainable: Any,
                 lora: Optional[Lora], metrics: Dict[str, jax.Array]
                 ) -> Tuple[Any, Dict[str, jax.Array]]:
  """The optimizer update every step ends with (cross-entropy and DPO alike).

  `weights` is the tree being trained (the params, or with LoRA the adapters) and
  `grads` its gradients; returns the next state (other fields, e.g. DPO's frozen
  reference, kept) and `metrics` plus grad_norm (of the trainable leaves),
  learning_rate and skipped_updates.
  """
  grad_norm = optax.tree.norm(
      jax.tree.map(lambda g, t: g if t else jnp.zeros((), g.dtype), grads, trainable))
  updates, opt_state = tx.update(grads, state.opt_state, weights)
  weights = optax.apply_updates(weights, updates)
  metrics = {**metrics, "grad_norm": grad_norm, "learning_rate": lr_schedule(state.step),
             "skipped_updates": opt_state.total_notfinite}
  if lora is None:
    return state.replace(step=state.step + 1, params=weights, opt_state=opt_state), metrics
  return state.replace(step=state.step + 1, opt_state=opt_state, adapters=weights), metrics
