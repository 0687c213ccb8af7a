"""Small shard sets of every sample kind, for tests, benchmarks and the example config.

  python -m bliperax.data.example_shards --out=/tmp/bliperax_example_shards \
      [--images=DIR] [--num=64] [--corrupt=2]

writes `caption`, `chat`, `interleaved` and `text` shard sets under --out (one
folder each). The texts are made up but deterministic; images are the given
files' bytes (or small generated PNGs). `--corrupt=k` adds k undecodable
records and k captions whose image bytes are not an image to the caption set,
to exercise the pipeline's skip counting.
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
      raise ValueError(f"unknown kind {kind!r}")
  return out


def write(directory: str | pathlib.Path, kind: str, samples: Sequence[schema.Sample],
          num_shards: int = 2, extra_records: Sequence[bytes] = ()) -> pathlib.Path:
  """Writes one shard set under directory/kind; returns that folder."""
  folder = pathlib.Path(directory) / kind
  with records.ShardSetWriter(folder, kind, num_shards, overwrite=True) as writer:
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


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--images", default="", help="folder of images (default: generated)")
  parser.add_argument("--num", type=int, default=64)
  parser.add_argument("--corrupt", type=int, default=0)
  args = parser.parse_args(argv)
  images = folder_images(args.images) if args.images else generated_images(16)
  for kind, folder in write_all(args.out, args.num, images, args.corrupt).items():
    print(f"{kind}: {folder}")


if __name__ == "__main__":
  main()
