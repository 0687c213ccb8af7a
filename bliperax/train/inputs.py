"""What a training run reads besides its config: the init checkpoint and the data shards.

The resolved config already names them (`model.init_from`, `data.sources.*.paths`);
`describe` adds what those paths held when the run started, so that the workdir's
run_record.json (bliperax/run_record.py) says which init and which data the run used,
and a rerun against a re-exported init or a rebuilt shard set is a different run:

  "inputs": {"init": "random" | {"path", "source", "files"},
             "data": {"kind": "synthetic", "seed"} |
                     {"kind": "grain", "sources": {name: {"shards", "bytes", "files"}}}}

`source` is what the parameter checkpoint's card says it was made from (an export
names its training workdir, step and run record; bliperax/infer/checkpoints.py).
`files` is a sha256 over the names and sizes of the files: Orbax writes its data
files under fresh random names, and a shard set's files carry their sizes, so a
rewrite shows without reading gigabytes. Raises ValueError (a missing init or
shard folder, with the path) before the trainer creates or compiles anything.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, Iterable

import ml_collections
from etils import epath

from bliperax import paths

RANDOM = "random"


def files_digest(files: Iterable[epath.Path], root: epath.Path) -> Dict[str, Any]:
  """{"files": sha256 of (relative name, size) pairs, "bytes": their total size}."""
  digest, total = hashlib.sha256(), 0
  for path in sorted(files, key=lambda p: p.parts):
    size = paths.size(path)
    total += size
    digest.update(f"{paths.relative(path, root)}\0{size}\0".encode())
  return {"files": digest.hexdigest(), "bytes": total}


def describe_init(init_from: str) -> Any:
  """"random", or the parameter checkpoint at `init_from`: path, source, files."""
  if not init_from:
    return RANDOM
  from bliperax.convert import params_io  # pylint: disable=g-import-not-at-top
  path = paths.resolve(init_from)
  try:
    params_io.read_card(path)
  except (params_io.CheckpointError, OSError) as e:
    raise ValueError(f"model.init_from: {e}") from e
  card = json.loads((path / params_io.CARD).read_text())
  files = list(paths.files_under(path / "params"))
  return {"path": str(path), "source": card.get("source"),
          **files_digest(files + [path / params_io.CARD], path)}


def describe_data(data: ml_collections.ConfigDict) -> Dict[str, Any]:
  """The data the run reads: synthetic (its seed), or every source's shard files."""
  kind = data.get("kind", "synthetic")
  if kind != "grain":
    return {"kind": kind, "seed": data.get("seed", 0)}
  from bliperax.data import mixture  # pylint: disable=g-import-not-at-top
  from bliperax.data import records  # pylint: disable=g-import-not-at-top
  sources = {}
  for spec in mixture.specs_from_config(data.sources):
    if spec.tfds:  # a TFDS dataset is named by its spec (name, split, version, data_dir)
      sources[spec.name] = {"tfds": spec.tfds}
      continue
    try:
      shards = [paths.resolve(p) for p in records.shard_paths(list(spec.paths))]
    except (OSError, ValueError) as e:
      raise ValueError(f"data source {spec.name!r}: {e}") from e
    root = paths.common_parent([p.parent for p in shards])
    sources[spec.name] = {"shards": len(shards), **files_digest(shards, root)}
  return {"kind": kind, "sources": sources}


def describe(cfg: ml_collections.ConfigDict) -> Dict[str, Any]:
  """{"init": ..., "data": ...} of a training config (see the module docstring)."""
  return {"init": describe_init(cfg.model.get("init_from", "")),
          "data": describe_data(cfg.data)}
