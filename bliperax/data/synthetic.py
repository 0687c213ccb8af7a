"""A deterministic synthetic batch source with checkpointable state (tests, benchmarks, AOT).

Batch i depends only on (seed, i): every row holds one random image (a single crop of
uniform uint8 pixels, one resampler group) and a learnable text pattern (an arithmetic
token sequence), so losses fall during training and a restored iterator continues with
exactly the next batch. Each process produces only its own rows of the global batch.

With `pairs=True` (DPO: tests, AOT compiles) the batch is a preference batch in the
layout of bliperax/data/pairs.py: rows 2i and 2i+1 share one image and one prompt
(the first half of the pattern, no loss) and differ in the answer, labelled: the
chosen row continues the pattern, the rejected row continues it with another stride.
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from bliperax.data import batch as batch_lib
from bliperax.data import batch_spec
from bliperax.data import image as image_lib
from bliperax.models.config import XGenMMConfig

PAD_ID = 32011


class SyntheticSource:
  """Iterator of host-local numpy batches; `get_state()` / `set_state()` resume exactly."""

  def __init__(self, cfg: XGenMMConfig, global_batch: int, seq_len: int, seed: int = 0,
               process_index: int = 0, process_count: int = 1, text_vocab: int = 512,
               pairs: bool = False):
    if global_batch % process_count:
      raise ValueError(f"global batch {global_batch} is not divisible by {process_count} "
                       "processes")
    if pairs and (global_batch // process_count) % 2:
      raise ValueError(f"{global_batch // process_count} rows per process cannot hold "
                       "whole pairs (2 rows each)")
    self.pairs = pairs
    self.cfg = cfg
    self.global_batch = global_batch
    self.local_batch = global_batch // process_count
    self.first_row = process_index * self.local_batch
    self.seq_len = seq_len
    self.seed = seed
    self.text_vocab = text_vocab
    self.index = 0
    lat = cfg.resampler.num_latents
    if seq_len < lat + 4:
      raise ValueError(f"seq_len {seq_len} cannot hold one image block of {lat} tokens")

  def _row(self, batch_index: int, row: int) -> batch_lib.Example:
    r = np.random.default_rng([self.seed, batch_index, row])
    s = self.cfg.vision.image_size
    lat = self.cfg.resampler.num_latents
    crops = r.integers(0, 256, size=(1, s, s, 3), dtype=batch_spec.CROPS_DTYPE)
    index, valid = image_lib.single_group(self.cfg.vision.num_patches, 1)
    n_text = self.seq_len - lat - int(r.integers(0, 4))  # some rows padded
    start, stride = int(r.integers(0, self.text_vocab)), int(r.integers(1, 4))
    text = (1000 + (start + stride * np.arange(n_text)) % self.text_vocab).tolist()
    ids = text[:1] + [batch_lib.IMAGE_ID] + text[1:]
    labels = [batch_spec.IGNORE] * 2 + text[1:]
    return batch_lib.expand(ids, labels, [batch_lib.VisionInput(crops, index, valid)],
                            batch_spec.VisionDims.of(self.cfg))

  def _pair_row(self, batch_index: int, row: int) -> batch_lib.Example:
    """Row 2p (chosen) or 2p+1 (rejected) of pair p = row // 2: the pair's image and
    prompt are drawn from (seed, batch, p, 0); only the answer depends on the side."""
    p, rejected = divmod(row, 2)
    r = np.random.default_rng([self.seed, batch_index, p, 0])
    s = self.cfg.vision.image_size
    lat = self.cfg.resampler.num_latents
    crops = r.integers(0, 256, size=(1, s, s, 3), dtype=batch_spec.CROPS_DTYPE)
    index, valid = image_lib.single_group(self.cfg.vision.num_patches, 1)
    n_text = self.seq_len - lat - int(r.integers(0, 4))  # some rows padded
    n_prompt = n_text // 2
    start, stride = int(r.integers(0, self.text_vocab)), int(r.integers(1, 4))
    prompt = start + stride * np.arange(n_prompt)
    answer_stride = stride + 1 + int(r.integers(0, 3)) if rejected else stride
    answer = prompt[-1] + answer_stride * np.arange(1, n_text - n_prompt + 1)
    text = (1000 + np.concatenate([prompt, answer]) % self.text_vocab).tolist()
    ids = text[:1] + [batch_lib.IMAGE_ID] + text[1:]
    labels = [batch_spec.IGNORE] * (1 + n_prompt) + text[n_prompt:]
    return batch_lib.expand(ids, labels, [batch_lib.VisionInput(crops, index, valid)],
                            batch_spec.VisionDims.of(self.cfg))

  def __iter__(self):
    return self

  def __next__(self) -> Dict[str, np.ndarray]:
    make = self._pair_row if self.pairs else self._row
    rows = [make(self.index, self.first_row + i) for i in range(self.local_batch)]
    self.index += 1
    out = batch_lib.collate(rows, self.cfg, PAD_ID, "right", length=self.seq_len,
                            num_crops=1, num_groups=1)
    return {k: out[k] for k in batch_spec.TRAIN_KEYS}

  def get_state(self) -> dict:
    return {"index": self.index, "seed": self.seed}

  def set_state(self, state: dict) -> None:
    if state.get("seed", self.seed) != self.seed:
      raise ValueError(f"iterator state is for seed {state['seed']}, this source uses {self.seed}")
    self.index = int(state["index"])
