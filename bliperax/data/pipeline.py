"""The Grain host pipeline: mixture -> prepare each sample -> pack -> batch -> prefetch.

Stages (bliperax/DESIGN.md §6), per process:

1. `mixture.build`: every source shuffled per epoch (seeded), sliced for this
   process, repeated, mapped with `PrepareSample`, and mixed by weight. All of
   it is a random-access `MapDataset`, so its state is one position.
2. `PrepareSample` (per sample, in Grain's read threads): decode the record
   -> `render` (chat template / interleaving / label spans) -> decode images ->
   crops (one squashed base crop for pre-training sources, anyres for SFT) ->
   `packing.fit` (cut only between blocks) -> `batch.expand` (`<image>` ->
   vision-token slots). Failures become counted `Skipped` items.
3. `packing.PackIterDataset`: next-fit rows, or best-fit over a few open rows
   with `data.packing = "best_fit"` (or one sample per row with `max_segments=1`),
   static shapes, a counter vector per row; crops stay uint8 pixels. For DPO
   (`cfg.dpo.enabled`, `PipelineConfig.pairs`) every sample is a preference
   pair rendered as two chats and packed into two adjacent rows
   (bliperax/data/pairs.py); other sample kinds are skipped as unsupported.
4. `.batch(b)` then `.mp_prefetch(workers)`: each worker packs and batches a
   disjoint slice of the mixed stream; batches come back round-robin.

`GrainSource` is the iterator the trainer consumes: `next()` gives host-local
numpy arrays (`batch.MODEL_KEYS` + "labels"), `get_state()` a JSON-able dict
(Grain's state plus the running counters) that `set_state()` restores to the
exact next batch, and `stats()` the counters: skips by reason, truncations,
image caps, packing efficiency, samples per source.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import grain
import ml_collections
import numpy as np

from bliperax.data import batch as batch_lib
from bliperax.data import batch_spec
from bliperax.data import chat as chat_lib
from bliperax.data import image as image_lib
from bliperax.data import mixture
from bliperax.data import packing
from bliperax.data import pairs as pairs_lib
from bliperax.data import pipeline_stats as stats_lib
from bliperax.data import render as render_lib
from bliperax.data import schema
from bliperax.data import tokenizer as tokenizer_lib
from bliperax.models.config import XGenMMConfig
from bliperax.train import dpo_config  # no jax: the config block only

OUTPUT_KEYS = batch_spec.TRAIN_KEYS


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """Everything the pipeline needs, resolved from `cfg.data` (see `from_config`).

  Attributes:
    sources: the mixture.
    batch_size: rows per batch on this process (global batch / processes).
    limits: static row sizes (T, C, G, samples per row).
    seed: shuffle seed; shuffle: False keeps the stored order.
    num_epochs: passes over each source; None repeats forever.
    process_index, process_count: this process's slice of every source.
    render: text layout options (image cap, system text, templates).
    tokenizer: SentencePiece model path ("" = bundled); reference_compatible:
      see `tokenizer.Tokenizer`.
    worker_count: `mp_prefetch` processes (0: everything in this process).
    worker_buffer_size: batches each worker prepares ahead.
    thread_prefetch: batches a background thread of this process fetches ahead
      while the step runs, from the workers or, with `worker_count` 0, by
      preparing them itself (0: none).
    read_threads, read_buffer_size: Grain read threads (per worker) running
      `PrepareSample`, and how many samples they prepare ahead.
    pairs: preference pairs for DPO: row 2i chosen, row 2i+1 rejected
      (bliperax/data/pairs.py); `batch_size` must be even.
    packer: `data.packing`, "next_fit" (default) or "best_fit": each sample into the fullest of
      `open_rows` open rows it fits (bliperax/data/packing.py); fuller rows, slightly
      more samples in flight and reordered within `open_rows` rows.
  """
  sources: tuple[mixture.SourceSpec, ...]
  batch_size: int
  limits: batch_spec.Limits
  seed: int = 0
  shuffle: bool = True
  num_epochs: Optional[int] = None
  process_index: int = 0
  process_count: int = 1
  render: render_lib.RenderOptions = render_lib.RenderOptions()
  tokenizer: str = ""
  reference_compatible: bool = False
  worker_count: int = 0
  worker_buffer_size: int = 2
  thread_prefetch: int = 0
  read_threads: int = 2
  read_buffer_size: int = 16
  pairs: bool = False
  packer: str = "next_fit"
  open_rows: int = packing.DEFAULT_OPEN_ROWS


def from_config(cfg: ml_collections.ConfigDict, process_index: int = 0,
                process_count: int = 1) -> PipelineConfig:
  """Reads `cfg.data` (fields: experiments/data_example.py) and `cfg.train`."""
  d = cfg.data
  if cfg.train.global_batch % process_count:
    raise ValueError(f"global batch {cfg.train.global_batch} is not divisible by "
                     f"{process_count} processes")
  max_crops = int(d.get("max_crops", 4))
  limits = batch_spec.Limits(length=int(cfg.train.seq_len), crops=max_crops,
                          groups=int(d.get("max_groups", 0)) or max_crops,
                          segments=int(d.get("max_segments", 0)) if d.get("pack", True) else 1)
  system = d.get("system", chat_lib.SYSTEM_PROMPT)
  pairs = dpo_config.enabled(cfg)
  packer = d.get("packing", "next_fit")
  if packer not in packing.PACKERS:
    raise ValueError(f"data.packing must be one of {', '.join(packing.PACKERS)}, "
                     f"got {packer!r}")
  open_rows = int(d.get("open_rows", packing.DEFAULT_OPEN_ROWS))
  if open_rows < 1:
    raise ValueError(f"data.open_rows must be at least 1, got {open_rows}")
  if pairs and (cfg.train.global_batch // process_count) % 2:
    raise ValueError(f"DPO: {cfg.train.global_batch // process_count} rows per process "
                     "cannot hold whole pairs (2 rows each)")
  return PipelineConfig(
      sources=tuple(mixture.specs_from_config(d.sources)),
      batch_size=cfg.train.global_batch // process_count, limits=limits,
      seed=int(d.get("seed", cfg.get("seed", 0))), shuffle=bool(d.get("shuffle", True)),
      num_epochs=int(d.get("num_epochs", 0)) or None, process_index=process_index,
      process_count=process_count,
      render=render_lib.RenderOptions(max_images=int(d.get("max_images", 4)), system=system),
      tokenizer=d.get("tokenizer", ""), reference_compatible=bool(
          d.get("reference_compatible", False)),
      worker_count=int(d.get("worker_count", 0)),
      worker_buffer_size=int(d.get("worker_buffer_size", 2)),
      thread_prefetch=int(d.get("thread_prefetch", 0)),
      read_threads=int(d.get("read_threads", 2)),
      read_buffer_size=int(d.get("read_buffer_size", 16)), pairs=pairs,
      packer=packer, open_rows=open_rows)


def max_crops_per_image(model_cfg: XGenMMConfig, anyres: bool) -> int:
  """Crops (= groups) of the largest image: 1 + the largest grid, or 1."""
  return 1 + max(w * h for w, h in model_cfg.anyres_grids) if anyres else 1


class PrepareSample:
  """One source item -> `Prepared` (ready to pack) or `Skipped` (counted).

  Picklable (Grain workers receive it); the tokenizer loads lazily in each.
  """

  def __init__(self, source_index: int, anyres: bool, model_cfg: XGenMMConfig,
               limits: batch_spec.Limits, render: render_lib.RenderOptions,
               tokenizer: str = "", reference_compatible: bool = False,
               to_sample=None, pairs: bool = False):
    """`to_sample` maps a source item to a sample; default: `schema.decode`.
    `pairs`: prepare preference pairs (`pairs.Pair` examples) for DPO."""
    self.source_index = source_index
    self.anyres = anyres
    self.model_cfg = model_cfg
    self.limits = limits
    self.render = render
    self.tokenizer = tokenizer
    self.reference_compatible = reference_compatible
    self.to_sample = to_sample
    self.pairs = pairs

  def _skip(self, reason: str, message: str = "") -> stats_lib.Skipped:
    return stats_lib.Skipped(reason, self.source_index, message)

  def __call__(self, item: Any) -> stats_lib.Prepared | stats_lib.Skipped:
    try:
      sample = self.to_sample(item) if self.to_sample else schema.decode(item)
    except schema.InvalidSample as e:
      return self._skip(e.reason, e.message)
    except schema.RecordError as e:
      return self._skip(stats_lib.CORRUPT_RECORD, str(e))
    tokenizer = tokenizer_lib.load(self.tokenizer, self.reference_compatible)
    if self.pairs:
      return self._prepare_pair(sample, tokenizer)
    try:
      rendered = render_lib.render(sample, tokenizer, self.render)
    except render_lib.SkipSample as e:
      return self._skip(e.reason, str(e))
    except ValueError as e:  # e.g. text the tokenizer cannot split at the template's parts
      return self._skip(stats_lib.RENDER_ERROR, f"{sample.id}: {e}")
    try:
      images = [batch_lib.prepare_image(image_lib.decode_image(b), self.model_cfg, self.anyres)
                for b in rendered.images]
    except ValueError as e:
      return self._skip(stats_lib.BAD_IMAGE, f"{sample.id}: {e}")
    lat = self.model_cfg.resampler.num_latents
    try:
      fitted = packing.fit(rendered.ids, rendered.labels, images, lat, self.limits)
      if fitted is None:
        return self._skip(stats_lib.NO_LOSS_TOKENS, sample.id)
      example = batch_lib.expand(fitted.ids, fitted.labels, fitted.images,
                                 batch_spec.VisionDims.of(self.model_cfg))
    except ValueError as e:  # markers and images disagree after tokenization
      return self._skip(stats_lib.RENDER_ERROR, f"{sample.id}: {e}")
    capped = (sum(isinstance(x, bytes) for x in sample.items) - len(rendered.images)
              if rendered.capped else 0)
    return stats_lib.Prepared(example, self.source_index, fitted.truncated_tokens,
                              fitted.truncated_images, capped)

  def _prepare_pair(self, sample: schema.Sample, tokenizer: tokenizer_lib.Tokenizer
                    ) -> stats_lib.Prepared | stats_lib.Skipped:
    """A preference sample -> `Prepared` holding a `pairs.Pair` (the same steps as
    `__call__`, for both sequences; the images are decoded once)."""
    try:
      chosen, rejected = render_lib.render_pair(sample, tokenizer, self.render)
    except render_lib.SkipSample as e:
      return self._skip(e.reason, str(e))
    except ValueError as e:
      return self._skip(stats_lib.RENDER_ERROR, f"{sample.id}: {e}")
    try:
      images = [batch_lib.prepare_image(image_lib.decode_image(b), self.model_cfg, self.anyres)
                for b in chosen.images]
    except ValueError as e:
      return self._skip(stats_lib.BAD_IMAGE, f"{sample.id}: {e}")
    lat = self.model_cfg.resampler.num_latents
    try:
      fitted = pairs_lib.fit(chosen, rejected, images, lat, self.limits)
      if fitted is None:
        return self._skip(stats_lib.NO_LOSS_TOKENS, sample.id)
      pair = pairs_lib.expand(fitted, batch_spec.VisionDims.of(self.model_cfg))
    except ValueError as e:
      return self._skip(stats_lib.RENDER_ERROR, f"{sample.id}: {e}")
    return stats_lib.Prepared(pair, self.source_index, fitted.truncated_tokens,
                              fitted.truncated_images)


def check_limits(pc: PipelineConfig, model_cfg: XGenMMConfig) -> None:
  """Fails early when a row cannot hold one image of some source."""
  lat = model_cfg.resampler.num_latents
  for spec in pc.sources:
    crops = max_crops_per_image(model_cfg, spec.anyres)
    if crops > pc.limits.crops or crops > pc.limits.groups:
      raise ValueError(f"source {spec.name!r}: an image needs up to {crops} crops/groups "
                       f"but a row holds {pc.limits.crops} crops, {pc.limits.groups} groups "
                       "(raise data.max_crops / data.max_groups)")
    if crops * lat + 1 > pc.limits.length:
      raise ValueError(f"source {spec.name!r}: an image block has up to {crops * lat} "
                       f"tokens; seq_len {pc.limits.length} leaves no room for text")


def _prepare_for(pc: PipelineConfig, model_cfg: XGenMMConfig):
  def make(i: int, spec: mixture.SourceSpec) -> PrepareSample:
    to_sample = None
    if spec.tfds:
      from bliperax.data import tfds_source  # pylint: disable=g-import-not-at-top
      to_sample = tfds_source.mapping_of(tfds_source.TfdsSpec(**spec.tfds))
    return PrepareSample(i, spec.anyres, model_cfg, pc.limits, pc.render, pc.tokenizer,
                         pc.reference_compatible, to_sample, pairs=pc.pairs)
  return make


def _ensure_flags_parsed() -> None:
  # mp_prefetch reads absl flags; outside absl.app.run (pytest, notebooks) they
  # are unparsed and reading them raises UnparsedFlagAccessError. Marking them
  # parsed keeps every default.
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def build_dataset(pc: PipelineConfig, model_cfg: XGenMMConfig) -> grain.IterDataset:
  """The batched (and prefetched) Grain dataset; batches hold a "stats" array."""
  check_limits(pc, model_cfg)
  mixed = mixture.build(pc.sources, _prepare_for(pc, model_cfg), seed=pc.seed,
                        shuffle=pc.shuffle, process_index=pc.process_index,
                        process_count=pc.process_count, num_epochs=pc.num_epochs)
  read = grain.ReadOptions(num_threads=pc.read_threads, prefetch_buffer_size=pc.read_buffer_size)
  dims = batch_spec.VisionDims.of(model_cfg)
  counters = stats_lib.Counters([s.name for s in pc.sources])
  pad_id = tokenizer_lib.load(pc.tokenizer, pc.reference_compatible).pad_id
  row_type = pairs_lib.PairRow if pc.pairs else packing.Row
  ds = packing.PackIterDataset(mixed.to_iter_dataset(read), pc.limits, dims, counters,
                               row_type=row_type, packer=pc.packer, open_rows=pc.open_rows)
  # Batch inside the workers: one transfer per batch, not per row. (A pair row is
  # two batch rows.)
  ds = ds.batch(pc.batch_size // row_type.rows, drop_remainder=True,
                batch_fn=packing.CollateRows(pc.limits, dims, pad_id))
  if pc.worker_count > 0:
    _ensure_flags_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=pc.worker_count, per_worker_buffer_size=pc.worker_buffer_size))
  if pc.thread_prefetch > 0:
    ds = grain.experimental.ThreadPrefetchIterDataset(
        ds, prefetch_buffer_size=pc.thread_prefetch)
  return ds


class GrainSource:
  """The trainer's iterator: numpy batches, checkpointable state and counters."""

  def __init__(self, pc: PipelineConfig, model_cfg: XGenMMConfig,
               keys: Optional[Sequence[str]] = OUTPUT_KEYS):
    """`keys`: the arrays `next()` returns; None returns all (crop_valid, ...)."""
    self.config = pc
    self.counters = stats_lib.Counters([s.name for s in pc.sources])
    self._keys = None if keys is None else tuple(keys)
    self._dataset = build_dataset(pc, model_cfg)
    self._iterator = iter(self._dataset)
    self._totals = self.counters.zeros()

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._iterator)
    self._totals += np.asarray(batch.pop("stats")).sum(axis=0)
    if self._keys is None:
      return batch
    return {k: batch[k] for k in self._keys}

  def get_state(self) -> dict:
    """JSON-able: Grain's iterator state and the counters so far."""
    return {"grain": self._iterator.get_state(),
            "counts": self.counters.to_dict(self._totals)}

  def set_state(self, state: dict) -> None:
    self._iterator.set_state(state["grain"])
    self._totals = self.counters.from_dict(state.get("counts", {}))

  def stats(self) -> dict:
    """Counters so far plus packing efficiency and skip rate (`pipeline_stats.summary`)."""
    return stats_lib.summary(self.counters.to_dict(self._totals))

  def close(self) -> None:
    """Stops prefetch workers (also happens on garbage collection)."""
    close = getattr(self._iterator, "close", None)
    if close is not None:
      close()


def make_source(cfg: ml_collections.ConfigDict, model_cfg: XGenMMConfig,
                process_index: int = 0, process_count: int = 1) -> GrainSource:
  """The `cfg.data.kind == "grain"` source of the trainer."""
  return GrainSource(from_config(cfg, process_index, process_count), model_cfg)
