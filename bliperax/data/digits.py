"""A vision-dependent toy dataset from scikit-learn's bundled handwritten digits.

`sklearn.datasets.load_digits` ships 1797 grey 8×8 digits (values 0–16) inside
the package, so nothing is downloaded. The digits are split once (fixed seed)
into train and held-out images; every sample of a split uses only that split's
images, so held-out accuracy measures generalisation to unseen handwriting.

Tasks (shard sets, one folder each):

* `caption` (train only, pre-training): "A handwritten digit seven."
* `vqa`: "What digit is this?" -> "7".
* `sum`: two or three images, "What is the sum of these digits?" -> "12".
* `read`: one wide image of 3–4 digits side by side, "Read the number." -> "4071".
  The image is `n·S × S` (S = `DIGIT_PX`); anyres cuts it into n crops of
  one digit each, while the squashed base crop keeps S/n pixels of width per
  digit (4 at n = 4), too few to tell many digits apart reliably.

Layout written by `write_dataset(out)`:
  out/train/{caption,vqa,sum,read}/*.array_record
  out/heldout/{vqa,sum,read}/*.array_record
  out/digits.json   (sizes, seed, split sizes)
"""
from __future__ import annotations

import dataclasses
import io
import json
import pathlib
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from bliperax.data import records

DIGIT_PX = 16  # one digit's side in pixels (the digits model's crop size)
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TASKS = ("vqa", "sum", "read")
QUESTIONS = {
    "vqa": "What digit is this?",
    "sum": "What is the sum of these digits?",
    "read": "Read the number.",
}
HELDOUT_FRACTION = 0.2


@dataclasses.dataclass(frozen=True)
class Split:
  """Digit images of one split: uint8[n, 8, 8] (0–16 scaled to 0–255) and labels."""
  images: np.ndarray
  labels: np.ndarray


def load_splits(seed: int = 0) -> tuple[Split, Split]:
  """(train, held-out): a fixed random 80/20 split of the bundled digits."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  order = np.random.default_rng(seed).permutation(len(pixels))
  n_held = int(round(len(pixels) * HELDOUT_FRACTION))
  held, train = order[:n_held], order[n_held:]
  return (Split(pixels[train], digits.target[train]),
          Split(pixels[held], digits.target[held]))


def digit_image(pixels: np.ndarray, size: int = DIGIT_PX) -> Image.Image:
  """An 8×8 grey digit as a size×size RGB image (white ink on black, bilinear)."""
  grey = Image.fromarray(pixels, mode="L").resize((size, size), Image.Resampling.BILINEAR)
  return grey.convert("RGB")


def row_image(digits: Sequence[np.ndarray], size: int = DIGIT_PX) -> Image.Image:
  """Digits side by side: one (len·size) × size image."""
  tiles = [np.asarray(digit_image(d, size)) for d in digits]
  return Image.fromarray(np.concatenate(tiles, axis=1))


def png(image: Image.Image) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, "PNG")
  return buffer.getvalue()


def caption_samples(split: Split) -> Iterator[records.Caption]:
  for i, (pixels, label) in enumerate(zip(split.images, split.labels)):
    yield records.Caption(image=png(digit_image(pixels)),
                          text=f"A handwritten digit {NAMES[label]}.", id=f"caption-{i}")


def _chat(task: str, images: Sequence[bytes], answer: str, sid: str) -> records.Chat:
  # SFT convention (SPEC.md §4): one `<image>\n` per image at the start of the turn.
  question = "<image>\n" * len(images) + QUESTIONS[task]
  return records.Chat(turns=(question, answer), images=tuple(images), id=sid)


def vqa_samples(split: Split) -> Iterator[records.Chat]:
  for i, (pixels, label) in enumerate(zip(split.images, split.labels)):
    yield _chat("vqa", [png(digit_image(pixels))], str(int(label)), f"vqa-{i}")


def sum_samples(split: Split, num: int, seed: int) -> Iterator[records.Chat]:
  """`num` samples of 2–3 random images of the split and their sum."""
  rng = np.random.default_rng(seed)
  for i in range(num):
    pick = rng.choice(len(split.labels), size=int(rng.integers(2, 4)), replace=False)
    images = [png(digit_image(split.images[j])) for j in pick]
    yield _chat("sum", images, str(int(split.labels[pick].sum())), f"sum-{i}")


def read_samples(split: Split, num: int, seed: int) -> Iterator[records.Chat]:
  """`num` wide images of 3–4 random digits of the split, read left to right."""
  rng = np.random.default_rng(seed)
  for i in range(num):
    pick = rng.choice(len(split.labels), size=int(rng.integers(3, 5)), replace=False)
    image = png(row_image([split.images[j] for j in pick]))
    yield _chat("read", [image], "".join(str(int(split.labels[j])) for j in pick), f"read-{i}")


def _write(folder: pathlib.Path, prefix: str, samples, num_shards: int) -> int:
  count = 0
  with records.ShardSetWriter(folder, prefix, num_shards, overwrite=True) as writer:
    for sample in samples:
      writer.write(records.encode(sample))
      count += 1
    writer.commit()
  return count


def write_dataset(out: str | pathlib.Path, num_sum: int = 6000, num_read: int = 6000,
                  num_heldout: int = 200, seed: int = 0, num_shards: int = 2) -> dict:
  """Writes every shard set (module docstring); returns the summary it saves."""
  out = pathlib.Path(out)
  train, held = load_splits(seed)
  counts = {"train": {}, "heldout": {}}
  train_sets = {
      "caption": caption_samples(train),
      "vqa": vqa_samples(train),
      "sum": sum_samples(train, num_sum, seed + 1),
      "read": read_samples(train, num_read, seed + 2),
  }
  held_sets = {
      "vqa": vqa_samples(held),
      "sum": sum_samples(held, num_heldout, seed + 3),
      "read": read_samples(held, num_heldout, seed + 4),
  }
  for split_name, sets in (("train", train_sets), ("heldout", held_sets)):
    for task, samples in sets.items():
      counts[split_name][task] = _write(out / split_name / task, task, samples, num_shards)
  summary = {"seed": seed, "digit_px": DIGIT_PX, "train_images": len(train.labels),
             "heldout_images": len(held.labels), "samples": counts}
  (out / "digits.json").write_text(json.dumps(summary, indent=1))
  return summary
