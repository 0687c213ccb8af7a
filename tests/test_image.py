"""Tests for bliperax.data.image: pinpoints, anyres crops, regrouping."""
import json

import numpy as np
import pytest
from PIL import Image

from bliperax.data import image as image_lib
from bliperax.data import pixels

BASE = 384


def _golden(golden_dir):
  """(meta dict, expected arrays, base size, patch size) of the fixture."""
  meta = json.loads((golden_dir / "meta.json").read_text())
  config = json.loads((golden_dir / "config.json").read_text())
  vision = config["vision_encoder_config"]
  expected = np.load(golden_dir / "expected.npz")
  return meta, expected, vision["image_size"], vision["patch_size"]


def _golden_images(meta):
  """(sample index, image index, file name) in the fixture's crop order."""
  return [(s, i, name)
          for s, sample in enumerate(meta["samples"])
          for i, name in enumerate(sample["images"])]


def _gradient(width, height):
  """uint8[height, width, 3] test pattern with distinct rows and columns."""
  y, x = np.mgrid[:height, :width]
  return np.stack([x * 7 % 256, y * 5 % 256, (x + y) * 3 % 256],
                  axis=-1).astype(np.uint8)


# ----------------------------------------------------------------- pinpoints


def test_pinpoints_are_width_height():
  assert image_lib.pinpoints(BASE) == [
      (384, 768), (768, 384), (768, 768), (1152, 384), (384, 1152)]


@pytest.mark.parametrize("size, expected", [
    ((1000, 1000), (768, 768)),   # square and large: 2×2 keeps the most
    ((1000, 300), (1152, 384)),   # wide
    ((300, 1000), (384, 1152)),   # tall
    # eff ties at W·H = 149000 for (768,384), (768,768) and (1152,384); the
    # least waste wins, so 1 row here although the 56 px fixture picks 2×2.
    ((500, 298), (768, 384)),
    # Everything upscales: all eff = W·H; (384,768) and (768,384) tie fully
    # and the first in list order wins.
    ((100, 100), (384, 768)),
])
def test_select_pinpoint(size, expected):
  assert image_lib.select_pinpoint(size, image_lib.pinpoints(BASE)) == expected


def test_select_pinpoint_tie_needs_strictly_smaller_waste():
  # Same eff for both; the later one wins only because its waste is smaller.
  assert image_lib.select_pinpoint((100, 100), [(768, 768), (384, 768)]) == (
      384, 768)
  # Identical candidates: the first stays.
  assert image_lib.select_pinpoint((100, 100), [(384, 768), (768, 384)]) == (
      384, 768)


def test_select_pinpoint_prefers_effective_resolution_over_waste():
  # (384, 1152) fits a 1:3 image exactly (eff 442368, waste 0); (768, 768)
  # keeps only 256·768 = 196608 of its pixels.
  assert image_lib.select_pinpoint((600, 1800), image_lib.pinpoints(BASE)) == (
      384, 1152)


# ------------------------------------------------------------ golden pixels


def test_golden_pixels(golden_dir, shared_dir):
  meta, expected, base, _ = _golden(golden_dir)
  for s, i, name in _golden_images(meta):
    image = image_lib.load_image(shared_dir / "images" / name)
    assert list(image.size) == meta["samples"][s]["image_sizes"][i]
    out = image_lib.anyres_crops(image, base, meta["anyres_grids"])
    want = expected[f"pixels_s{s}_i{i}"].transpose(0, 2, 3, 1)
    assert out.crops.dtype == np.uint8  # pixels; the model normalises them on the device
    assert out.crops.shape == want.shape, name
    # Same PIL bicubic resizes on uint8, then the table of ToTensor+Normalize's float32
    # results: bit for bit the reference's pixels.
    got = pixels.normalize(out.crops)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32), err_msg=name)


def test_golden_grids(golden_dir, shared_dir):
  meta, _, base, _ = _golden(golden_dir)
  grids = [image_lib.anyres_crops(
      image_lib.load_image(shared_dir / "images" / name), base).grid
           for _, _, name in _golden_images(meta)]
  assert grids == [(2, 2), (2, 2), (3, 1)]  # as the fixture's README states


def test_base_crop_is_the_global_image(golden_dir, shared_dir):
  meta, expected, base, _ = _golden(golden_dir)
  name = meta["samples"][0]["images"][0]
  image = image_lib.load_image(shared_dir / "images" / name)
  out = image_lib.base_crop(image, base)
  assert out.shape == (1, base, base, 3)
  np.testing.assert_array_equal(
      out, image_lib.anyres_crops(image, base).crops[:1])
  np.testing.assert_array_equal(
      pixels.normalize(out[0]), expected["pixels_s0_i0"][0].transpose(1, 2, 0))


# -------------------------------------------------------- golden regrouping


