"""Anyres image preprocessing and the reference's feature regrouping (bliperax/DESIGN.md §3).

Everything here runs on the host with numpy and PIL, so that the pixels match
the PyTorch reference (salesforce/LAVIS, branch xgen-mm, open_flamingo/) bit for
bit and the model only ever sees static shapes plus precomputed gather indices.

Pipeline for one image of size (W, H) and base size `base` (384 for SigLIP):
  1. `select_pinpoint` picks a canvas (w, h) = base × grid among the pinpoints.
  2. The image is resized to fit the canvas (bicubic), pasted centred on black,
     and cut into base×base crops row-major; the image squashed to base×base
     goes first. Crops stay uint8 pixels (every resize is PIL's, on uint8, as in
     the reference's processor); `pixels.normalize` maps them to float32 in
     [-1, 1], on the device inside the jitted step.
  3. `regroup` gives the gather indices and key masks that turn the per-crop ViT
     features into the groups the reference feeds to the Perceiver resampler.
"""
import dataclasses
import io
import math
import os
from typing import Sequence, Tuple

import numpy as np
from PIL import Image

# Grids as (columns nW, rows nH); the reference has no 1×1 option.
DEFAULT_GRIDS = ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))

# PIL's default `resize` filter for RGB images (Pillow >= 7), which the
# reference relies on implicitly; spelt out so a Pillow default change is moot.
_RESAMPLE = Image.Resampling.BICUBIC

Size = Tuple[int, int]


@dataclasses.dataclass(frozen=True, eq=False)
class AnyresImage:
  """One image cut into anyres crops.

  Attributes:
    crops: uint8[1+Np, base, base, 3] pixels, channels-last (`pixels.normalize`
      gives the model's float32 values). Crop 0 is the whole image squashed to
      base×base; then the Np = nW·nH grid crops, row-major.
    grid: (nW, nH), the chosen grid of crops (columns, rows).
    image_size: (W, H) of the original image; the regrouping mask needs it.
  """
  crops: np.ndarray
  grid: Size
  image_size: Size

  @property
  def num_crops(self) -> int:
    """1 + nW·nH: the global image plus the grid crops."""
    return int(self.crops.shape[0])


def load_image(path: str | os.PathLike) -> Image.Image:
  """Opens and fully decodes an image, converted to RGB like the reference.

  Args:
    path: image file.

  Returns:
    An RGB PIL image (RGBA drops its alpha, grayscale is replicated).

  Raises:
    FileNotFoundError: the file does not exist.
    ValueError: the file exists but is not a decodable image; names the path.
  """
  try:
    with Image.open(path) as image:
      # convert() forces the full decode here, so a truncated file fails now
      # and not later inside a data loader worker.
      return image.convert("RGB")
  except FileNotFoundError:
    raise
  except (OSError, SyntaxError, ValueError, EOFError) as e:
    raise ValueError(
        f"cannot decode image file {os.fspath(path)!r}: {e}") from e


def decode_image(data: bytes) -> Image.Image:
  """Encoded bytes -> RGB PIL image, fully decoded (a truncated file fails here).

  Raises:
    ValueError: the bytes are not a decodable image.
  """
  try:
    with Image.open(io.BytesIO(data)) as image:
      return image.convert("RGB")
  except Exception as e:  # PIL raises many types (OSError, SyntaxError, ...) on bad bytes.
    raise ValueError(f"undecodable image ({len(data)} bytes): {type(e).__name__}: {e}") from e


def pinpoints(base: int, grids: Sequence[Size] = DEFAULT_GRIDS) -> list[Size]:
  """Canvas sizes (width, height) = (base·nW, base·nH), in grid order."""
  return [(base * n_w, base * n_h) for n_w, n_h in grids]


def select_pinpoint(image_size: Size, candidates: Sequence[Size]) -> Size:
  """Picks the canvas that keeps the most resolution (bliperax/DESIGN.md §3).

  For each (w, h): s = min(w/W, h/H), eff = min(int(W·s)·int(H·s), W·H),
  waste = w·h − eff. The largest eff wins; ties go to strictly smaller waste,
  so the first of fully tied candidates wins.

  Args:
    image_size: (W, H) of the original image.
    candidates: pinpoints (w, h), e.g. from `pinpoints`.

  Returns:
    The chosen (w, h).
  """
  width, height = image_size
  if not candidates:
    raise ValueError("no pinpoints to choose from")
  best = None
  best_eff, best_waste = 0, math.inf
  for w, h in candidates:
    scale = min(w / width, h / height)
    eff = min(int(width * scale) * int(height * scale), width * height)
    waste = w * h - eff
    # Starting from eff 0 and waste inf (as the reference does) means even a
    # list where every eff is 0 picks its first entry rather than nothing.
    if eff > best_eff or (eff == best_eff and waste < best_waste):
      best, best_eff, best_waste = (w, h), eff, waste
  return best


def select_grid(image_size: Size, base: int,
                grids: Sequence[Size] = DEFAULT_GRIDS) -> Size:
  """The grid (nW, nH) whose pinpoint `select_pinpoint` chooses."""
  w, h = select_pinpoint(image_size, pinpoints(base, grids))
  return w // base, h // base


def _to_rgb(image: Image.Image) -> Image.Image:
  # The reference converts right after opening, before any resize; resizing
  # RGBA would premultiply alpha and change the colours.
  return image if image.mode == "RGB" else image.convert("RGB")


def _squash(image: Image.Image, base: int) -> np.ndarray:
  """uint8[base, base, 3]: the RGB image resized to base×base, any aspect."""
  return np.asarray(image.resize((base, base), _RESAMPLE))


