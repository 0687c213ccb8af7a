"""uint8 crops normalised on the device: the same floats, and the same training step, as the
float32 crops the host used to normalise (bliperax/data/pixels.py).

Exactness is the claim for the pixels and the forward (bit for bit, no tolerance): a
pixel has 256 values, each looked up in one table on host and device. The whole
training step is compared to round-off (tests/roundoff.py): with the lookup inside it,
it is another XLA program, whose backward XLA may fuse and order differently.
"""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import roundoff

from bliperax.convert import layout
from bliperax.convert import params_io
from bliperax.data import batch as batch_lib
from bliperax.data import batch_spec
from bliperax.data import image as image_lib
from bliperax.data import pixels
from bliperax.data import tokenizer as tokenizer_lib
from bliperax.infer import golden_inputs
from bliperax.models import presets
from bliperax.models.xgenmm import XGenMM, abstract_params
from bliperax.train import losses
from bliperax.train.step import TrainState, train_step

ALL_PIXELS = np.arange(256, dtype=np.uint8)


def _torchvision_float32(pixels_u8: np.ndarray) -> np.ndarray:
  """What the host computed before crops became uint8: ToTensor, Normalize(0.5, 0.5)."""
  x = pixels_u8.astype(np.float32) / np.float32(255)
  return (x - np.float32(0.5)) / np.float32(0.5)


def _bits(x) -> np.ndarray:
  return np.asarray(x, np.float32).view(np.uint32)


def test_host_table_is_torchvisions_float32_arithmetic_for_every_pixel():
  got = pixels.normalize(ALL_PIXELS)
  assert got.dtype == np.float32
  np.testing.assert_array_equal(_bits(got), _bits(_torchvision_float32(ALL_PIXELS)))
  assert got[0] == -1.0 and got[255] == 1.0


def test_device_normalize_equals_the_host_for_every_pixel():
  """Jitted (as inside the step) on whatever backend runs the tests."""
  got = jax.jit(pixels.normalize)(jnp.asarray(ALL_PIXELS.reshape(16, 16)))
  assert got.dtype == jnp.float32
  np.testing.assert_array_equal(_bits(got).ravel(), _bits(pixels.normalize(ALL_PIXELS)))


def test_normalize_refuses_crops_that_are_not_pixels():
  with pytest.raises(TypeError, match="uint8"):
    pixels.normalize(np.zeros((2, 2), np.float32))


def test_mixed_pixel_and_float_crops_collate_as_normalised_floats():
  """A float image (e.g. a noised one) beside a pixel image: the batch is float32 and the
  pixel image's crops are the table's values, never raw 0..255."""
  cfg = presets.tiny()
  dims = batch_spec.VisionDims.of(cfg)
  s = cfg.vision.image_size
  index, mask = image_lib.single_group(cfg.vision.num_patches)
  u8 = np.random.default_rng(0).integers(0, 256, (1, s, s, 3), dtype=np.uint8)
  f32 = np.full((1, s, s, 3), 0.25, np.float32)
  ids = [1, batch_lib.IMAGE_ID, 2, 3]
  examples = [batch_lib.expand(ids, None, [batch_lib.VisionInput(c, index, mask)], dims)
              for c in (u8, f32)]
  pixel_only = batch_lib.collate(examples[:1], cfg, 32011, num_crops=2)
  assert pixel_only["crops"].dtype == np.uint8
  mixed = batch_lib.collate(examples, cfg, 32011, num_crops=2)
  assert mixed["crops"].dtype == np.float32
  np.testing.assert_array_equal(mixed["crops"][0, 0], pixels.normalize(u8[0]))
  np.testing.assert_array_equal(mixed["crops"][1, 0], f32[0])
  assert (mixed["crops"][:, 1] == -1.0).all()  # padding: the normalised zero pixel


def _golden_batch(golden_dir, shared_dir, cfg):
  """The golden fixture's training batch (both samples, expanded), crops uint8."""
  meta = json.loads((golden_dir / "meta.json").read_text())
  tok = tokenizer_lib.Tokenizer.reference()
  examples = []
  for sample in meta["samples"]:
    ids, labels = golden_inputs.golden_sample_ids(sample, tok, meta["system_prompt"])
    images = [batch_lib.prepare_image(image_lib.load_image(shared_dir / "images" / name),
                                      cfg) for name in sample["images"]]
    examples.append(batch_lib.expand(ids, labels, images, batch_spec.VisionDims.of(cfg)))
  return batch_lib.collate(examples, cfg, tok.pad_id, length=meta["expanded_length"])


