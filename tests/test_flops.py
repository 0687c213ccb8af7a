"""Model FLOPs counted from the batch that ran (train/flops.py `batch_flops`) against
the planned count (`step_flops`) on hand-built batches."""
import dataclasses
import pathlib

import numpy as np
import pytest

from bliperax.data.batch_spec import IGNORE
from bliperax.models import presets
from bliperax.train import flops

B, T, C, G = 2, 16, 3, 3


def _batch(segments, crops_valid, groups_valid, labels=None):
  segments = np.asarray(segments, np.int32)
  return {"segment_ids": segments,
          "labels": np.full(segments.shape, 7, np.int32) if labels is None else labels,
          "crop_valid": np.asarray(crops_valid, bool),
          "group_valid": np.asarray(groups_valid, bool)}


def _brute_keys(segments, window=None):
  """Keys per real query from the explicit packed causal mask; with a window, query i
  sees key j iff 0 <= i - j <= window (models/config.py, the reference's rule)."""
  total = 0
  for row in np.asarray(segments):
    q, k = np.arange(len(row))[:, None], np.arange(len(row))[None, :]
    mask = (row[:, None] == row[None, :]) & (k <= q) & (row[:, None] > 0)
    if window is not None:
      mask &= q - k <= window
    total += int(mask.sum())
  return total


@pytest.mark.parametrize("window", [None, 0, 3, 40])
def test_attended_keys_is_the_mask_count(window):
  rng = np.random.default_rng(0)
  for _ in range(20):
    lengths = rng.integers(1, 9, size=4)
    row = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)])[:T]
    row = np.pad(row, (0, T - len(row)))
    cut = row.copy()
    cut[rng.integers(0, T):] = 0  # another row: padded from a random point
    segments = np.stack([row, cut])
    assert flops.attended_keys(segments, window) == _brute_keys(segments, window)


def test_a_full_batch_counts_what_the_plan_counts():
  """One sample filling every row, every crop and group real: the plan, except that a
  causal row of T tokens attends to T(T+1)/2 keys where the plan says T·T/2."""
  cfg = presets.get("tiny")
  full = _batch(np.ones((B, T)), np.ones((B, C)), np.ones((B, G)))
  counted = flops.batch_flops(cfg, full)
  planned = flops.step_flops(cfg, B, T, crops_per_row=C, groups_per_row=G)
  assert counted["vision"] == planned["vision"] and counted["resampler"] == planned["resampler"]
  key = cfg.text.depth * 4 * cfg.text.head_dim * cfg.text.num_heads
  assert counted["lm"] - planned["lm"] == 3 * key * B * T / 2
  assert counted["total"] == counted["vision"] + counted["resampler"] + counted["lm"]


def test_packing_padding_and_loss_positions():
  cfg = presets.get("tiny")
  u = flops._unit_costs(cfg)  # pylint: disable=protected-access
  # Row 0: samples of 5 and 7 tokens, 4 padding; row 1: one of 10, 6 padding.
  segments = np.zeros((B, T), np.int32)
  segments[0, :5], segments[0, 5:12], segments[1, :10] = 1, 2, 1
  crops = [[1, 1, 0], [1, 0, 0]]  # 3 real crops of 6
  groups = [[1, 1, 1], [0, 0, 0]]  # 3 real groups
  labels = np.full((B, T), IGNORE, np.int32)
  labels[0, 3:5], labels[1, 8:10] = 1, 1  # 4 loss positions
  batch = _batch(segments, crops, groups, labels)
  keys = 5 * 6 // 2 + 7 * 8 // 2 + 10 * 11 // 2
  counted = flops.batch_flops(cfg, batch, head_at_loss_only=True)
  assert counted["vision"] == 1 * u["crop"] * 3  # the ViT frozen: forward only
  assert counted["resampler"] == 3 * u["group"] * 3
  assert counted["lm"] == 3 * (u["token"] * 22 + u["key"] * keys + u["head"] * 4)
  every_head = flops.batch_flops(cfg, batch, training=flops.Training(vision=flops.FULL))
  assert every_head["lm"] - counted["lm"] == 3 * u["head"] * (22 - 4)
  assert every_head["vision"] == 3 * counted["vision"]


def test_real_crops_and_groups_follow_from_what_the_model_reads():
  """Without the host's crop_valid/group_valid (the trainer's batches drop them), the
  same masks come from vision_slots, group_index and group_mask."""
  from bliperax.data import batch as batch_lib  # pylint: disable=g-import-not-at-top
  from bliperax.data import image as image_lib  # pylint: disable=g-import-not-at-top
  from bliperax.data.batch_spec import VisionDims  # pylint: disable=g-import-not-at-top
  cfg = presets.get("tiny")
  rng = np.random.default_rng(0)
  s, p, lat = cfg.vision.image_size, cfg.vision.num_patches, cfg.resampler.num_latents
  examples = []
  for n_images in (2, 0, 1):
    ids, labels, vision = [5], [IGNORE], []
    for _ in range(n_images):
      crops = rng.uniform(-1, 1, size=(1, s, s, 3)).astype(np.float32)
      index, valid = image_lib.single_group(p, 1)
      vision.append(batch_lib.VisionInput(crops, index, valid))
      ids += [batch_lib.IMAGE_ID, 6]
      labels += [IGNORE, 6]
    examples.append(batch_lib.expand(ids, labels, vision, VisionDims.of(cfg)))
  batch = batch_lib.collate(examples, cfg, 0, length=2 * lat + 8, num_crops=3, num_groups=3)
  model_only = {k: v for k, v in batch.items() if k not in ("crop_valid", "group_valid")}
  crops, groups = flops.real_crops_and_groups(model_only)
  np.testing.assert_array_equal(crops, batch["crop_valid"])
  np.testing.assert_array_equal(groups, batch["group_valid"])
  assert crops.sum() == 3 and groups.sum() == 3
  assert flops.batch_flops(cfg, model_only) == flops.batch_flops(cfg, batch)


