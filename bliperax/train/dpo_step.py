"""The jitted DPO training step: policy and reference log-probabilities of pair rows, one update.

Batches are pair batches (bliperax/data/pairs.py): row 2i holds chosen sequences,
row 2i+1 the rejected sequences of the same pairs, in the same segments, with the
same images. The images are encoded once per pair: `encode_images` (ViT, regroup,
resampler) runs on the even rows only and its tokens are written into both rows'
vision slots (`XGenMM.features_with_vision`), so a pair costs one vision pass, not two.

The reference model is the frozen SFT model, and where its log-probabilities come from
is chosen by memory:
- With LoRA (the paper's setting) the reference *is* the frozen base the adapters sit
  on: the step runs the model a second time on `state.params` without the adapters,
  in the same jitted step. No copy of the weights exists. When no adapter sits in the
  vision tower or the resampler (the LM-only targets of the recipes), the reference's
  vision tokens are the policy's, so the images are encoded once for all four passes.
- Without LoRA the state keeps a frozen copy of the initial parameters
  (`DpoTrainState.reference`: no gradient, no optimizer state, sharded like the
  parameters): one more copy of the weights, 4 bytes per parameter beside the 16 that
  float32 parameters, gradients and Adam's two moments already take (+25%), e.g.
  0.27 GiB per chip for the 4B model over 64 chips. Precomputing the reference
  log-probabilities in a pass over the shards was the alternative; it saves that
  memory but ties the shards to one checkpoint and to one packing (seq_len, crops,
  truncation decide which tokens a sequence keeps), so a changed row size would
  silently use stale numbers. The reference encodes the images with its own resampler
  (once per pair as well), since the policy's resampler trains.

Loss: `dpo.sigmoid_loss` summed over the pairs of the whole global batch and divided
by their global count (0 pairs: loss 0). Gradient accumulation splits the batch into
k micro-batches of whole pairs (pair rows j, j+k, ...) and sums their gradients of
that same normalised loss, as the cross-entropy step does. The metrics are means over
the batch's pairs (`dpo.METRICS`), with `pairs` their count.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from bliperax.data import batch_spec
from bliperax.lora.apply import Lora
from bliperax.models.xgenmm import XGenMM
from bliperax.train import dpo as dpo_lib
from bliperax.train import losses
from bliperax.train import step as step_lib
from bliperax.train.step import TrainState


@flax.struct.dataclass
class DpoTrainState(TrainState):
  """DPO without LoRA: `reference`, the frozen initial parameters (the SFT model)."""
  reference: Any = None


def init_dpo_state(rng: jax.Array, init_params: step_lib.InitParams,
                   tx: optax.GradientTransformation) -> DpoTrainState:
  """`step.init_state`'s state plus the reference, equal to the initial parameters
  (boxed like them, so it shards like them). A `model.init_from` checkpoint replaces
  both (TrainSetup.state_from_params)."""
  params = init_params(rng)
  return DpoTrainState(step=jnp.zeros((), jnp.int32), params=params,
                       opt_state=tx.init(params), reference=params)


@dataclasses.dataclass(frozen=True)
class Dpo:
  """The objective's settings (hashable: a static argument of the jitted step)."""
  beta: float
  label_smoothing: float = 0.0
  rpo_alpha: float = 0.0

  @classmethod
  def from_config(cls, dpo: ml_collections.ConfigDict) -> "Dpo":
    return cls(beta=float(dpo.beta), label_smoothing=float(dpo.get("label_smoothing", 0.0)),
               rpo_alpha=float(dpo.get("rpo_alpha", 0.0)))


