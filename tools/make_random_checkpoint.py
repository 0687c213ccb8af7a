"""Writes a random-weight HF xGen-MM checkpoint with the real names, shapes and shards.

  python tools/make_random_checkpoint.py --preset=xgenmm_4b --dst=/tmp/ckpt4b/hf
  python tools/make_random_checkpoint.py --preset=tiny --layout=auto --dst=/tmp/tiny_hf

For measuring conversion (memory, time, exactness) at full size without downloading
the release; the output is junk weights and must never be committed.

--layout=released (the default) reproduces the release's file layout: the shard file
names and tensor-to-shard assignment of the reference `model.safetensors.index.json`
(4 shards for the 4B model) and its config.json, copied verbatim (so the shapes it
leaves implicit are exercised too). It needs a preset whose tensors are exactly the
index's. --layout=auto shards by --max_shard_gb and writes an explicit config.json,
for any preset.

Nothing is materialised as a model: shapes come from `jax.eval_shape` through the
conversion rules, and each tensor is drawn (N(0, 0.02²), seeded by its position),
written and dropped before the next, so memory stays at about one tensor. Prints a
JSON summary {"dst", "tensors", "parameters", "bytes", "shards", "seconds"} last.
"""
import json
import os
import pathlib
import sys
import time
from typing import Dict, List, Tuple, Union

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import app, flags # noqa: E402

from bliperax import cli
import jax  # noqa: E402
import numpy as np  # noqa: E402
import tqdm  # noqa: E402

from bliperax import atomic  # noqa: E402
from bliperax.convert import hf, hf_config  # noqa: E402
from bliperax.convert.safetensors_io import (INDEX_NAME, SINGLE_NAME, CheckpointError,  # noqa: E402
                                             write_file)
from bliperax.models import presets  # noqa: E402

REFERENCE = (pathlib.Path(__file__).resolve().parents[2] / "shared" / "reference" /
             "xgenmm-phi3-mini-base-r-v1.5")

_PRESET = flags.DEFINE_enum("preset", "xgenmm_4b", sorted(presets.PRESETS), "Model shapes.")
_DST = flags.DEFINE_string("dst", None, "Output directory (keep it outside the repository).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Tensor dtype.")
_LAYOUT = flags.DEFINE_enum(
    "layout", "released", ["released", "auto"],
    "released: shard names/assignment of --reference_dir's index and its config.json; "
    "auto: shards of at most --max_shard_gb and a generated config.json.")
_REFERENCE = flags.DEFINE_string(
    "reference_dir", str(REFERENCE),
    "Released checkpoint metadata (model.safetensors.index.json, config.json).")
_MAX_SHARD_GB = flags.DEFINE_float("max_shard_gb", 5.0, "--layout=auto: largest shard, GiB.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a non-empty --dst.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar on stderr.")

Spec = Tuple[str, Tuple[int, ...]]


def released_plan(specs: List[Spec], reference_dir: os.PathLike
                  ) -> Tuple[List[Tuple[str, List[Spec]]], str]:
  """Shards (file name, tensors in checkpoint order) of the released index, and the
  text of its config.json (copied byte for byte).

  Raises:
    CheckpointError: the reference files are missing or name other tensors.
  """
  reference_dir = pathlib.Path(reference_dir)
  index_path, config_path = reference_dir / INDEX_NAME, reference_dir / "config.json"
  for path in (index_path, config_path):
    if not path.exists():
      raise CheckpointError(f"{path}: missing (needed by --layout=released)")
  weight_map: Dict[str, str] = json.loads(index_path.read_text())["weight_map"]
  names = {n for n, _ in specs}
  missing, extra = sorted(set(weight_map) - names), sorted(names - set(weight_map))
  if missing or extra:
    raise CheckpointError(
        f"{index_path}: the preset's tensors differ from the index (index only: "
        f"{missing[:3]}, preset only: {extra[:3]}); use --layout=auto")
  shards = [(f, [s for s in specs if weight_map[s[0]] == f])
            for f in sorted(set(weight_map.values()))]
  return shards, config_path.read_text()


