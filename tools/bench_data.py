r"""Host pipeline throughput: samples/s for anyres SFT and caption pre-training samples.

  python tools/bench_data.py [--images=DIR] [--batches=6] [--workers=0,2]

Builds temporary shard sets from the JPEGs of --images (each chat and caption
holds one of them; default: generated photo-sized JPEGs, smooth noise at COCO-like
sizes, so decoding costs what a real photo's does) and runs the full pipeline (decode, render, crops at the
4B model's 384 px base, expand, pack, batch) on them:

  sft_anyres   one-image chats, anyres crops (up to 5 per image), T = 4096
  caption      captions, one squashed base crop, T = 2048

For each kind and each --workers value it prints one JSON line. workers=0 runs
in this process with one read thread: its samples/s is what one worker
delivers. workers=N uses N mp_prefetch processes; samples_per_s_per_worker
divides by N. Crops are float32 [C, 384, 384, 3], so batch arrays are large.
"""
import io
import json
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

from bliperax.data import example_shards
from bliperax.data import pipeline
from bliperax.data import schema
from bliperax.models import presets

_IMAGES = flags.DEFINE_string("images", "", "Folder of JPEGs (default: generated ones).")
_BATCHES = flags.DEFINE_integer("batches", 6, "Timed batches per run (after one warm-up).")
_BATCH = flags.DEFINE_integer("batch", 4, "Rows per batch.")
_WORKERS = flags.DEFINE_list("workers", ["0"], "mp_prefetch worker counts to run.")
_SAMPLES = flags.DEFINE_integer("samples", 200, "Samples per shard set.")
_KINDS = flags.DEFINE_list("kinds", ["sft_anyres", "caption"], "Which benchmarks.")

_BENCHES = {  # kind: (seq_len, max_crops, anyres)
    "sft_anyres": (4096, 20, True),
    "caption": (2048, 16, False),
}


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


def _config(root: str, kind: str, workers: int) -> ml_collections.ConfigDict:
  seq_len, max_crops, anyres = _BENCHES[kind]
  cfg = ml_collections.ConfigDict()
  cfg.seed = 0
  cfg.train = ml_collections.ConfigDict(dict(global_batch=_BATCH.value, seq_len=seq_len))
  cfg.data = ml_collections.ConfigDict(dict(
      kind="grain", seed=0, max_crops=max_crops, worker_count=workers,
      read_threads=1 if workers == 0 else 2, worker_buffer_size=2,
      sources=ml_collections.ConfigDict({kind: dict(paths=f"{root}/{kind}", weight=1.0,
                                                    anyres=anyres)})))
  return cfg


def _run(root: str, kind: str, workers: int) -> dict:
  source = pipeline.make_source(_config(root, kind, workers), presets.xgenmm_4b())
  next(source)  # warm-up: worker start, tokenizer load, first fills
  start_counts = source.stats()
  start = time.perf_counter()
  for _ in range(_BATCHES.value):
    next(source)
  seconds = time.perf_counter() - start
  stats = source.stats()
  source.close()
  samples = stats["samples_packed"] - start_counts["samples_packed"]
  per_s = samples / seconds
  return dict(bench=kind, workers=workers, batch=_BATCH.value,
              seq_len=_BENCHES[kind][0], max_crops=_BENCHES[kind][1], batches=_BATCHES.value,
              seconds=round(seconds, 3), samples=samples, samples_per_s=round(per_s, 2),
              samples_per_s_per_worker=round(per_s / max(workers, 1), 2),
              packing_efficiency=round(stats["packing_efficiency"], 3),
              crop_efficiency=round(stats["crop_efficiency"], 3),
              samples_per_row=round(stats["samples_per_row"], 2),
              skipped=stats["skipped"], cpus=os.cpu_count(),
              load_avg_1m=round(os.getloadavg()[0], 1))


def main(argv) -> None:
  del argv
  images = _jpegs(_IMAGES.value) if _IMAGES.value else _generated_jpegs()
  with tempfile.TemporaryDirectory() as root:
    for kind in _KINDS.value:
      if kind not in _BENCHES:
        raise app.UsageError(f"unknown --kinds entry {kind!r}; known: {sorted(_BENCHES)}")
      example_shards.write(root, kind, _samples(kind, images, _SAMPLES.value))
    for kind in _KINDS.value:
      for workers in map(int, _WORKERS.value):
        print(json.dumps(_run(root, kind, workers)), flush=True)
  sys.stdout.flush()


if __name__ == "__main__":
  cli.run(main)
