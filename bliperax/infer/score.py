"""Log-likelihood of the labelled tokens of examples: held-out perplexity (training's
evaluators) and lmms-eval's `loglikelihood` requests.

Examples (`batch.Example`: ids with images expanded, labels -100 off the scored
tokens) run in batches sorted by length and right-padded to bucketed shapes
(`batch.bucket`), as generation prompts are, so a run compiles a handful of shapes.
One forward per batch gives every row's summed NLL of its labels, their count and
whether each labelled token is the argmax of its logits (greedy).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import List, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bliperax.data import batch as batch_lib
from bliperax.data import batch_spec
from bliperax.models.config import XGenMMConfig
from bliperax.models.xgenmm import XGenMM
from bliperax.train import losses


@dataclasses.dataclass(frozen=True)
class Score:
  """One example's labelled tokens: summed NLL (nats), how many, all greedy."""
  nll: float
  tokens: int
  greedy: bool


@functools.partial(jax.jit, static_argnums=(0,))
def _score_batch(cfg: XGenMMConfig, params, inputs: dict, labels: jax.Array):
  """(nll float32[B], tokens int32[B], greedy bool[B]) of labels int32[B, T]."""
  logits = XGenMM(cfg).apply({"params": params}, **inputs)  # float32[B, T, V]
  nll, mask = losses.token_nll(logits, labels)  # position t predicts labels[t + 1]
  hit = jnp.argmax(logits[:, :-1], axis=-1) == labels[:, 1:]
  return nll.sum(axis=1), mask.sum(axis=1), jnp.all(hit | ~mask, axis=1)


def score(params, cfg: XGenMMConfig, examples: Sequence[batch_lib.Example], pad_id: int,
          batch_size: int) -> List[Score]:
  """Each example's `Score`, in the order given."""
  if not examples:
    return []
  order = sorted(range(len(examples)), key=lambda i: len(examples[i].tokens))
  rows = min(batch_size, len(examples))
  out: List[Score] = [None] * len(examples)  # type: ignore[list-item]
  for start in range(0, len(order), rows):
    chunk = [examples[i] for i in order[start:start + rows]]
    filled = chunk + [chunk[-1]] * (rows - len(chunk))  # one row count per run
    batch = batch_lib.collate(
        filled, cfg, pad_id, side="right",
        length=batch_lib.bucket(max(len(e.tokens) for e in chunk)),
        num_crops=batch_lib.bucket(max(len(e.crops) for e in chunk), smallest=1),
        num_groups=batch_lib.bucket(max(len(e.group_index) for e in chunk), smallest=1))
    keys = batch_spec.MODEL_KEYS
    if not np.any(batch["crop_valid"]):  # text only: no ViT pass over padding crops
      keys = ("tokens", "positions", "segment_ids")
    nll, tokens, greedy = jax.device_get(_score_batch(
        cfg, params, {k: jnp.asarray(batch[k]) for k in keys}, jnp.asarray(batch["labels"])))
    for j, i in enumerate(order[start:start + rows]):
      out[i] = Score(float(nll[j]), int(tokens[j]), bool(greedy[j]))
  return out
