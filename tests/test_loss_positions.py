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


def test_a_small_cap_counts_what_it_drops(setup):
  run, counts = setup
  cap = 3
  _, metrics = run(cap)
  kept = np.minimum(counts, cap).sum()
  assert metrics["loss_tokens"] == kept
  assert metrics["dropped_loss_tokens"] == counts.sum() - kept > 0
  assert np.isfinite(metrics["loss"])
