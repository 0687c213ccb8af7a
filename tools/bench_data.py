r"""Host pipeline throughput, batch bytes and packing efficiency, one JSON line per run.

  python tools/bench_data.py [--images=DIR] [--batches=6] [--workers=0,2]
      [--kinds=sft_anyres,caption,sft_mix] [--packing=next_fit,best_fit] [--open_rows=8]

Builds temporary shard sets from the JPEGs of --images (default: generated photo-sized
JPEGs, smooth noise at COCO-like sizes, so decoding costs what a real photo's does) and
runs the full pipeline (decode, render, crops at the 4B model's 384 px base, expand,
pack, batch) on them:

  sft_anyres   one-image chats, anyres crops (up to 5 per image), T = 4096, 20 crops
  caption      captions, one squashed base crop, T = 2048, 16 crops
  sft_mix      a realistic SFT length mix, T = 4096, 20 crops (see `_mix_samples`):
               60% one-image chats, 15% multi-turn image chats, 25% text-only chats,
               answer lengths log-normal

For each kind, --packing value and --workers value it prints one JSON line:

  samples_per_s, samples_per_s_per_worker   workers=0 runs in this process with one
      read thread (what one worker delivers); workers=N uses N mp_prefetch processes
      and divides by N
  packing_efficiency   non-padding share of the token slots (vision slots count as
      tokens); crop_efficiency the same for crop slots
  crop_bytes_per_batch     the crops as they cross process boundaries and go to the
      device (uint8 pixels, normalised on the device: bliperax/data/pixels.py)
  crop_bytes_per_batch_if_float32   the same crops as float32, as the host sent them
      before they became uint8
  text_bytes_per_batch     tokens, labels, positions, segment ids
  index_bytes_per_batch    group_index, group_mask, vision_slots
  device_bytes_per_batch   every array the training step receives

Packing efficiency depends only on the data (not on the machine); throughput is noisy on a
shared machine (`load_avg_1m` is printed with it).
"""
import io
import json
import math
import os
import pathlib
import random
import sys
import tempfile
import time

from absl import app
from absl import flags
import ml_collections
import numpy as np
from PIL import Image

from bliperax import cli

from bliperax.data import batch_spec
from bliperax.data import example_shards
from bliperax.data import packing
from bliperax.data import pipeline
from bliperax.data import schema
from bliperax.models import presets

_IMAGES = flags.DEFINE_string("images", "", "Folder of JPEGs (default: generated ones).")
_BATCHES = flags.DEFINE_integer("batches", 6, "Timed batches per run (after one warm-up).")
_BATCH = flags.DEFINE_integer("batch", 4, "Rows per batch.")
_WORKERS = flags.DEFINE_list("workers", ["0"], "mp_prefetch worker counts to run.")
_SAMPLES = flags.DEFINE_integer("samples", 200, "Samples per shard set.")
_KINDS = flags.DEFINE_list("kinds", ["sft_anyres", "caption", "sft_mix"], "Which benchmarks.")
_PACKING = flags.DEFINE_list("packing", list(packing.PACKERS),
                             "Packers to run (data.packing): next_fit, best_fit.")
_OPEN_ROWS = flags.DEFINE_integer("open_rows", packing.DEFAULT_OPEN_ROWS,
                                  "Best-fit's open rows (data.open_rows).")

_BENCHES = {  # kind: (seq_len, max_crops, anyres)
    "sft_anyres": (4096, 20, True),
    "caption": (2048, 16, False),
    "sft_mix": (4096, 20, True),
}
_TEXT_KEYS = ("tokens", "labels", "positions", "segment_ids")
_INDEX_KEYS = ("group_index", "group_mask", "vision_slots")


