"""A vision-dependent toy dataset from scikit-learn's bundled handwritten digits.

`sklearn.datasets.load_digits` ships 1797 grey 8×8 digits (values 0–16) inside
the package, so nothing is downloaded. The digits are split once (fixed seed)
into train and held-out images; every sample of a split uses only that split's
images, so held-out accuracy measures generalisation to unseen handwriting.

Tasks (shard sets, one folder each):

* `caption` (train only, pre-training): "A handwritten digit seven." and other
  wordings (`CAPTIONS`, one drawn per sample): the digit's name or numeral sits at
  varying distances from the image, so the model learns to find the image by what
  it holds rather than by a fixed offset, which the chat tasks need (after 400
  fine-tuning steps: held-out sum 61% vs 37% with the single wording, 100
  questions each). Each training digit appears once as is and `caption_copies`
  more times slightly moved, turned and scaled (`jitter`), which lifts held-out
  recognition (scikit-learn's MLPClassifier(64) on these images, mean of 3 seeds:
  98.4% -> 98.9%).
* `vqa`: "What digit is this?" -> "7".
* `sum`: two or three images, "What is the sum of these digits?" -> "12".
* `read`: one wide image of 3–4 digits side by side, "Read the number." -> "4071".
  The image is `n·S × S` (S = `DIGIT_PX`); anyres cuts it into n crops of
  one digit each, while the squashed base crop keeps S/n pixels of width per
  digit (4 at n = 4), too few to tell many digits apart reliably.

* `sum_moved` (train only; the SFT does not read it): sums like `sum` whose digits
  are each slightly moved, turned and scaled (`jitter`). The digits DPO
  (experiments/digits/dpo.py) takes its prompts from here: the SFT model answers
  ~23% of them wrong greedily (695 of 3,000 in one draw), mostly by misreading a
  digit, as on unseen handwriting, where the plain training sums give it few
  mistakes to learn from.

Layout written by `write_dataset(out)`:
  out/train/{caption,vqa,sum,read,sum_moved}/*.array_record
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
from bliperax.data import schema

DIGIT_PX = 16  # one digit's side in pixels (the digits model's crop size)
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TASKS = ("vqa", "sum", "read")
QUESTIONS = {
    "vqa": "What digit is this?",
    "sum": "What is the sum of these digits?",
    "read": "Read the number.",
}
HELDOUT_FRACTION = 0.2
# Each shard set draws from its own generator, seeded with `write_dataset`'s seed plus
# this offset, so that a set's draws can be replayed from digits.json alone
# (`sum_digits`, for tools/digits_errors.py).
SEED_OFFSETS = {"train/sum": 1, "train/read": 2, "heldout/sum": 3, "heldout/read": 4,
                "train/caption": 5, "train/sum_moved": 6}
# Caption wordings; {name} is "seven", {digit} is "7".
CAPTIONS = (
    "A handwritten digit {name}.",
    "The number {digit}.",
    "A handwritten {name} ({digit}).",
    "{digit}",
    "Digit: {digit}, {name}.",
)


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


def digit_image(pixels: np.ndarray, size: int = DIGIT_PX,
                rng: np.random.Generator | None = None) -> Image.Image:
  """An 8×8 grey digit as a size×size RGB image (white ink on black, bilinear).

  With `rng`, the digit is also jittered: shifted up to 1/16 of the side, turned up
  to 10° and scaled by 0.9–1.1 about the centre (training augmentation).
  """
  grey = Image.fromarray(pixels, mode="L").resize((size, size), Image.Resampling.BILINEAR)
  if rng is not None:
    grey = jitter(grey, rng)
  return grey.convert("RGB")


def jitter(image: Image.Image, rng: np.random.Generator) -> Image.Image:
  """A random small similarity transform of `image` (same size, black fill)."""
  w, h = image.size
  angle = np.deg2rad(rng.uniform(-10.0, 10.0))
  scale = rng.uniform(0.9, 1.1)
  dx, dy = rng.uniform(-1.0, 1.0, size=2) * (w / 16.0)
  # PIL maps each output pixel back to an input pixel: the inverse transform.
  cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
  cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
  coeffs = (cos, sin, cx - cos * cx - sin * cy - dx,
            -sin, cos, cy + sin * cx - cos * cy - dy)
  return image.transform((w, h), Image.Transform.AFFINE, coeffs,
                         resample=Image.Resampling.BILINEAR)


def row_image(digits: Sequence[np.ndarray], size: int = DIGIT_PX) -> Image.Image:
  """Digits side by side: one (len·size) × size image."""
  tiles = [np.asarray(digit_image(d, size)) for d in digits]
  return Image.fromarray(np.concatenate(tiles, axis=1))


def png(image: Image.Image) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, "PNG")
  return buffer.getvalue()


def caption_samples(split: Split, copies: int = 0, seed: int = 0
                    ) -> Iterator[schema.Caption]:
  """Every digit once as is, then `copies` jittered passes over the split."""
  rng = np.random.default_rng(seed)
  for copy in range(copies + 1):
    for i, (pixels, label) in enumerate(zip(split.images, split.labels)):
      image = digit_image(pixels, rng=rng if copy else None)
      template = CAPTIONS[int(rng.integers(len(CAPTIONS)))]
      yield schema.Caption(image=png(image),
                           text=template.format(name=NAMES[label], digit=int(label)),
                           id=f"caption-{i}" + (f"-j{copy}" if copy else ""))


def _chat(task: str, images: Sequence[bytes], answer: str, sid: str) -> schema.Chat:
  # SFT convention (bliperax/DESIGN.md §5): one `<image>\n` per image at the start of the turn.
  question = "<image>\n" * len(images) + QUESTIONS[task]
  return schema.Chat(turns=(question, answer), images=tuple(images), id=sid)


def vqa_samples(split: Split) -> Iterator[schema.Chat]:
  for i, (pixels, label) in enumerate(zip(split.images, split.labels)):
    yield _chat("vqa", [png(digit_image(pixels))], str(int(label)), f"vqa-{i}")


def _sum_pick(rng: np.random.Generator, split: Split) -> np.ndarray:
  """Indices of a sum's 2–3 distinct digits: int[n]."""
  return rng.choice(len(split.labels), size=int(rng.integers(2, 4)), replace=False)


