"""The DPO objective: sequence log-probabilities of packed pair rows, and the sigmoid loss.

A pair batch (bliperax/data/pairs.py) holds chosen rows at even indices and their
rejected rows right after them; segment k of row 2i and segment k of row 2i+1 are
the chosen and the rejected sequence of one pair. A sequence's log-probability is
the sum of its answer tokens' log-probabilities (the labelled tokens; the prompt
and the images carry none).

With Δ = (log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r)), the loss of a
pair is the sigmoid DPO loss with conservative label smoothing ε (cDPO):

  ℓ = −(1 − ε) · log σ(β·Δ) − ε · log σ(−β·Δ)

(ε = 0: plain DPO). The implicit rewards are r_c = β·(log π(y_c) − log π_ref(y_c)) and
r_r likewise; they are reported, never differentiated.

With α > 0 (`dpo.rpo_alpha`) each pair adds α times the chosen answer's mean
negative log-likelihood, −log π(y_c) / |y_c| (RPO, Pang et al. 2024, "Iterative
Reasoning Preference Optimization"): DPO alone may lower the chosen answer's
probability too, as long as the rejected one's falls faster; the NLL term holds
the chosen answer up.
"""
from __future__ import annotations

from typing import Dict

import jax
import jax.numpy as jnp

# Metric names, in the order the step reports them (per pair, means over the batch).
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy",
           "logps/chosen", "logps/rejected")


def sigmoid_loss(delta: jax.Array, beta: float, label_smoothing: float = 0.0) -> jax.Array:
  """ℓ(Δ) float32[...] of the module docstring, from the log-ratio margin Δ float[...].

  log σ(x) is computed as −softplus(−x): finite for any x (no log of an underflowed σ).
  """
  x = beta * delta.astype(jnp.float32)
  loss = jax.nn.softplus(-x)  # −log σ(x)
  if label_smoothing:
    loss = (1.0 - label_smoothing) * loss + label_smoothing * jax.nn.softplus(x)
  return loss


def sequence_sums(values: jax.Array, segments: jax.Array, num_segments: int) -> jax.Array:
  """Per-row, per-segment sums: values float[B, K], segments int[B, K] in
  [0, num_segments) -> float32[B, num_segments] (column s: the sum over segment s).

  A scatter-add per row (vmapped, so the row axis stays a batch axis the partitioner
  keeps sharded), not a one-hot product ([B, K, S] would be quadratic in T).
  """
  def one_row(v, s):
    return jax.ops.segment_sum(v, s, num_segments=num_segments)
  return jax.vmap(one_row)(values.astype(jnp.float32), segments)


def chosen_rejected(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """[B, ...] with pairs in adjacent rows -> (chosen [B/2, ...], rejected [B/2, ...])."""
  pairs = x.reshape((x.shape[0] // 2, 2) + x.shape[1:])
  return pairs[:, 0], pairs[:, 1]


def pair_sums(policy: jax.Array, reference: jax.Array, valid: jax.Array, beta: float,
              label_smoothing: float, rpo_alpha: float = 0.0,
              chosen_tokens: jax.Array | None = None) -> Dict[str, jax.Array]:
  """Loss and metric sums over the valid pairs of a batch.

  Args:
    policy, reference: float32[B, S] sequence log-probabilities per row and segment
      (`sequence_sums` of the answer tokens' log-probabilities).
    valid: bool[B/2, S], pairs whose chosen and rejected sequences both have answer
      tokens (padding segments and segment 0 are not pairs).
    beta, label_smoothing: β and ε of the sigmoid loss.
    rpo_alpha: α of the chosen answers' NLL term (module docstring); 0: none.
    chosen_tokens: float32[B/2, S], the chosen answers' token counts (needed when
      rpo_alpha > 0).
  Returns:
    {"loss": Σ ℓ, and for each name of METRICS its sum over the valid pairs}: divide
    by the batch's pair count for means.
  """
  pol_c, pol_r = chosen_rejected(policy)
  ref_c, ref_r = chosen_rejected(jax.lax.stop_gradient(reference))
  delta = (pol_c - ref_c) - (pol_r - ref_r)
  losses = sigmoid_loss(delta, beta, label_smoothing)
  if rpo_alpha:
    if chosen_tokens is None:
      raise ValueError("rpo_alpha needs the chosen answers' token counts")
    losses = losses + rpo_alpha * (-pol_c / jnp.maximum(chosen_tokens, 1.0))
  reward_c = jax.lax.stop_gradient(beta * (pol_c - ref_c))
  reward_r = jax.lax.stop_gradient(beta * (pol_r - ref_r))
  per_pair = {
      "rewards/chosen": reward_c, "rewards/rejected": reward_r,
      "rewards/margin": reward_c - reward_r,
      "rewards/accuracy": (reward_c > reward_r).astype(jnp.float32),
      "logps/chosen": jax.lax.stop_gradient(pol_c),
      "logps/rejected": jax.lax.stop_gradient(pol_r)}
  out = {"loss": jnp.sum(jnp.where(valid, losses, 0.0))}
  out.update({k: jnp.sum(jnp.where(valid, per_pair[k], 0.0)) for k in METRICS})
  return out