def _split_pairs(batch: Dict[str, jax.Array], k: int) -> Dict[str, jax.Array]:
  """[B, ...] -> [k, B/k, ...], micro-batch j = pair rows j, j+k, j+2k, ... (each pair
  row being rows 2p and 2p+1, kept adjacent); interleaved for the reason of
  step._split_micro."""
  def split(x):
    b = x.shape[0]
    if b % (2 * k):
      raise ValueError(f"{b} rows do not split into {k} micro-batches of whole pairs")
    pairs = x.reshape((b // (2 * k), k, 2) + x.shape[1:])
    return jnp.swapaxes(pairs, 0, 1).reshape((k, b // k) + x.shape[1:])
  return jax.tree.map(split, batch)


def _both_rows(vision: jax.Array) -> jax.Array:
  """Vision tokens of the pair rows [P, G, L, D] -> [2P, G, L, D]: rows 2p and 2p+1 get
  pair row p's."""
  return jnp.repeat(vision, 2, axis=0)


def _num_segments(batch: Dict[str, jax.Array]) -> int:
  """A static bound on segment ids + 1: every id is below T + 1."""
  return batch["labels"].shape[1] + 1


def answer_tokens(labels: jax.Array, segment_ids: jax.Array,
                  num_segments: int) -> Tuple[jax.Array, jax.Array]:
  """float32[B/2, S] twice: the answer tokens of each pair's chosen and rejected
  sequence. labels, segment_ids: int[B, T]."""
  counts = dpo_lib.sequence_sums((labels[:, 1:] != batch_spec.IGNORE).astype(jnp.float32),
                                 segment_ids[:, 1:], num_segments)
  return dpo_lib.chosen_rejected(counts)


def pair_valid(labels: jax.Array, segment_ids: jax.Array, num_segments: int) -> jax.Array:
  """bool[B/2, S]: segment s of pair row p is a pair (its chosen and its rejected
  sequence both have answer tokens). labels, segment_ids: int[B, T]."""
  chosen, rejected = answer_tokens(labels, segment_ids, num_segments)
  return (chosen > 0) & (rejected > 0)


def sequence_logps(model: XGenMM, variables: Any, micro: Dict[str, jax.Array],
                   vision: jax.Array, loss_tokens_per_row: int, num_segments: int,
                   rngs: Dict[str, Any]) -> jax.Array:
  """float32[B, S]: per row and segment, the sum of the answer tokens' log-probabilities
  (labels != IGNORE), with the given vision tokens [B, G, L, D] in the slots."""
  hidden = model.apply(variables, micro["tokens"], micro["positions"], micro["segment_ids"],
                       vision, micro["vision_slots"], method=XGenMM.features_with_vision,
                       **rngs)
  segments = micro["segment_ids"][:, 1:]  # the segment of the target at t + 1
  if loss_tokens_per_row:
    positions, targets, _ = losses.loss_positions(micro["labels"], loss_tokens_per_row)
    hidden = jnp.take_along_axis(hidden, positions[..., None], axis=1)  # [b, K, D]
    segments = jnp.take_along_axis(segments, positions, axis=1)
  else:
    hidden, targets = hidden[:, :-1], micro["labels"][:, 1:]  # t predicts label t+1
  base, added = model.apply(variables, hidden, method=XGenMM.logit_parts)
  logp = -losses.decoupled_nll(base, added, targets, model.config.text.base_vocab)
  return dpo_lib.sequence_sums(logp, segments, num_segments)


def _pair_images(micro: Dict[str, jax.Array]) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """The chosen rows' crops, group_index, group_mask: the images of each pair."""
  return tuple(dpo_lib.chosen_rejected(micro[k])[0]
               for k in ("crops", "group_index", "group_mask"))


def _adapters_outside_lm(lora: Lora) -> bool:
  return any(not site.path.startswith("lm/") for site in lora.plan)


def train_step(state: TrainState, batch: Dict[str, jax.Array], *, model: XGenMM,
               tx: optax.GradientTransformation, accum_steps: int,
               lr_schedule: Callable[[jax.Array], jax.Array], trainable: Any, dpo: Dpo,
               loss_tokens_per_row: int = 0, lora: Optional[Lora] = None,
               dropout_seed: int = 0) -> Tuple[TrainState, Dict[str, jax.Array]]:
  """One DPO optimizer step on a global pair batch; returns the new state and metrics.

  `state` is a LoraTrainState with `lora` (reference: the base) or a DpoTrainState
  without (reference: `state.reference`); the other arguments are `step.train_step`'s.
  """
  labels = batch["labels"]
  wanted = jnp.sum(labels[:, 1:] != batch_spec.IGNORE)
  if loss_tokens_per_row:
    count = jnp.sum(losses.loss_positions(labels, loss_tokens_per_row)[2])
  else:
    count = wanted
  num_segments = _num_segments(batch)
  pairs = jnp.sum(pair_valid(labels, batch["segment_ids"], num_segments))
  denom = jnp.maximum(pairs, 1).astype(jnp.float32)

  weights = state.params if lora is None else state.adapters
  reference = {"params": state.reference if lora is None else state.params}
  share_reference_vision = lora is not None and not _adapters_outside_lm(lora)

  def loss_fn(weights, micro, rng=None):
    crops, group_index, group_mask = _pair_images(micro)
    variables, context, rngs = step_lib.policy_variables(state, weights, lora, rng)
    with context:
      vision = model.apply(variables, crops, group_index, group_mask,
                           method=XGenMM.encode_images, **rngs)  # [b/2, G, L, D]
      policy = sequence_logps(model, variables, micro, _both_rows(vision),
                              loss_tokens_per_row, num_segments, rngs)
    if share_reference_vision:  # the base's vision tokens: the same arrays
      ref_vision = jax.lax.stop_gradient(vision)
    else:
      ref_vision = model.apply(reference, crops, group_index, group_mask,
                               method=XGenMM.encode_images)
    ref = sequence_logps(model, reference, micro, _both_rows(ref_vision),
                         loss_tokens_per_row, num_segments, {})
    chosen_tokens, rejected_tokens = answer_tokens(micro["labels"], micro["segment_ids"],
                                                   num_segments)
    valid = (chosen_tokens > 0) & (rejected_tokens > 0)
    sums = dpo_lib.pair_sums(policy, jax.lax.stop_gradient(ref), valid, dpo.beta,
                             dpo.label_smoothing, dpo.rpo_alpha, chosen_tokens)
    return sums["loss"] / denom, {k: sums[k] / denom for k in dpo_lib.METRICS}

  (loss, aux), grads = step_lib.summed_over_micro_batches(
      jax.value_and_grad(loss_fn, has_aux=True), weights, batch, accum_steps,
      _split_pairs, step_lib.dropout_key(lora, dropout_seed, state.step),
      aux_names=dpo_lib.METRICS)
  return step_lib.apply_update(state, weights, grads, tx=tx, lr_schedule=lr_schedule,
                               trainable=trainable, lora=lora,
                               metrics={"loss": loss, "loss_tokens": count,
                                        "dropped_loss_tokens": wanted - count,
                                        "pairs": pairs, **aux})