def sum_samples(split: Split, num: int, seed: int, jittered: bool = False
                ) -> Iterator[schema.Chat]:
  """`num` samples of 2–3 random images of the split and their sum; `jittered`: each
  digit moved, turned and scaled (`jitter`), ids `sum-moved-<i>`."""
  rng = np.random.default_rng(seed)
  for i in range(num):
    pick = _sum_pick(rng, split)
    images = [png(digit_image(split.images[j], rng=rng if jittered else None))
              for j in pick]
    yield _chat("sum", images, str(int(split.labels[pick].sum())),
                f"sum-moved-{i}" if jittered else f"sum-{i}")


def sum_digits(split: Split, num: int, seed: int) -> list[np.ndarray]:
  """Indices into `split` of the digits of `sum_samples(split, num, seed)` (unjittered:
  its generator draws only the picks), in sample order: `num` int[n] arrays."""
  rng = np.random.default_rng(seed)
  return [_sum_pick(rng, split) for _ in range(num)]


def read_samples(split: Split, num: int, seed: int) -> Iterator[schema.Chat]:
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
      writer.write(schema.encode(sample))
      count += 1
    writer.commit()
  return count


def write_dataset(out: str | pathlib.Path, num_sum: int = 6000, num_read: int = 6000,
                  num_heldout: int = 200, seed: int = 0, num_shards: int = 2,
                  caption_copies: int = 4, num_moved: int = 3000) -> dict:
  """Writes every shard set (module docstring); returns the summary it saves."""
  out = pathlib.Path(out)
  train, held = load_splits(seed)
  counts = {"train": {}, "heldout": {}}
  train_sets = {
      "caption": caption_samples(train, caption_copies, seed + SEED_OFFSETS["train/caption"]),
      "vqa": vqa_samples(train),
      "sum": sum_samples(train, num_sum, seed + SEED_OFFSETS["train/sum"]),
      "read": read_samples(train, num_read, seed + SEED_OFFSETS["train/read"]),
      "sum_moved": sum_samples(train, num_moved, seed + SEED_OFFSETS["train/sum_moved"],
                               jittered=True),
  }
  held_sets = {
      "vqa": vqa_samples(held),
      "sum": sum_samples(held, num_heldout, seed + SEED_OFFSETS["heldout/sum"]),
      "read": read_samples(held, num_heldout, seed + SEED_OFFSETS["heldout/read"]),
  }
  for split_name, sets in (("train", train_sets), ("heldout", held_sets)):
    for task, samples in sets.items():
      counts[split_name][task] = _write(out / split_name / task, task, samples, num_shards)
  summary = {"seed": seed, "digit_px": DIGIT_PX, "caption_copies": caption_copies,
             "train_images": len(train.labels),
             "heldout_images": len(held.labels), "samples": counts}
  (out / "digits.json").write_text(json.dumps(summary, indent=1))
  return summary
