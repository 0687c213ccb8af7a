"""Small shard sets of every sample kind, for tests, benchmarks and the example configs.

  python -m bliperax.data.example_shards --out=/tmp/bliperax_example_shards \
      [--images=DIR] [--num=64] [--corrupt=2] [--layout=kinds|paper]

`--layout=kinds` (default) writes `caption`, `chat`, `interleaved` and `text` shard
sets under --out (one folder each; experiments/data_example.py reads them).
`--layout=paper` writes one under every shard folder of the paper's mixtures
(bliperax/configs/mixtures.py: `mint1t/html`, `blip3_ocr_200m`, `sft_1m`, `mantis`,
`vlfeedback`, ...), each holding its source's content (captions, OCR text and
grounding captions with `<bbox>` spans, documents, chats, multi-image chats,
preference pairs), plus `heldout/vqa` (one-question chats for `python -m
bliperax.evaluate`): every paper stage config runs on --out as its root=.
The texts are made up but deterministic; images are the given files' bytes (or
small generated PNGs). `--corrupt=k` adds k undecodable records and k captions
whose image bytes are not an image to the caption set, to exercise the
pipeline's skip counting.
"""
from __future__ import annotations

import argparse
import io
import pathlib
import random
from typing import Sequence

import numpy as np
from PIL import Image

from bliperax.data import records
from bliperax.data import schema

_WORDS = ("red bus street dog park window river bridge cat sofa tree light blue small "
          "two people table book mountain snow").split()
KINDS = ("caption", "chat", "interleaved", "text")
# Made on request only (make_samples), e.g. for the paper layout.
EXTRA_KINDS = ("ocr", "grounding", "multi_image_chat", "preference", "vqa")
HELDOUT_VQA = "heldout/vqa"


def generated_images(count: int, seed: int = 0) -> list[bytes]:
  """Small PNGs of several aspect ratios (so anyres picks several grids)."""
  rng = np.random.default_rng(seed)
  sizes = [(64, 48), (40, 96), (120, 40), (70, 70), (30, 90)]
  out = []
  for i in range(count):
    w, h = sizes[i % len(sizes)]
    pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    out.append(buffer.getvalue())
  return out


