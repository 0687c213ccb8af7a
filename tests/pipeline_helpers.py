"""Test helpers for the Grain pipeline: tiny configs, and a resume runner for fresh processes.

  python tests/pipeline_helpers.py JOBS.json

runs each job of JOBS.json (a list of {"config": ConfigDict JSON, "process_index",
"process_count", "state", "out", "num"}): restores a `GrainSource` to "state"
and saves its next "num" batches to "out" (.npz) and its counters to
"out".stats.json. Several jobs share one interpreter start.
"""
from __future__ import annotations

import json
import sys
from typing import Sequence

import ml_collections
import numpy as np

from bliperax.data import example_shards
from bliperax.data import pipeline
from bliperax.models import presets


def tiny_config(root, seq_len: int = 160, batch: int = 4, **data) -> ml_collections.ConfigDict:
  """A tiny-model pipeline over the example shard sets under `root`."""
  cfg = ml_collections.ConfigDict()
  cfg.seed = 0
  cfg.train = ml_collections.ConfigDict(dict(global_batch=batch, seq_len=seq_len))
  sources = dict(caption=dict(paths=f"{root}/caption", weight=2.0),
                 chat=dict(paths=f"{root}/chat", weight=1.0, anyres=True),
                 interleaved=dict(paths=f"{root}/interleaved", weight=1.0),
                 text=dict(paths=f"{root}/text", weight=1.0))
  cfg.data = ml_collections.ConfigDict(dict(
      kind="grain", seed=0, max_crops=10, worker_count=0, read_threads=1,
      sources=ml_collections.ConfigDict(sources)))
  cfg.data.update(data)
  return cfg


def write_shards(root, num: int = 24, corrupt: int = 2) -> None:
  example_shards.write_all(root, num, example_shards.generated_images(10), corrupt=corrupt)


def take(source, num: int) -> list[dict]:
  return [next(source) for _ in range(num)]


def save_batches(path, batches: Sequence[dict]) -> None:
  np.savez(path, **{f"{i}/{k}": v for i, b in enumerate(batches) for k, v in b.items()})


def load_batches(path) -> list[dict]:
  data = np.load(path)
  out = {}
  for key in data.files:
    i, name = key.split("/", 1)
    out.setdefault(int(i), {})[name] = data[key]
  return [out[i] for i in sorted(out)]


def main(argv: Sequence[str]) -> None:
  with open(argv[1]) as f:
    jobs = json.load(f)
  for job in jobs:
    cfg = ml_collections.ConfigDict(job["config"])
    source = pipeline.make_source(cfg, presets.tiny(), process_index=job["process_index"],
                                  process_count=job["process_count"])
    source.set_state(job["state"])
    save_batches(job["out"], take(source, job["num"]))
    with open(job["out"] + ".stats.json", "w") as f:
      json.dump(source.get_state()["counts"], f)
    source.close()


if __name__ == "__main__":
  main(sys.argv)
