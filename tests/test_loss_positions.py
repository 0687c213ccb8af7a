"""The head on loss positions only (train.loss_tokens_per_row) vs. the head everywhere.

One CPU device, the tiny preset and the synthetic source: the gathered loss must give
the same loss and gradients as the full one when the cap holds every loss token, and
say how many it dropped when it does not.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bliperax.data import batch_spec
from bliperax.data.synthetic import SyntheticSource
from bliperax.models import presets
from bliperax.models.xgenmm import XGenMM, init_params
from bliperax.train import losses
from bliperax.train.step import TrainState, train_step

IGNORE = batch_spec.IGNORE


def test_loss_positions_picks_the_first_k_loss_tokens_of_each_row():
  labels = np.array([[5, IGNORE, 7, 8, IGNORE, 9],
                     [IGNORE] * 6,
                     [1, 2, 3, 4, 5, 6]])
  positions, targets, mask = jax.device_get(losses.loss_positions(jnp.asarray(labels), 3))
  # Position t predicts labels[t + 1].
  np.testing.assert_array_equal(mask, [[1, 1, 1], [0, 0, 0], [1, 1, 1]])
  np.testing.assert_array_equal(positions[0], [1, 2, 4])
  np.testing.assert_array_equal(targets[0], [7, 8, 9])
  np.testing.assert_array_equal(targets[1], [IGNORE] * 3)
  np.testing.assert_array_equal(positions[2], [0, 1, 2])  # capped: 3 of 5
  np.testing.assert_array_equal(targets[2], [2, 3, 4])


def test_decoupled_nll_equals_the_nll_of_the_cut_and_joined_logits():
  """decoupled_nll(base, added) == gathered_nll([base[:, :n] ; added]), value and
  gradient, with the dead columns given large logits (counting them would move the
  loss by ~log(1 + 3e^12/V) = 2.2) and targets in both parts and IGNORE."""
  rows, vocab_rows, base_vocab, added_n = 6, 4000, 3997, 3
  r = np.random.default_rng(0)
  base = r.normal(0, 2, (2, rows, vocab_rows)).astype(np.float32)
  base[..., base_vocab:] = 30.0  # dead: must not count
  added = r.normal(0, 2, (2, rows, added_n)).astype(np.float32)
  targets = r.integers(0, base_vocab + added_n, (2, rows))
  targets[0, :3] = [base_vocab, base_vocab + 2, 0]
  targets[1, 4] = IGNORE

  def joined(b, a):
    return losses.gathered_nll(jnp.concatenate([b[..., :base_vocab], a], axis=-1),
                               jnp.asarray(targets)).sum()

  def split(b, a):
    return losses.decoupled_nll(b, a, jnp.asarray(targets), base_vocab).sum()

  want, (want_gb, want_ga) = jax.value_and_grad(joined, argnums=(0, 1))(base, added)
  got, (got_gb, got_ga) = jax.value_and_grad(split, argnums=(0, 1))(base, added)
  # Both are log-sum-exps over the same V = 4000 terms, summed in different orders:
  # each sum of positive terms is within (V-1)·eps of its value, so each NLL within
  # 2·V·eps of the other, plus eps-scale round-off of the logits (|x| < 20).
  eps, v = np.finfo(np.float32).eps, base_vocab + added_n
  per_token = 2 * v * eps + 4 * 20 * eps
  assert abs(float(got) - float(want)) <= 2 * rows * per_token
  # The gradient is softmax - onehot: each probability within 2·V·eps of itself.
  np.testing.assert_allclose(got_gb[..., :base_vocab], want_gb[..., :base_vocab],
                             atol=per_token, rtol=0)
  np.testing.assert_allclose(got_ga, want_ga, atol=per_token, rtol=0)
  assert not np.any(np.asarray(got_gb[..., base_vocab:]))  # dead columns: exactly 0
  assert not np.any(np.asarray(got_gb[1, 4])) and not np.any(np.asarray(got_ga[1, 4]))
  np.testing.assert_array_equal(
      np.asarray(losses.decoupled_nll(base, None, jnp.asarray(np.minimum(targets, 5)), 3997)
                 ) > 0, np.minimum(targets, 5) != IGNORE)  # no added part: base alone


@pytest.fixture(scope="module")
def setup():
  cfg = presets.tiny()
  model = XGenMM(cfg)
  params = nn.meta.unbox(init_params(cfg, jax.random.PRNGKey(0)))
  batch = next(SyntheticSource(cfg, global_batch=4, seq_len=24, seed=3))
  # Take the loss off a ragged set of tokens so rows hold different counts.
  labels = batch["labels"].copy()
  labels[0, 5:9] = IGNORE
  labels[2, :] = IGNORE
  batch = {**batch, "labels": labels}
  # The update is minus the gradient; the finite guard is what train_step reports on.
  tx = optax.apply_if_finite(optax.sgd(1.0), max_consecutive_errors=1)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  trainable = jax.tree.map(lambda _: True, params)

  def run(per_row):
    step = jax.jit(lambda s, b: train_step(s, b, model=model, tx=tx, accum_steps=1,
                                           lr_schedule=lambda _: 1.0, trainable=trainable,
                                           loss_tokens_per_row=per_row))
    new_state, metrics = step(state, batch)
    grads = jax.tree.map(lambda a, b: a - b, params, new_state.params)
    return jax.device_get(grads), jax.device_get(metrics)
  # Gradients are read back as params - new_params, so they are known to one ulp
  # of the parameter they were subtracted from.
  run.resolution = jax.tree.map(lambda p: np.spacing(np.abs(np.asarray(p))), params)
  per_row_counts = (labels[:, 1:] != IGNORE).sum(axis=1)
  return run, per_row_counts


def test_gathered_loss_equals_the_full_loss_when_the_cap_holds_every_token(setup):
  run, counts = setup
  full_grads, full = run(0)
  cap_grads, cap = run(int(counts.max()))
  assert cap["loss_tokens"] == full["loss_tokens"] == counts.sum()
  assert cap["dropped_loss_tokens"] == 0
  # The same terms summed in another order (the head's weight gradient sums over the
  # kept positions instead of all of them, zeros included): float32 round-off of sums
  # of ~60 terms, ~60 * 6e-8 of their magnitude, bounded here by 1e-5 of the largest
  # gradient anywhere (round-off flows backward, so a tensor whose true gradient is 0,
  # like a key bias, still carries that noise).
  np.testing.assert_allclose(cap["loss"], full["loss"], rtol=1e-6)
  largest = max(float(np.abs(g).max()) for g in jax.tree.leaves(full_grads))
  for (path, g), c, ulp in zip(jax.tree_util.tree_flatten_with_path(full_grads)[0],
                               jax.tree.leaves(cap_grads), jax.tree.leaves(run.resolution)):
    assert np.all(np.abs(c - g) <= 1e-5 * largest + 2 * ulp), jax.tree_util.keystr(path)


@pytest.mark.slow  # the default suite's 15-minute budget on 2 cores
def test_a_small_cap_counts_what_it_drops(setup):
  run, counts = setup
  cap = 3
  _, metrics = run(cap)
  kept = np.minimum(counts, cap).sum()
  assert metrics["loss_tokens"] == kept
  assert metrics["dropped_loss_tokens"] == counts.sum() - kept > 0
  assert np.isfinite(metrics["loss"])