@pytest.fixture
def golden_batches(golden_dir, shared_dir):
  """(model config, random params, the golden batch with uint8 crops, the same batch with
  the float32 crops the host made before: torchvision's ops, zeros in padding crops)."""
  cfg = presets.tiny()  # the fixture's shapes
  uint8_batch = _golden_batch(golden_dir, shared_dir, cfg)
  assert uint8_batch["crops"].dtype == np.uint8
  valid = uint8_batch["crop_valid"]
  assert valid.sum() == 14 and not valid.all()  # 5 + 9 crops: row 0 has padding crops
  old_crops = np.zeros(uint8_batch["crops"].shape, np.float32)
  old_crops[valid] = _torchvision_float32(uint8_batch["crops"][valid])
  keys = batch_spec.TRAIN_KEYS
  # Random weights drawn in numpy (no jitted init to compile); wider than an init's so
  # the image visibly moves the loss.
  rng = np.random.default_rng(0)
  flat = layout.flatten(params_io.flax_unbox(abstract_params(cfg)))
  params = layout.unflatten({k: (0.2 * rng.standard_normal(v.shape)).astype(v.dtype)
                             for k, v in flat.items()})
  return (cfg, params, {k: uint8_batch[k] for k in keys},
          {k: {**uint8_batch, "crops": old_crops}[k] for k in keys})


def test_training_loss_on_the_golden_batch_is_bit_identical_to_host_float_crops(
    golden_batches):
  """The training step's loss (its forward: features, the head's two parts, the
  decoupled NLL over the loss tokens) on uint8 crops normalised inside the jitted
  function vs. on the float32 crops the host made before: equal bit for bit."""
  cfg, params, uint8_batch, float_batch = golden_batches
  model = XGenMM(cfg)

  @jax.jit
  def loss(batch):
    hidden = model.apply({"params": params}, **batch_spec.model_inputs(batch),
                         method=XGenMM.features)
    base, added = model.apply({"params": params}, hidden[:, :-1], method=XGenMM.logit_parts)
    nll = losses.decoupled_nll(base, added, batch["labels"][:, 1:], cfg.text.base_vocab)
    return jnp.sum(nll) / jnp.sum(batch["labels"][:, 1:] != batch_spec.IGNORE)

  got, want = loss(uint8_batch), loss(float_batch)
  assert np.isfinite(got)
  assert _bits(got) == _bits(want)
  # The crops matter: a one-pixel change moves the loss (the comparison is not vacuous).
  moved = {**uint8_batch, "crops": uint8_batch["crops"].copy()}
  moved["crops"][0, 0, 10, 10] ^= 0x80
  assert loss(moved) != got


@pytest.mark.slow  # two compiles of the whole step (forward, backward, Adam)
def test_training_step_on_the_golden_batch_matches_host_float_crops_to_round_off(
    golden_batches):
  """The whole jitted training step on uint8 crops vs on the host's float32 crops: the
  same loss bit for bit (the forward reads the same floats), and a gradient norm and
  updated parameters within the round-off of a row permutation (tests/roundoff.py).

  Not bit for bit: the two are different XLA programs (one gathers its pixels from
  the table), and XLA may fuse and order the backward's reductions differently in
  each; it did once the projections became 2-D products (1 ulp on the gradient norm).
  """
  cfg, params, uint8_batch, float_batch = golden_batches
  model = XGenMM(cfg)
  tx = optax.apply_if_finite(optax.adam(1e-3), max_consecutive_errors=1)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  trainable = jax.tree.map(lambda _: True, params)
  step = jax.jit(lambda s, b: train_step(s, b, model=model, tx=tx, accum_steps=1,
                                         lr_schedule=lambda _: 1e-3, trainable=trainable))
  permuted_batch = {k: v[::-1] for k, v in float_batch.items()}  # rows swapped
  (new_u8, metrics_u8), (new_f32, metrics_f32), (new_perm, metrics_perm) = (
      jax.device_get(step(state, b)) for b in (uint8_batch, float_batch, permuted_batch))
  assert np.isfinite(metrics_u8["loss"]) and metrics_u8["loss_tokens"] > 0
  assert _bits(metrics_u8["loss"]) == _bits(metrics_f32["loss"])
  roundoff.assert_scalar_close(
      float(metrics_u8["grad_norm"]), float(metrics_f32["grad_norm"]),
      abs(float(metrics_perm["grad_norm"]) - float(metrics_f32["grad_norm"])), "grad_norm")
  flat = lambda p: {jax.tree_util.keystr(k): np.asarray(v, np.float64)
                    for k, v in jax.tree_util.tree_leaves_with_path(p)}
  before, got, single, permuted = (flat(p) for p in (params, new_u8.params, new_f32.params,
                                                      new_perm.params))
  # Adam moves a parameter by ~lr where its gradient is well above eps (1e-8), and by
  # lr·|g|/eps where it is below. Some gradients are zero in exact arithmetic (the
  # ViT's pooling head, which xGen-MM does not use; its key biases, as a softmax does
  # not see a shift shared by all keys), so each run's step there is nothing or
  # round-off noise over eps, which no permutation bounds: those tensors must only
  # stay that small (under lr/100) in the uint8 run too.
  lr = 1e-3
  noise = {k for k in single if np.max(np.abs(single[k] - before[k])) < lr / 100}
  assert noise != set(single)
  for k in noise:
    assert np.max(np.abs(got[k] - before[k])) < lr / 100, k
  kept = lambda d: {k: v for k, v in d.items() if k not in noise}
  roundoff.assert_close(kept(got), kept(single), kept(permuted), kept(single),
                        "parameters after one step")
  # and the step did something the bound would see: the parameters moved far more.
  assert roundoff.max_diff(single, before) > 100 * roundoff.max_diff(permuted, single)
