"""Generation prompts in bucketed static shapes (bliperax.data.batch.bucket / collate_prompts)."""
import numpy as np
import pytest

from bliperax.data import batch as batch_lib
from bliperax.data import batch_spec
from bliperax.models import presets


def test_buckets_cover_every_length_with_at_most_a_third_padding():
  sizes = [batch_lib.bucket(n) for n in range(1, 4097)]
  assert sizes == sorted(sizes)
  for n, size in zip(range(1, 4097), sizes):
    assert size >= n
    assert size == 16 or size < 1.5 * n, (n, size)  # the next smaller bucket was < n
  assert len(set(sizes)) <= 2 * 12  # O(log T) shapes for T up to 4096
  assert [batch_lib.bucket(n, smallest=1) for n in range(1, 10)] == [1, 2, 3, 4, 6, 6, 8, 8, 12]


def _example(cfg, n_text, n_images, seed):
  r = np.random.default_rng(seed)
  s, p = cfg.vision.image_size, cfg.vision.num_patches
  images = [batch_lib.VisionInput(r.uniform(-1, 1, (1, s, s, 3)).astype(np.float32),
                                  np.arange(p, dtype=np.int32)[None], np.ones((1, p), bool))
            for _ in range(n_images)]
  ids = [batch_lib.IMAGE_ID] * n_images + r.integers(100, 30000, size=n_text).tolist()
  return batch_lib.expand(ids, None, images, batch_spec.VisionDims.of(cfg))


def test_collate_prompts_pads_to_buckets_and_fills_rows():
  cfg = presets.get("tiny")
  examples = [_example(cfg, 5, 1, 0), _example(cfg, 30, 2, 1), _example(cfg, 2, 0, 2)]
  got = batch_lib.collate_prompts(examples, cfg, pad_id=32011, rows=5)
  longest = max(len(e.tokens) for e in examples)
  assert got["tokens"].shape == (5, batch_lib.bucket(longest))
  assert got["crops"].shape[1] == 2 and got["group_index"].shape[1] == 2
  # the real rows are collate(side="left")'s, moved right by the extra padding
  plain = batch_lib.collate(examples, cfg, 32011, side="left")
  shift = got["tokens"].shape[1] - plain["tokens"].shape[1]
  np.testing.assert_array_equal(got["tokens"][:3, shift:], plain["tokens"])
  np.testing.assert_array_equal(got["positions"][:3, shift:], plain["positions"])
  assert (got["segment_ids"][:3, :shift] == 0).all()
  np.testing.assert_array_equal(got["vision_slots"][:3], plain["vision_slots"] + shift)
  # filler rows repeat the last prompt
  for k in ("tokens", "crops", "vision_slots"):
    np.testing.assert_array_equal(got[k][3], got[k][2])
  with pytest.raises(ValueError, match="do not fit in 2 rows"):
    batch_lib.collate_prompts(examples, cfg, 32011, rows=2)