def test_what_trains_sets_each_towers_multiplier():
  both = dict(vision=flops.FROZEN, resampler=flops.FROZEN)
  lora = flops.Training(**both, lm=flops.ADAPTERS)
  assert [lora.multiplier(t) for t in flops.TOWERS] == [1, 1, 2]
  # A frozen LM behind a trained resampler still carries the gradient back: 2x.
  late = flops.Training(vision=flops.FROZEN, resampler=flops.FULL, lm=flops.FROZEN)
  assert [late.multiplier(t) for t in flops.TOWERS] == [1, 3, 2]
  everything = flops.Training(vision=flops.FULL, resampler=flops.FULL, lm=flops.FULL)
  assert [everything.multiplier(t) for t in flops.TOWERS] == [3, 3, 3]


def test_dpo_counts_each_pairs_images_once_and_the_reference_forward():
  """Rows 2i, 2i+1 of a pair batch share their crops: the step encodes them once (plus
  once more for a reference with its own vision side); the reference runs the LM
  forward on every row; LoRA in the LM adds 6 FLOPs per adapter parameter per token."""
  cfg = presets.get("tiny")
  u = flops._unit_costs(cfg)  # pylint: disable=protected-access
  segments = np.zeros((4, T), np.int32)
  segments[0, :6], segments[1, :9], segments[2, :4], segments[3, :4] = 1, 1, 1, 1
  crops = [[1, 1, 0], [1, 1, 0], [1, 0, 0], [1, 0, 0]]  # a pair's rows: the same images
  batch = _batch(segments, crops, crops)
  tokens = 6 + 9 + 4 + 4
  keys = sum(n * (n + 1) // 2 for n in (6, 9, 4, 4))
  lm_forward = u["token"] * tokens + u["key"] * keys + u["head"] * tokens
  lora = flops.Training(vision=flops.FROZEN, resampler=flops.FROZEN, lm=flops.ADAPTERS,
                        lm_adapter_params=1000, dpo=True, reference_shares_vision=True)
  counted = flops.batch_flops(cfg, batch, training=lora)
  assert counted["vision"] == u["crop"] * 3 and counted["resampler"] == u["group"] * 3
  assert counted["lm"] == 2 * lm_forward + 6 * 1000 * tokens + lm_forward
  own = flops.batch_flops(cfg, batch, training=dataclasses.replace(
      lora, reference_shares_vision=False))
  assert own["vision"] == 2 * counted["vision"] and own["resampler"] == 2 * counted["resampler"]
  as_sft = flops.batch_flops(cfg, batch, training=dataclasses.replace(lora, dpo=False))
  assert as_sft["vision"] == u["crop"] * 6  # the same rows, not pairs: every row's crops
  planned = flops.step_flops(cfg, 4, T, crops_per_row=1.5, groups_per_row=1.5,
                             training=lora)
  assert planned["vision"] == counted["vision"]


def test_training_of_a_lora_dpo_setup():
  """A LoRA DPO config: only the LM has adapters (the reference shares the vision
  tokens), their count as bliperax.lora.count reports it; without LoRA the towers
  follow the freeze patterns."""
  from bliperax import cli, sharding  # pylint: disable=g-import-not-at-top
  from bliperax.lora import count  # pylint: disable=g-import-not-at-top
  from bliperax.train.setup import TrainSetup  # pylint: disable=g-import-not-at-top
  cfg = cli.load_config(str(pathlib.Path(__file__).parents[1] / "experiments" / "tiny.py"))
  plain = flops.Training.of(TrainSetup.build(cfg, sharding.make_mesh(cfg.mesh)))
  assert (plain.vision, plain.resampler, plain.lm, plain.dpo) == (
      flops.FROZEN, flops.FULL, flops.FULL, False)  # tiny.py freezes the ViT
  cfg.lora.enabled, cfg.dpo.enabled = True, True
  setup = TrainSetup.build(cfg, sharding.make_mesh(cfg.mesh))
  training = flops.Training.of(setup)
  assert (training.vision, training.resampler, training.lm) == (
      flops.FROZEN, flops.FROZEN, flops.ADAPTERS)
  assert training.dpo and training.reference_shares_vision
  want = count.report(setup.model_cfg, cfg.lora.targets, cfg.lora.rank)["adapter_params"]
  assert training.lm_adapter_params == want > 0