def auto_plan(specs: List[Spec], itemsize: int, max_bytes: int
              ) -> List[Tuple[str, List[Spec]]]:
  """Greedy shards of at most `max_bytes` (a larger tensor gets a shard of its own)."""
  groups: List[List[Spec]] = [[]]
  used = 0
  for spec in specs:
    size = int(np.prod(spec[1], dtype=np.int64)) * itemsize
    if groups[-1] and used + size > max_bytes:
      groups.append([])
      used = 0
    groups[-1].append(spec)
    used += size
  if len(groups) == 1:
    return [(SINGLE_NAME, groups[0])]
  n = len(groups)
  return [(f"model-{k + 1:05d}-of-{n:05d}.safetensors", g) for k, g in enumerate(groups)]


def write_random(dst: os.PathLike, shards: List[Tuple[str, List[Spec]]],
                 config: Union[dict, str], dtype: np.dtype, seed: int = 0,
                 overwrite: bool = False, progress: bool = False) -> dict:
  """Writes the shards (random tensors), index and config.json; returns a summary dict.

  `config` is a dict to serialise or the verbatim text of a config.json.

  Tensor k (in checkpoint order across shards) is drawn from
  `default_rng([seed, k])`, so any one tensor can be regenerated on its own.
  """
  dst = pathlib.Path(dst).absolute()
  if atomic.is_occupied(dst) and not overwrite:
    raise CheckpointError(f"{dst}: exists and is not empty (pass --overwrite to replace it)")
  dtype = np.dtype(dtype)
  sizes = {n: int(np.prod(s, dtype=np.int64)) for _, group in shards for n, s in group}
  total = sum(sizes.values()) * dtype.itemsize
  counter = iter(range(len(sizes)))
  with atomic.atomic_directory(dst) as tmp, tqdm.tqdm(
      total=total, desc=f"write {dst.name}", unit="B", unit_scale=True, unit_divisor=1024,
      disable=not progress) as bar:
    weight_map = {}
    for fname, group in shards:

      def tensors(group=group):
        for name, shape in group:
          x = np.random.default_rng([seed, next(counter)]).standard_normal(shape, np.float32)
          x *= 0.02
          x = x if dtype == np.float32 else x.astype(dtype)
          yield name, x
          bar.update(x.nbytes)
          del x

      write_file(tmp / fname, [(n, dtype, s) for n, s in group], tensors())
      weight_map.update({n: fname for n, _ in group})
    if len(shards) > 1:
      index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
      (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2))
    text = config if isinstance(config, str) else json.dumps(config, indent=2)
    (tmp / "config.json").write_text(text)
  return {"dst": str(dst), "tensors": len(sizes), "parameters": sum(sizes.values()),
          "bytes": total, "shards": len(shards)}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _DST.value:
    raise app.UsageError("--dst is required")
  start = time.time()
  cfg = presets.get(_PRESET.value)
  specs = hf.tensor_specs(cfg)
  dtype = np.dtype(jax.numpy.dtype(_DTYPE.value))
  try:
    if _LAYOUT.value == "released":
      shards, config = released_plan(specs, _REFERENCE.value)
    else:
      shards = auto_plan(specs, dtype.itemsize, int(_MAX_SHARD_GB.value * 2**30))
      config = hf_config.xgenmm_to_hf(cfg, _DTYPE.value)
    summary = write_random(_DST.value, shards, config, dtype, seed=_SEED.value,
                           overwrite=_OVERWRITE.value, progress=_PROGRESS.value)
  except (CheckpointError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  summary["seconds"] = round(time.time() - start, 2)
  print(json.dumps(summary), flush=True)


if __name__ == "__main__":
  cli.run(main)