def _fit_size(image_size: Size, canvas: Size) -> Size:
  """(nw, nh) of the image resized to fit inside the canvas, aspect kept.

  The long side (relative to the canvas) fills the canvas; the other is
  rounded up, capped at the canvas.
  """
  width, height = image_size
  w, h = canvas
  scale_w, scale_h = w / width, h / height
  if scale_w < scale_h:
    return w, min(math.ceil(height * scale_w), h)
  return min(math.ceil(width * scale_h), w), h


def _pad_to_canvas(image: Image.Image, canvas: Size) -> np.ndarray:
  """uint8[h, w, 3]: resized to fit, pasted centred on a black (w, h) canvas."""
  w, h = canvas
  new_w, new_h = _fit_size(image.size, canvas)
  resized = np.asarray(image.resize((new_w, new_h), _RESAMPLE))
  out = np.zeros((h, w, 3), np.uint8)
  top, left = (h - new_h) // 2, (w - new_w) // 2
  out[top:top + new_h, left:left + new_w] = resized
  return out


def _cut(canvas: np.ndarray, base: int) -> np.ndarray:
  """uint8[h, w, 3] -> uint8[nH·nW, base, base, 3], crops row-major."""
  h, w, c = canvas.shape
  n_h, n_w = h // base, w // base
  tiles = canvas.reshape(n_h, base, n_w, base, c).transpose(0, 2, 1, 3, 4)
  return tiles.reshape(n_h * n_w, base, base, c)


def base_crop(image: Image.Image, base: int) -> np.ndarray:
  """uint8[1, base, base, 3]: only the squashed global image (no anyres)."""
  return _squash(_to_rgb(image), base)[None]


def anyres_crops(image: Image.Image, base: int,
                 grids: Sequence[Size] = DEFAULT_GRIDS) -> AnyresImage:
  """Cuts an image into the reference's anyres crops (bliperax/DESIGN.md §3).

  Args:
    image: any PIL image; converted to RGB first (RGBA drops its alpha).
    base: crop size in pixels (the vision encoder's image size).
    grids: candidate grids (nW, nH).

  Returns:
    An `AnyresImage` with crops uint8[1+nW·nH, base, base, 3].
  """
  image = _to_rgb(image)
  canvas = select_pinpoint(image.size, pinpoints(base, grids))
  tiles = _cut(_pad_to_canvas(image, canvas), base)
  crops = np.concatenate([_squash(image, base)[None], tiles], axis=0)
  return AnyresImage(crops=crops,
                     grid=(canvas[0] // base, canvas[1] // base),
                     image_size=tuple(image.size))


def _stitched_mask(image_size: Size, rows: int, cols: int) -> np.ndarray:
  """bool[rows, cols] key mask of the stitched feature map, True = attend.

  The reference's `unpad_image(..., keep_original_shape=True)`: the bands that
  the letterboxing padded are masked, estimated from the aspect ratio. The
  float expressions keep the reference's order of operations so the int()
  truncation lands on the same side.
  """
  width, height = image_size
  mask = np.ones((rows, cols), bool)
  if width / height > cols / rows:
    pad = (rows - int(height * (cols / width))) // 2
    mask[:pad, :] = False
    mask[rows - pad:, :] = False
  else:
    pad = (cols - int(width * (rows / height))) // 2
    mask[:, :pad] = False
    mask[:, cols - pad:] = False
  return mask


def regroup(image_size: Size, grid: Size, base: int,
            patch: int) -> Tuple[np.ndarray, np.ndarray]:
  """Gather indices and key masks reproducing the reference's regrouping quirk.

  The reference stitches the grid crops' features into one map
  [nH·g, nW·g] (g = base // patch) with every crop in its spatial position,
  masks the letterbox bands, and then re-views that map as nH·nW groups of g²
  *consecutive row-major entries* (horizontal strips when nW > 1, not crops).
  Each group, after the untouched global image, is resampled separately.

  Args:
    image_size: (W, H) of the original image.
    grid: (nW, nH), as in `AnyresImage.grid`.
    base: crop size in pixels.
    patch: ViT patch size in pixels.

  Returns:
    index: int32[1+Np, P], P = g². For one image's ViT features
      feats[1+Np, P, D], `feats.reshape(-1, D)[index]` is the Perceiver input
      [1+Np, P, D]. For several images concatenated along crops, add each
      image's first crop times P.
    valid: bool[1+Np, P], the Perceiver key mask, True = attend. Group 0 (the
      global image) is all True.
  """
  n_w, n_h = grid
  g = base // patch
  tokens = g * g
  rows, cols = n_h * g, n_w * g
  # Source of every stitched-map cell: which crop, and which token inside it.
  r, c = np.divmod(np.arange(rows * cols), cols)
  crop = (r // g) * n_w + (c // g)
  token = (r % g) * g + (c % g)
  # The +1 skips the global image, stored first. The row-major flat order of
  # the map *is* the group order, hence the plain reshape.
  stitched = ((1 + crop) * tokens + token).reshape(n_w * n_h, tokens)
  index = np.concatenate([np.arange(tokens)[None], stitched], axis=0)
  mask = _stitched_mask(image_size, rows, cols).reshape(n_w * n_h, tokens)
  valid = np.concatenate([np.ones((1, tokens), bool), mask], axis=0)
  return index.astype(np.int32), valid


def single_group(tokens: int,
                 num_crops: int = 1) -> Tuple[np.ndarray, np.ndarray]:
  """Identity `regroup` for crops resampled as they are (no anyres).

  Returns:
    index: int32[num_crops, tokens], valid: bool[num_crops, tokens] (all True).
  """
  index = np.arange(num_crops * tokens, dtype=np.int32)
  index = index.reshape(num_crops, tokens)
  return index, np.ones((num_crops, tokens), bool)
