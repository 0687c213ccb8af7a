"""Mixture sources from config, and the per-epoch shuffle + per-process slice of each.

A mixture is a ConfigDict of named sources, each

    name = ConfigDict(dict(paths="dir/or/glob*,other", weight=7.0, anyres=False))

or, for a TFDS dataset prepared as `array_record`,

    name = ConfigDict(dict(weight=1.0, anyres=True, tfds=ConfigDict(dict(
        name="coco_captions", split="train", data_dir="", kind="caption",
        fields=dict(image="image", text="captions/text/0")))))

Weights are relative (they need not sum to 1). Mixing is Grain's deterministic
weighted interleave (`MapDataset.mix`): the share of each source in any window
of n samples is within one sample of n·w/Σw, and every index maps to one
(source, position) without state, so the mixed stream stays random-access and
checkpoints as a single position.

Each source is shuffled over its whole length with a new permutation per epoch
(Grain's `shuffle` keyed by seed + epoch), then sliced `[p::P]` for process p
of P: in every epoch the processes read disjoint samples whose union is the
source. The slice is taken inside the epoch (Grain's slice maps index i of
epoch e to e·N + start + i·P), so this holds for every epoch, not only the first.
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Callable, Optional, Sequence

import grain
import ml_collections

from bliperax.data import records


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  """One source of a mixture.

  Attributes:
    name: the source's name (stats are counted under it).
    weight: relative share of the mixture.
    paths: ArrayRecord shard files, directories or globs (records sources).
    anyres: anyres crops (SFT) instead of one squashed base crop (pre-training).
    tfds: for TFDS sources, the `tfds_source.TfdsSpec` fields as a dict.
  """
  name: str
  weight: float
  paths: tuple[str, ...] = ()
  anyres: bool = False
  tfds: Optional[dict] = None


def _split_paths(paths: Any) -> tuple[str, ...]:
  if isinstance(paths, str):
    return tuple(p.strip() for p in paths.split(",") if p.strip())
  return tuple(str(p) for p in paths or ())


def specs_from_config(sources: ml_collections.ConfigDict) -> list[SourceSpec]:
  """The sources of `cfg.data.sources`, validated, in key order (ConfigDict sorts keys)."""
  specs = []
  for name, src in sources.items():
    unknown = set(src.keys()) - {"paths", "weight", "anyres", "tfds"}
    if unknown:
      raise ValueError(f"data source {name!r}: unknown field(s) {sorted(unknown)}")
    weight = float(src.get("weight", 1.0))
    if weight < 0:
      raise ValueError(f"data source {name!r}: weight {weight} is negative")
    tfds = src.get("tfds")
    tfds = tfds.to_dict() if isinstance(tfds, ml_collections.ConfigDict) else tfds
    paths = _split_paths(src.get("paths", ()))
    if bool(paths) == bool(tfds):
      raise ValueError(f"data source {name!r}: give either paths (shards) or tfds")
    if weight > 0:  # a zero weight switches a source off
      specs.append(SourceSpec(name, weight, paths, bool(src.get("anyres", False)), tfds))
  if not specs:
    raise ValueError("the data mixture has no source with a positive weight")
  return specs


def source_seed(seed: int, name: str) -> int:
  """A 32-bit shuffle seed per (run seed, source): sources shuffle independently."""
  return zlib.crc32(f"{seed}/{name}".encode()) & 0xFFFFFFFF


def open_source(spec: SourceSpec):
  """The random-access source of a spec: ArrayRecord bytes or TFDS examples."""
  if spec.tfds:
    from bliperax.data import tfds_source  # pylint: disable=g-import-not-at-top
    return tfds_source.open_source(tfds_source.TfdsSpec(**spec.tfds))
  return records.open_shards(list(spec.paths))


def epoch_slices(source: Sequence, *, seed: int, shuffle: bool, process_index: int,
                 process_count: int, num_epochs: Optional[int]) -> grain.MapDataset:
  """This process's stream of a source: shuffled per epoch, sliced, repeated.

  Args:
    source: random-access items (`len`, `__getitem__`).
    seed: the shuffle seed of this source (see `source_seed`).
    shuffle: False keeps the stored order (evaluation, inspection).
    process_index, process_count: this process and how many read the source.
    num_epochs: passes over the source; None repeats forever.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process {process_index} of {process_count}")
  if len(source) < process_count:
    raise ValueError(f"a source of {len(source)} samples cannot feed {process_count} "
                     "processes")
  ds = grain.MapDataset.source(source)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds[process_index::process_count]
  return ds.repeat(num_epochs)


def mix(datasets: Sequence[grain.MapDataset], weights: Sequence[float]) -> grain.MapDataset:
  """Weighted deterministic interleave (a single source is returned as is)."""
  if len(datasets) == 1:
    return datasets[0]
  return grain.MapDataset.mix(list(datasets), list(weights))


def build(specs: Sequence[SourceSpec], make_map: Callable[[int, SourceSpec], Any], *,
          seed: int, shuffle: bool, process_index: int, process_count: int,
          num_epochs: Optional[int]) -> grain.MapDataset:
  """Every source opened, shuffled, sliced, mapped with `make_map(i, spec)`, mixed."""
  datasets = []
  for i, spec in enumerate(specs):
    ds = epoch_slices(open_source(spec), seed=source_seed(seed, spec.name), shuffle=shuffle,
                      process_index=process_index, process_count=process_count,
                      num_epochs=num_epochs)
    datasets.append(ds.map(make_map(i, spec)))
  return mix(datasets, [s.weight for s in specs])
