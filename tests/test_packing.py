"""Packing: segment isolation (attention mask and logits), positions, vision slots, label spans."""
import json

import flax.linen as nn
import grain
import jax
import numpy as np
import pytest

import pipeline_helpers as helpers
from bliperax.data import batch as batch_lib
from bliperax.data import batch_spec
from bliperax.data import example_shards
from bliperax.data import image as image_lib
from bliperax.data import packing
from bliperax.data import pipeline
from bliperax.data import pipeline_stats
from bliperax.data import render as render_lib
from bliperax.data import schema
from bliperax.data import tokenizer as tokenizer_lib
from bliperax.models import layers, presets, xgenmm

CFG = presets.tiny()
LAT = CFG.resampler.num_latents
P = CFG.vision.num_patches
LIMITS = batch_spec.Limits(length=256, crops=10, groups=10)
DIMS = batch_spec.VisionDims(CFG.vision.image_size, P, LAT)
PAD = 32011
IMAGES = example_shards.generated_images(4)
ANSWERS = ("A small red bus.", "Two, near the window.")
CHAT = schema.Chat(turns=("<image>\nWhat is this?", ANSWERS[0], "How many?", ANSWERS[1]),
                   images=(IMAGES[1],))
CAPTION = schema.Caption(image=IMAGES[2], text="A dog in a park.")
TEXT = schema.Text(text="Snow on the mountain.")


def _prepare(sample, anyres, limits=LIMITS):
  prep = pipeline.PrepareSample(0, anyres, CFG, limits, render_lib.RenderOptions(),
                                to_sample=lambda x: x)
  out = prep(sample)
  assert isinstance(out, pipeline_stats.Prepared), out
  return out.example


@pytest.fixture(scope="module")
def examples():
  return [_prepare(CAPTION, False), _prepare(CHAT, True), _prepare(TEXT, False)]


def _row(examples, limits=LIMITS):
  row = packing.Row(limits, DIMS)
  for e in examples:
    assert row.fits(e)
    row.add(e)
  return row.arrays(PAD)


def _segments(arrays):
  seg = arrays["segment_ids"]
  return [np.flatnonzero(seg == s) for s in range(1, seg.max() + 1)]


def test_no_token_attends_across_segments(examples):
  row = _row(examples)
  seg = row["segment_ids"][None]
  t = np.arange(seg.shape[1])
  mask = np.asarray(layers.attention_mask(t, t, seg, seg, causal=True, window=None))[0, 0]
  same = (seg[0][:, None] == seg[0][None, :]) & (seg[0][None, :] != 0)
  assert not np.any(mask & ~same)
  for span in _segments(row):  # and inside a segment: exactly the causal triangle
    block = mask[np.ix_(span, span)]
    np.testing.assert_array_equal(block, np.tril(np.ones_like(block)))


def test_packed_logits_equal_each_sample_alone(examples):
  """A packed row's logits on each segment equal that sample's logits when alone."""
  rows = [_row(examples)] + [_row([e]) for e in examples]
  batch = {k: np.stack([r[k] for r in rows]) for k in batch_spec.MODEL_KEYS}
  params = nn.meta.unbox(xgenmm.init_params(CFG, jax.random.PRNGKey(0)))
  logits = np.asarray(jax.jit(lambda p, b: xgenmm.XGenMM(CFG).apply({"params": p}, **b))(
      params, batch))
  for i, span in enumerate(_segments(rows[0])):
    alone = logits[1 + i, :len(span)]
    np.testing.assert_allclose(logits[0, span], alone, rtol=1e-5, atol=1e-5)


def test_positions_restart_and_vision_slots_are_offset(examples):
  row = _row(examples)
  spans = _segments(row)
  assert [len(s) for s in spans] == [len(e.tokens) for e in examples]
  crop_start = np.cumsum([0] + [len(e.crops) for e in examples])
  group_start = np.cumsum([0] + [len(e.group_index) for e in examples])
  for i, (span, e) in enumerate(zip(spans, examples)):
    np.testing.assert_array_equal(row["positions"][span], np.arange(len(span)))
    np.testing.assert_array_equal(row["tokens"][span], e.tokens)
    groups = slice(group_start[i], group_start[i + 1])
    slots = row["vision_slots"].reshape(-1, LAT)[groups].reshape(-1)
    np.testing.assert_array_equal(slots, e.vision_slots + span[0])
    assert np.all(row["tokens"][slots] == batch_lib.IMAGE_ID)
    index = row["group_index"][groups]  # into this sample's crops only
    assert not len(e.crops) or index.min() >= crop_start[i] * P and index.max() < crop_start[i + 1] * P
    np.testing.assert_array_equal(row["crops"][crop_start[i]:crop_start[i + 1]], e.crops)
  assert np.all(row["vision_slots"][group_start[-1] * LAT:] == LIMITS.length)  # unused: dropped
  assert row["crop_valid"].sum() == crop_start[-1]
  assert row["group_valid"].sum() == group_start[-1]


