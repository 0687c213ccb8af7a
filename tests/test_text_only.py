"""Samples without images: batches, packing and the model treat them like any other row.

Real mixtures hold text-only samples (the SFT mixture has text-only chats), and users
prompt without an image. The CLI and evaluation paths are in test_cli_infer.py; the
logit check on a text-only fixture is in test_logit_check_text.py.
"""
import flax.linen as nn
import jax
import numpy as np

from bliperax.data import batch as batch_lib
from bliperax.data import batch_spec
from bliperax.data import image as image_lib
from bliperax.data import packing
from bliperax.models import presets, xgenmm

CFG = presets.get("tiny")
DIMS = batch_spec.VisionDims.of(CFG)
PAD = 32011


def _text_example(n: int, seed: int) -> batch_lib.Example:
  ids = np.random.default_rng(seed).integers(100, 30000, size=n).tolist()
  return batch_lib.expand(ids, ids, [], DIMS)


def _image_example(seed: int) -> batch_lib.Example:
  r = np.random.default_rng(seed)
  s = CFG.vision.image_size
  crops = r.uniform(-1, 1, size=(1, s, s, 3)).astype(np.float32)
  index, mask = image_lib.single_group(DIMS.patches, 1)
  ids = [5, batch_lib.IMAGE_ID] + r.integers(100, 30000, size=6).tolist()
  return batch_lib.expand(ids, None, [batch_lib.VisionInput(crops, index, mask)], DIMS)


def test_text_only_example_has_empty_vision_of_the_right_shapes():
  e = _text_example(7, 0)
  assert e.crops.shape == (0, DIMS.crop_size, DIMS.crop_size, 3)
  assert e.group_index.shape == (0, DIMS.patches)
  assert e.group_mask.shape == (0, DIMS.patches)
  assert e.vision_slots.shape == (0,)
  assert e.tokens.tolist() == e.labels.tolist() and len(e.tokens) == 7


def test_collate_text_only_alone_and_mixed_with_images():
  alone = batch_lib.collate([_text_example(7, 0)], CFG, PAD)
  assert not alone["crop_valid"].any() and not alone["group_valid"].any()
  assert (alone["vision_slots"] == 7).all()  # every slot out of range: dropped
  for side in ("right", "left"):
    mixed = batch_lib.collate([_text_example(9, 1), _image_example(2)], CFG, PAD, side=side)
    assert mixed["crop_valid"].tolist() == [[False], [True]]
    assert mixed["group_valid"].tolist() == [[False], [True]]
    t = mixed["tokens"].shape[1]
    assert (mixed["vision_slots"][0] == t).all()
    assert (mixed["tokens"][1][mixed["vision_slots"][1]] == batch_lib.IMAGE_ID).all()


def test_packing_a_text_only_sample_beside_an_image_sample():
  limits = batch_spec.Limits(length=64, crops=2, groups=2)
  row = packing.Row(limits, DIMS)
  row.add(_image_example(3))
  row.add(_text_example(5, 4))
  out = row.arrays(PAD)
  assert out["segment_ids"].max() == 2
  assert out["crop_valid"].tolist() == [True, False]


def test_text_row_logits_ignore_the_vision_inputs():
  """A text-only row's logits in a mixed batch equal the text-only forward's, bit for bit.

  Same compiled shapes for that row either way: the vision path may only write into
  the image row's slots, never into the text row.
  """
  params = jax.device_get(nn.meta.unbox(xgenmm.init_params(CFG, jax.random.PRNGKey(0))))
  batch = batch_lib.collate([_text_example(12, 5), _image_example(6)], CFG, PAD)
  inputs = batch_spec.model_inputs(batch)
  model = xgenmm.XGenMM(CFG)
  with_vision = np.asarray(model.apply({"params": params}, **inputs))
  text_only = np.asarray(model.apply({"params": params}, inputs["tokens"],
                                     inputs["positions"], inputs["segment_ids"]))
  np.testing.assert_array_equal(with_vision[0], text_only[0])
  # ... and the image row did get its vision tokens (the comparison can fail).
  assert np.abs(with_vision[1] - text_only[1]).max() > 1e-3