def test_golden_regrouping(golden_dir, shared_dir):
  meta, expected, base, patch = _golden(golden_dir)
  feats = expected["vit_features"]            # [ΣCrops, P, D]
  tokens = feats.shape[1]
  assert tokens == (base // patch) ** 2
  indices, valids, first = [], [], 0
  for s, i, name in _golden_images(meta):
    size = tuple(meta["samples"][s]["image_sizes"][i])
    grid = image_lib.select_grid(size, base, meta["anyres_grids"])
    index, valid = image_lib.regroup(size, grid, base, patch)
    assert index.dtype == np.int32 and valid.dtype == bool
    # Indices address one image's crops; shift them to this image's crops.
    indices.append(index + first * tokens)
    valids.append(valid)
    first += 1 + grid[0] * grid[1]
  assert first == feats.shape[0]
  gathered = feats.reshape(-1, feats.shape[-1])[np.concatenate(indices)]
  np.testing.assert_array_equal(gathered, expected["resampler_inputs"])
  # The fixture stores the key mask as float32 with 1 = attend, 0 = masked.
  np.testing.assert_array_equal(
      np.concatenate(valids).astype(np.float32), expected["resampler_masks"])


# ----------------------------------------------------- shapes for each grid


@pytest.mark.parametrize("size, grid", [
    ((100, 200), (1, 2)),
    ((200, 100), (2, 1)),
    ((200, 200), (2, 2)),
    ((300, 100), (3, 1)),
    ((100, 300), (1, 3)),
])
def test_shapes_for_every_grid(size, grid):
  base, patch = 56, 14
  tokens = (base // patch) ** 2
  out = image_lib.anyres_crops(Image.fromarray(_gradient(*size)), base)
  num_crops = 1 + grid[0] * grid[1]
  assert out.grid == grid
  assert out.image_size == size
  assert out.num_crops == num_crops
  assert out.crops.shape == (num_crops, base, base, 3)
  assert out.crops.dtype == np.uint8
  index, valid = image_lib.regroup(size, grid, base, patch)
  assert index.shape == valid.shape == (num_crops, tokens)
  # A permutation of all tokens of this image; the global group is identity.
  np.testing.assert_array_equal(
      np.sort(index.ravel()), np.arange(num_crops * tokens))
  np.testing.assert_array_equal(index[0], np.arange(tokens))
  assert valid[0].all()


def test_single_column_groups_are_true_crops_with_masked_columns():
  # 60×300 picks 1×3; the map is [12, 4] with g = 4 and the image is
  # narrower than 1:3, so (4 − int(60·12/300)) // 2 = 1 column each side is
  # masked. With nW = 1 every run of g² entries is exactly one crop.
  base, patch, tokens = 56, 14, 16
  grid = image_lib.select_grid((60, 300), base)
  assert grid == (1, 3)
  index, valid = image_lib.regroup((60, 300), grid, base, patch)
  np.testing.assert_array_equal(
      index, np.arange(4 * tokens).reshape(4, tokens))
  row = np.array([False, True, True, False])
  np.testing.assert_array_equal(valid[1:], np.tile(row, (3, 4)))


def test_wide_groups_are_horizontal_strips():
  # 2×1 grid, g = 4: the map is [4, 8]; group 0 of the grid is map rows 0–1,
  # i.e. the top halves of both crops, not the left crop.
  index, _ = image_lib.regroup((200, 100), (2, 1), 56, 14)
  left = 16 + np.arange(16).reshape(4, 4)   # crop 1 (after the global image)
  right = 32 + np.arange(16).reshape(4, 4)  # crop 2
  want = np.concatenate([left[:2], right[:2]], axis=1).ravel()
  np.testing.assert_array_equal(index[1], want)


def test_single_group():
  index, valid = image_lib.single_group(16, num_crops=2)
  np.testing.assert_array_equal(index, np.arange(32).reshape(2, 16))
  assert index.dtype == np.int32 and valid.shape == (2, 16) and valid.all()


# ------------------------------------------------------------ colour modes


def test_rgba_drops_alpha():
  rgb = _gradient(120, 70)
  alpha = np.zeros((70, 120, 1), np.uint8)  # fully transparent: must not matter
  rgba = Image.fromarray(np.concatenate([rgb, alpha], axis=-1), "RGBA")
  out = image_lib.anyres_crops(rgba, 56)
  want = image_lib.anyres_crops(Image.fromarray(rgb), 56)
  assert out.crops.shape[-1] == 3
  np.testing.assert_array_equal(out.crops, want.crops)


def test_grayscale_becomes_three_equal_channels():
  gray = Image.fromarray(_gradient(90, 150)[..., 0], "L")
  out = image_lib.anyres_crops(gray, 56)
  assert out.crops.shape[-1] == 3
  np.testing.assert_array_equal(out.crops[..., 0], out.crops[..., 1])
  np.testing.assert_array_equal(out.crops[..., 0], out.crops[..., 2])
  assert image_lib.base_crop(gray, 56).shape == (1, 56, 56, 3)


def test_load_image_converts_to_rgb(tmp_path):
  path = tmp_path / "rgba.png"
  Image.fromarray(np.zeros((5, 7, 4), np.uint8), "RGBA").save(path)
  image = image_lib.load_image(path)
  assert image.mode == "RGB" and image.size == (7, 5)


# ------------------------------------------------------------------ errors


def test_undecodable_file_names_the_path(tmp_path):
  path = tmp_path / "not_an_image.jpg"
  path.write_bytes(b"this is not a jpeg")
  with pytest.raises(ValueError, match="not_an_image.jpg"):
    image_lib.load_image(path)


def test_truncated_file_names_the_path(tmp_path, shared_dir):
  data = (shared_dir / "images" / "COCO_val2014_000000486568.jpg").read_bytes()
  path = tmp_path / "truncated.jpg"
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match="truncated.jpg"):
    image_lib.load_image(path)


def test_missing_file_is_file_not_found(tmp_path):
  with pytest.raises(FileNotFoundError):
    image_lib.load_image(tmp_path / "missing.png")