def _runs(mask):
  """[start, end) of each run of True."""
  edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
  return list(zip(edges[::2], edges[1::2]))


def test_label_spans_cover_exactly_the_assistant_answers(examples):
  tok = tokenizer_lib.load()
  row = _row(examples)
  caption, chat, text = _segments(row)
  labels = row["labels"]
  on = labels != batch_spec.IGNORE
  runs = _runs(on[chat])
  assert [tok.decode(row["tokens"][chat][a:b]) for a, b in runs] == [
      f"{a}<|end|>" for a in ANSWERS]
  np.testing.assert_array_equal(labels[on], row["tokens"][on])
  # Every text token of the caption and the text sample, except each segment's first
  # token and <|endofchunk|>; never a vision slot or padding.
  assert tok.decode(row["tokens"][caption][on[caption]]) == "A dog in a park.<|endoftext|>"
  np.testing.assert_array_equal(row["tokens"][text][on[text]],
                                tok.encode("Snow on the mountain.<|endoftext|>")[1:])
  assert not on[row["vision_slots"][row["vision_slots"] < LIMITS.length]].any()
  assert not on[row["segment_ids"] == 0].any()
  assert not on[[s[0] for s in (caption, chat, text)]].any()


def test_fit_never_cuts_inside_an_image_block():
  image = batch_lib.prepare_image(image_lib.decode_image(IMAGES[0]), CFG, anyres=True)
  block = image.num_groups * LAT
  ids = [1, 2, 3, 4, batch_lib.IMAGE_ID, 5, 6, 7]
  labels = [1, 2, 3, 4, -100, 5, 6, 7]
  whole = packing.fit(ids, labels, [image], LAT, batch_spec.Limits(block + 8, 10, 10))
  assert whole.truncated_tokens == 0 and len(whole.images) == 1
  assert whole.labels[0] == -100  # a segment's first token is never a target
  for length in (5, block + 3, block + 4):  # the block ends at token block + 4
    fitted = packing.fit(ids, labels, [image], LAT, batch_spec.Limits(length, 10, 10))
    n_images = int(length >= block + 4)
    assert len(fitted.images) == n_images and fitted.truncated_images == 1 - n_images
    expanded = batch_lib.expand(fitted.ids, fitted.labels, fitted.images, DIMS)
    assert len(expanded.tokens) <= length
    assert len(expanded.tokens) + fitted.truncated_tokens == block + 7
  few_crops = packing.fit(ids, labels, [image], LAT,
                          batch_spec.Limits(500, image.num_groups - 1, 10))
  assert few_crops.truncated_images == 1 and list(few_crops.ids) == [1, 2, 3, 4]
  answer_after_image = [-100] * 5 + [5, 6, 7]
  assert packing.fit(ids, answer_after_image, [image], LAT, batch_spec.Limits(20, 10, 10)) is None


def test_pipeline_rows_hold_whole_image_blocks_and_loss(tmp_path):
  helpers.write_shards(tmp_path, num=16, corrupt=0)
  cfg = helpers.tiny_config(tmp_path, seq_len=96, batch=4)
  source = pipeline.GrainSource(pipeline.from_config(cfg), CFG, keys=None)
  for batch in helpers.take(source, 4):
    for b in range(4):
      valid = batch["group_valid"][b]
      slots = batch["vision_slots"][b].reshape(-1, LAT)
      assert np.all(slots[~valid] == 96)
      assert np.all(batch["tokens"][b][slots[valid]] == batch_lib.IMAGE_ID)
      # No partial block: every <image> slot token belongs to a kept group.
      assert np.sum(batch["tokens"][b] == batch_lib.IMAGE_ID) == valid.sum() * LAT
      assert np.any(batch["labels"][b] != -100)
  stats = source.stats()
  assert stats["truncated_samples"] > 0 and stats["rows_without_loss"] == 0
  assert stats["samples_per_row"] > 1


def test_pad_mode_puts_one_sample_per_row(tmp_path):
  helpers.write_shards(tmp_path, num=8, corrupt=0)
  cfg = helpers.tiny_config(tmp_path, pack=False)
  source = pipeline.make_source(cfg, CFG)
  for batch in helpers.take(source, 2):
    assert batch["segment_ids"].max(axis=1).tolist() == [1] * 4
    np.testing.assert_array_equal(batch["positions"][batch["segment_ids"] == 1],
                                  np.concatenate([np.arange(n) for n in
                                                  (batch["segment_ids"] == 1).sum(1)]))
  assert source.stats()["samples_per_row"] == 1