def folder_images(folder: str | pathlib.Path) -> list[bytes]:
  """The bytes of every .jpg/.jpeg/.png file of a folder, sorted by name."""
  paths = sorted(p for p in pathlib.Path(folder).iterdir()
                 if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
  return [p.read_bytes() for p in paths]


def _sentence(rng: random.Random, n: int) -> str:
  return " ".join(rng.choice(_WORDS) for _ in range(n)).capitalize() + "."


def _question(rng: random.Random, n: int) -> str:
  return _sentence(rng, n)[:-1] + "?"


def _box(rng: random.Random) -> str:
  """A `<bbox>x1, y1, x2, y2</bbox>` span of a box inside the unit square."""
  x1, y1 = rng.randint(0, 60) / 100, rng.randint(0, 60) / 100
  x2, y2 = x1 + rng.randint(5, 40) / 100, y1 + rng.randint(5, 40) / 100
  return f"<bbox>{x1:.2f}, {y1:.2f}, {x2:.2f}, {y2:.2f}</bbox>"


def _extra_sample(kind: str, sid: str, rng: random.Random, pick) -> schema.Sample:
  """One sample of EXTRA_KINDS (the paper layout's contents)."""
  if kind == "ocr":  # BLIP3-OCR-200M style: each text line followed by its box
    lines = [f"{_sentence(rng, rng.randint(1, 4))} {_box(rng)}" for _ in range(rng.randint(1, 3))]
    return schema.Caption(image=pick(), text=" ".join(lines), task="ocr", id=sid)
  if kind == "grounding":  # BLIP3-GROUNDING-50M style: objects named with their boxes
    parts = [f"{rng.choice(_WORDS)} {_box(rng)}" for _ in range(rng.randint(1, 3))]
    return schema.Caption(image=pick(), text="The image shows " + ", ".join(parts) + ".",
                          task="grounding", id=sid)
  if kind == "multi_image_chat":  # MANTIS / MMDU style: 2-4 images, then questions
    n = rng.randint(2, 4)
    first = "".join(f"Image {i + 1}: <image>\n" for i in range(n)) + _question(rng, 6)
    turns = [first, _sentence(rng, rng.randint(2, 12))]
    if rng.random() < 0.5:
      turns += [_question(rng, 5), _sentence(rng, rng.randint(2, 8))]
    return schema.Chat(turns=tuple(turns), images=tuple(pick() for _ in range(n)), id=sid)
  if kind == "preference":  # VLFeedback style: one prompt, a better and a worse answer
    chosen = _sentence(rng, rng.randint(4, 10))
    return schema.Preference(prompt="<image>\n" + _question(rng, 5), chosen=chosen,
                             rejected="No. " + chosen, images=(pick(),), id=sid)
  if kind == "vqa":  # held-out questions with one-word answers (bliperax.evaluate)
    return schema.Chat(turns=("<image>\n" + _question(rng, 4), rng.choice(_WORDS)),
                       images=(pick(),), id=sid)
  raise ValueError(f"unknown kind {kind!r}")


def make_samples(kind: str, num: int, images: Sequence[bytes], seed: int = 0
                 ) -> list[schema.Sample]:
  """`num` deterministic samples of one kind, cycling through `images`."""
  rng = random.Random(f"{seed}/{kind}")
  pick = lambda: images[rng.randrange(len(images))]  # pylint: disable=unnecessary-lambda-assignment
  out = []
  for i in range(num):
    sid = f"{kind}-{i}"
    if kind == "caption":
      out.append(schema.Caption(image=pick(), text=_sentence(rng, rng.randint(3, 12)), id=sid))
    elif kind == "chat":
      n_images = rng.randint(0, 2)
      turns = ["<image>\n" * n_images + _sentence(rng, rng.randint(3, 8)) + "?",
               _sentence(rng, rng.randint(2, 16))]
      if rng.random() < 0.5:
        turns += [_sentence(rng, 4) + "?", _sentence(rng, rng.randint(2, 10))]
      out.append(schema.Chat(turns=tuple(turns), images=tuple(pick() for _ in range(n_images)),
                             id=sid))
    elif kind == "interleaved":
      items = []
      for _ in range(rng.randint(1, 6)):
        items += [pick(), _sentence(rng, rng.randint(3, 10))]
      out.append(schema.Interleaved(items=tuple(items), id=sid))
    elif kind == "text":
      out.append(schema.Text(text=" ".join(_sentence(rng, 8) for _ in range(rng.randint(1, 6))),
                             id=sid))
    else:
      out.append(_extra_sample(kind, sid, rng, pick))
  return out


def write(directory: str | pathlib.Path, kind: str, samples: Sequence[schema.Sample],
          num_shards: int = 2, extra_records: Sequence[bytes] = ()) -> pathlib.Path:
  """Writes one shard set under directory/kind (a folder name, may hold '/'); returns it."""
  folder = pathlib.Path(directory) / kind
  prefix = folder.name  # shard file names take the last part of the folder
  with records.ShardSetWriter(folder, prefix, num_shards, overwrite=True) as writer:
    for sample in samples:
      writer.write(schema.encode(sample))
    for record in extra_records:
      writer.write(record)
    writer.commit()
  return folder


def corrupt_records(count: int) -> list[bytes]:
  """`count` undecodable records and `count` captions with non-image bytes."""
  garbage = [b"\x93not msgpack" + bytes([i]) for i in range(count)]
  bad_images = [schema.encode(schema.Caption(image=b"not an image %d" % i, text="Broken.",
                                             id=f"bad-image-{i}")) for i in range(count)]
  return garbage + bad_images


def write_all(directory: str | pathlib.Path, num: int, images: Sequence[bytes],
              corrupt: int = 0, kinds: Sequence[str] = KINDS) -> dict[str, pathlib.Path]:
  """One shard set per kind; `corrupt` bad records go into the caption set."""
  out = {}
  for kind in kinds:
    extra = corrupt_records(corrupt) if kind == "caption" else ()
    out[kind] = write(directory, kind, make_samples(kind, num, images), extra_records=extra)
  return out


def write_paper_layout(directory: str | pathlib.Path, num: int, images: Sequence[bytes]
                       ) -> dict[str, pathlib.Path]:
  """A shard set under every folder of the paper's mixtures, plus HELDOUT_VQA.

  Each folder holds `num` samples of its source's content (mixtures.folders());
  the caption-like contents map to make_samples kinds of the same name, and
  `chat` / `interleaved` to the default kinds.
  """
  from bliperax.configs import mixtures  # pylint: disable=g-import-not-at-top
  layout = {**mixtures.folders(), HELDOUT_VQA: "vqa"}
  return {folder: write(directory, folder, make_samples(content, num, images, seed=i))
          for i, (folder, content) in enumerate(sorted(layout.items()))}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--images", default="", help="folder of images (default: generated)")
  parser.add_argument("--num", type=int, default=64)
  parser.add_argument("--corrupt", type=int, default=0)
  parser.add_argument("--layout", choices=("kinds", "paper"), default="kinds",
                      help="kinds: one folder per sample kind; paper: every shard folder "
                      "of the paper's mixtures (bliperax/configs/mixtures.py)")
  args = parser.parse_args(argv)
  images = folder_images(args.images) if args.images else generated_images(16)
  if args.layout == "paper":
    if args.corrupt:
      parser.error("--corrupt goes with --layout=kinds")
    written = write_paper_layout(args.out, args.num, images)
  else:
    written = write_all(args.out, args.num, images, args.corrupt)
  for name, folder in written.items():
    print(f"{name}: {folder}")


if __name__ == "__main__":
  main()