def _generated_jpegs(count: int = 6) -> list[bytes]:
  """Photo-sized JPEGs (COCO-like sizes, one wide): smooth noise, quality 90."""
  rng = np.random.default_rng(0)
  sizes = [(640, 480), (500, 375), (640, 427), (480, 640), (1716, 540), (612, 612)]
  out = []
  for i in range(count):
    w, h = sizes[i % len(sizes)]
    coarse = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((w, h), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    out.append(buffer.getvalue())
  return out


def _jpegs(folder: str) -> list[bytes]:
  paths = sorted(p for p in pathlib.Path(folder).iterdir()
                 if p.suffix.lower() in (".jpg", ".jpeg"))
  if not paths:
    raise FileNotFoundError(f"no JPEGs in {folder}")
  return [p.read_bytes() for p in paths]


def _samples(kind: str, images: list[bytes], num: int) -> list[schema.Sample]:
  rng = random.Random(0)
  base = example_shards.make_samples("caption", num, images)
  if kind == "caption":
    return base
  out = []
  for i, caption in enumerate(base):
    question = rng.choice(["Describe the image in detail.", "What is shown here?",
                           "What is unusual about this picture?"])
    answer = " ".join([caption.text] * rng.randint(2, 12))
    out.append(schema.Chat(turns=(f"<image>\n{question}", answer),
                           images=(images[i % len(images)],), id=f"chat-{i}"))
  return out


_WORDS = ("the a of and in on with near under small large red blue green dog cat person "
          "street car table window tree sky water building sign two three left right front "
          "behind holding wearing sitting standing looks shows appears there is are").split()
# sft_mix: (kind, share, images, turns, median answer words, sigma of log words).
_MIX = (("image_chat", 0.60, 1, 1, 40, 1.0),
        ("multi_turn_image_chat", 0.15, 1, 3, 30, 0.8),
        ("text_chat", 0.25, 0, 1, 150, 1.0))


def _words(rng: random.Random, n: int) -> str:
  return " ".join(rng.choice(_WORDS) for _ in range(max(1, n))).capitalize() + "."


def _mix_samples(images: list[bytes], num: int) -> list[schema.Sample]:
  """The sft_mix samples: an assumed, LLaVA-1.5-like instruction mix, not measured data.

  Why this mix: the SFT data of xGen-MM (and LLaVA-style mixtures generally) is mostly
  single-image VQA and description chats with short to medium answers, some multi-turn
  conversations about an image, and a sizeable share of text-only instruction chats whose
  answers are long; instruction-data lengths are roughly log-normal. Here: 60% one-image
  chats (answers ~40 words, median), 15% three-turn image chats (~30 words per answer),
  25% text-only chats (~150 words, a long tail to thousands). With anyres each image
  costs 384-640 vision slots, so samples run from ~450 to ~4000 tokens of a 4096 row.
  """
  rng = random.Random(0)
  kinds = [m[0] for m in _MIX]
  out = []
  for i in range(num):
    kind, _, n_images, turns, median, sigma = _MIX[kinds.index(
        rng.choices(kinds, weights=[m[1] for m in _MIX])[0])]
    chat = []
    for t in range(turns):
      question = _words(rng, rng.randint(4, 14))[:-1] + "?"
      if t == 0:
        question = "<image>\n" * n_images + question
      chat += [question, _words(rng, min(3000, round(rng.lognormvariate(
          math.log(median), sigma))))]
    out.append(schema.Chat(turns=tuple(chat), images=tuple(
        images[(i + k) % len(images)] for k in range(n_images)), id=f"{kind}-{i}"))
  return out


def _config(root: str, kind: str, workers: int, packer: str) -> ml_collections.ConfigDict:
  seq_len, max_crops, anyres = _BENCHES[kind]
  cfg = ml_collections.ConfigDict()
  cfg.seed = 0
  cfg.train = ml_collections.ConfigDict(dict(global_batch=_BATCH.value, seq_len=seq_len))
  cfg.data = ml_collections.ConfigDict(dict(
      kind="grain", seed=0, max_crops=max_crops, worker_count=workers,
      read_threads=1 if workers == 0 else 2, worker_buffer_size=2, packing=packer,
      open_rows=_OPEN_ROWS.value,
      sources=ml_collections.ConfigDict({kind: dict(paths=f"{root}/{kind}", weight=1.0,
                                                    anyres=anyres)})))
  return cfg


def _bytes(batch: dict, keys) -> int:
  return int(sum(batch[k].nbytes for k in keys))


def _run(root: str, kind: str, workers: int, packer: str) -> dict:
  cfg = _config(root, kind, workers, packer)
  source = pipeline.GrainSource(pipeline.from_config(cfg), presets.xgenmm_4b(), keys=None)
  batch = next(source)  # warm-up: worker start, tokenizer load, first fills
  start_counts = source.stats()
  start = time.perf_counter()
  for _ in range(_BATCHES.value):
    next(source)
  seconds = time.perf_counter() - start
  stats = source.stats()
  source.close()
  samples = stats["samples_packed"] - start_counts["samples_packed"]
  per_s = samples / seconds
  crops = batch["crops"]
  return dict(bench=kind, packing=packer,
              open_rows=_OPEN_ROWS.value if packer == "best_fit" else None,
              workers=workers, batch=_BATCH.value,
              seq_len=_BENCHES[kind][0], max_crops=_BENCHES[kind][1], batches=_BATCHES.value,
              seconds=round(seconds, 3), samples=samples, samples_per_s=round(per_s, 2),
              samples_per_s_per_worker=round(per_s / max(workers, 1), 2),
              packing_efficiency=round(stats["packing_efficiency"], 3),
              crop_efficiency=round(stats["crop_efficiency"], 3),
              samples_per_row=round(stats["samples_per_row"], 2),
              rows=stats["rows"], crop_dtype=str(crops.dtype),
              crop_bytes_per_batch=int(crops.nbytes),
              crop_bytes_per_batch_if_float32=int(crops.size * 4),
              text_bytes_per_batch=_bytes(batch, _TEXT_KEYS),
              index_bytes_per_batch=_bytes(batch, _INDEX_KEYS),
              device_bytes_per_batch=_bytes(batch, batch_spec.TRAIN_KEYS),
              skipped=stats["skipped"], cpus=os.cpu_count(),
              load_avg_1m=round(os.getloadavg()[0], 1))


def main(argv) -> None:
  del argv
  for kind in _KINDS.value:
    if kind not in _BENCHES:
      raise app.UsageError(f"unknown --kinds entry {kind!r}; known: {sorted(_BENCHES)}")
  for packer in _PACKING.value:
    if packer not in packing.PACKERS:
      raise app.UsageError(f"unknown --packing entry {packer!r}; known: {packing.PACKERS}")
  images = _jpegs(_IMAGES.value) if _IMAGES.value else _generated_jpegs()
  with tempfile.TemporaryDirectory() as root:
    for kind in _KINDS.value:
      samples = (_mix_samples(images, _SAMPLES.value) if kind == "sft_mix"
                 else _samples(kind, images, _SAMPLES.value))
      example_shards.write(root, kind, samples)
    for kind in _KINDS.value:
      for packer in _PACKING.value:
        for workers in map(int, _WORKERS.value):
          print(json.dumps(_run(root, kind, workers, packer)), flush=True)
  sys.stdout.flush()


if __name__ == "__main__":
  cli.run(main)