def test_pack_iterator_state_restores_the_held_sample(examples):
  items = [pipeline_stats.Prepared(e, 0) for e in examples * 4]
  items.insert(3, pipeline_stats.Skipped("bad_image", 0))
  counters = pipeline_stats.Counters(["s"])
  limits = batch_spec.Limits(length=200, crops=10, groups=10)
  ds = packing.PackIterDataset(grain.MapDataset.source(items).to_iter_dataset(), limits, DIMS,
                               counters)
  it = iter(ds)
  rows, states = [], []
  for _ in range(4):
    states.append(it.get_state())
    rows.append(next(it))
  for k in range(4):
    again = iter(ds)
    again.set_state(states[k])
    for want in rows[k:]:
      got = next(again)
      np.testing.assert_array_equal(got.stats, want.stats)
      for key, value in want.row.arrays(PAD).items():
        np.testing.assert_array_equal(got.row.arrays(PAD)[key], value, err_msg=key)
  total = counters.to_dict(sum(r.stats for r in rows + list(it)))
  assert total["samples_read"] == 13 and total["skipped/bad_image"] == 1
  assert total["samples_packed"] == 12


# ------------------------------------------------------------ best-fit packing


def _text_items(lengths):
  """Prepared text-only samples of these token counts (every token a loss token)."""
  return [pipeline_stats.Prepared(batch_lib.expand(list(range(1, n + 1)), None, [], DIMS), 0)
          for n in lengths]


def _packed(items, limits, packer, open_rows=packing.DEFAULT_OPEN_ROWS):
  counters = pipeline_stats.Counters(["s"])
  ds = packing.PackIterDataset(grain.MapDataset.source(items).to_iter_dataset(), limits, DIMS,
                               counters, packer=packer, open_rows=open_rows)
  return ds, counters


def _lengths(rows):
  return [[len(e.tokens) for e in packed.row.examples] for packed in rows]


def test_best_fit_puts_each_sample_into_the_fullest_open_row_it_fits():
  """T = 10, two open rows. 6 opens A; 5 opens B; 4 fits both and goes to the fuller A,
  which is then full and leaves; 3 and 1 join B. Next-fit needs a third row."""
  limits = batch_spec.Limits(length=10, crops=1, groups=1)
  items = _text_items([6, 5, 4, 3, 1])
  best, counters = _packed(items, limits, "best_fit", open_rows=2)
  rows = list(best)
  assert _lengths(rows) == [[6, 4], [5, 3, 1]]
  stats = counters.to_dict(sum(r.stats for r in rows))
  assert (stats["row_tokens"], stats["row_capacity"]) == (19, 20)  # next-fit: 19 of 30
  assert stats["samples_read"] == stats["samples_packed"] == 5
  next_fit, _ = _packed(items, limits, "next_fit")
  assert _lengths(list(next_fit)) == [[6], [5, 4], [3, 1]]


def test_best_fit_evicts_the_oldest_row_and_emits_full_rows_at_once():
  """T = 10, two open rows. 6 opens A, 5 opens B; 7 fits neither, opens C and evicts the
  oldest, A; 2 goes to the fuller C; 10 fills a row of its own, which leaves at once
  (B and C stay open); 3 fits only B. At the end B, then C."""
  limits = batch_spec.Limits(length=10, crops=1, groups=1)
  best, _ = _packed(_text_items([6, 5, 7, 2, 10, 3]), limits, "best_fit", open_rows=2)
  assert _lengths(list(best)) == [[6], [10], [5, 3], [7, 2]]


def test_best_fit_state_restores_the_open_rows(examples):
  """From the state after every row (through JSON, as the trainer stores it), a fresh
  iterator gives exactly the remaining rows and counts, and every item counts once."""
  items = [pipeline_stats.Prepared(e, 0) for e in examples * 3] + _text_items(
      [40, 7, 120, 3, 60, 150, 11, 90])
  items.insert(4, pipeline_stats.Skipped("bad_image", 0))
  limits = batch_spec.Limits(length=200, crops=10, groups=10)
  ds, counters = _packed(items, limits, "best_fit", open_rows=3)
  it = iter(ds)
  rows, states = [], []
  while True:
    states.append(json.loads(json.dumps(it.get_state())))
    try:
      rows.append(next(it))
    except StopIteration:
      break
  assert any(s["open_rows"] for s in states[1:-1])  # the states do hold open rows
  for k in range(len(rows)):
    again = iter(ds)
    again.set_state(states[k])
    got = list(again)
    assert len(got) == len(rows) - k
    for g, want in zip(got, rows[k:]):
      np.testing.assert_array_equal(g.stats, want.stats)
      for key, value in want.row.arrays(PAD).items():
        np.testing.assert_array_equal(g.row.arrays(PAD)[key], value, err_msg=key)
  total = counters.to_dict(sum(r.stats for r in rows))
  assert total["samples_read"] == len(items) and total["skipped/bad_image"] == 1
  assert total["samples_packed"] == len(items) - 1
