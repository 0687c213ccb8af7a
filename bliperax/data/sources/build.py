"""Drafts to shard records: images read and checked in worker processes, records
written in input order, every skip counted with its reason.

Each draft is first built with placeholder images, so a structural problem
(turn order, marker count, empty text) is found before any image file is
read; then its images are loaded and checked, and the sample is encoded.
Workers get drafts in chunks, and only a few chunks are in flight at once,
so memory stays bounded however large the input; results come back in
submission order, so the shards are the same for any number of workers.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import logging
import multiprocessing
from typing import Callable, Iterable, Iterator, Union

from bliperax.data import records
from bliperax.data import schema
from bliperax.data.sources import base
from bliperax.data.sources import images

_CHUNK = 16
_CHUNKS_IN_FLIGHT_PER_WORKER = 2
_EXAMPLES_PER_REASON = 3
# Stands in for every image while checking a draft's structure.
_PLACEHOLDER = b"\0"


@dataclasses.dataclass(frozen=True)
class BuildOptions:
  """How drafts become records.

  Attributes:
    image_check: "decode" (every pixel), "header" or "none"; see images.check.
    drop_bad_images: an interleaved document keeps its text when one of its
      images is unusable (the image is dropped and counted); otherwise the
      document is skipped.
  """
  image_check: str = "decode"
  drop_bad_images: bool = False


@dataclasses.dataclass(frozen=True)
class Written:
  """A sample that became a record."""
  id: str
  kind: str
  record: bytes
  dropped_images: tuple[tuple[str, str], ...] = ()  # (reason, message)


Outcome = Union[Written, base.Skipped]


def _map_images(fields: dict, fn: Callable[[images.ImageRef], object]) -> dict:
  """`fields` with every ImageRef replaced by `fn(ref)`; None drops a list entry."""
  out = {}
  for name, value in fields.items():
    if isinstance(value, images.ImageRef):
      value = fn(value)
    elif isinstance(value, (list, tuple)):
      value = [fn(v) if isinstance(v, images.ImageRef) else v for v in value]
      value = [v for v in value if v is not None]
    out[name] = value
  return out


def realize(item: base.Item, options: BuildOptions) -> Outcome:
  """Reads and checks a draft's images and encodes the sample."""
  if isinstance(item, base.Skipped):
    return item
  kind = schema.KINDS[item.kind]
  dropped = []

  def load(ref: images.ImageRef):
    try:
      return images.load(ref, options.image_check)
    except schema.InvalidSample as e:
      if options.drop_bad_images and item.kind == "interleaved":
        dropped.append((e.reason, e.message))
        return None
      raise

  try:
    kind(id=item.id, **_map_images(item.fields, lambda ref: _PLACEHOLDER))
    sample = kind(id=item.id, **_map_images(item.fields, load))
  except schema.InvalidSample as e:
    return base.Skipped(item.id, e.reason, e.message)
  return Written(item.id, item.kind, schema.encode(sample), tuple(dropped))


def _realize_chunk(chunk: list[base.Item], options: BuildOptions) -> list[Outcome]:
  return [realize(item, options) for item in chunk]


def realize_all(items: Iterable[base.Item], options: BuildOptions,
                workers: int) -> Iterator[Outcome]:
  """`realize` over `items`, in order, on `workers` processes (<= 1: here)."""
  if workers <= 1:
    for item in items:
      yield realize(item, options)
    return
  items = iter(items)
  # spawn, not fork: the parent may hold threads (pyarrow, tqdm) whose locks a
  # forked child would inherit in a locked state.
  context = multiprocessing.get_context("spawn")
  pending = collections.deque()
  with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
    while chunk := list(itertools.islice(items, _CHUNK)):
      pending.append(pool.submit(_realize_chunk, chunk, options))
      if len(pending) >= workers * _CHUNKS_IN_FLIGHT_PER_WORKER:
        yield from pending.popleft().result()
    while pending:
      yield from pending.popleft().result()


class Tally:
  """Counts of what a build wrote and skipped, with a few examples per reason."""

  def __init__(self):
    self.written = 0
    self.kinds = collections.Counter()
    self.skipped = collections.Counter()
    self.dropped_images = collections.Counter()
    self.examples = collections.defaultdict(list)
    self.input_errors = []

  def add(self, outcome: Outcome) -> None:
    if isinstance(outcome, Written):
      self.written += 1
      self.kinds[outcome.kind] += 1
      for reason, message in outcome.dropped_images:
        self.dropped_images[reason] += 1
        self._example(reason, outcome.id, f"image dropped from the document: {message}")
      return
    self.skipped[outcome.reason] += 1
    self._example(outcome.reason, outcome.id, outcome.message)

  def _example(self, reason: str, sample_id: str, message: str) -> None:
    if len(self.examples[reason]) < _EXAMPLES_PER_REASON:
      self.examples[reason].append(f"{sample_id}: {message}")
      logging.warning("skip (%s) %s: %s", reason, sample_id, message)

  def input_error(self, error: base.InputError) -> None:
    self.input_errors.append({"file": error.path, "error": error.message})
    logging.error("input error: %s", error)

  def summary(self) -> dict:
    return {
        "samples_written": self.written,
        "samples_skipped": sum(self.skipped.values()),
        "skipped": dict(sorted(self.skipped.items())),
        "images_dropped": dict(sorted(self.dropped_images.items())),
        "kinds": dict(sorted(self.kinds.items())),
        "input_errors": self.input_errors,
        "skip_examples": dict(sorted(self.examples.items())),
    }


def read_all(reader, files: Iterable[str], options: base.ReaderOptions,
             tally: Tally) -> Iterator[base.Item]:
  """Every item of every file; a file that breaks off is noted and left."""
  for path in files:
    try:
      yield from reader(path, options)
    except base.InputError as e:
      tally.input_error(e)
    except OSError as e:
      tally.input_error(base.InputError(path, f"{type(e).__name__}: {e}"))


def build(reader, files: Iterable[str], writer: records.ShardSetWriter,
          reader_options: base.ReaderOptions, options: BuildOptions, workers: int = 1,
          progress: Callable[[], None] | None = None) -> Tally:
  """Writes every valid sample of `files` to `writer` (not committed).

  Args:
    reader: `reader(path, reader_options)` yielding drafts and skips.
    files: input files, read in order.
    writer: where records go.
    reader_options: passed to the reader.
    options: image check and drop policy.
    workers: processes for image loading and encoding (<= 1: this one).
    progress: called once per input record.
  """
  tally = Tally()
  items = read_all(reader, files, reader_options, tally)
  for outcome in realize_all(items, options, workers):
    if isinstance(outcome, Written):
      writer.write(outcome.record)
    tally.add(outcome)
    if progress is not None:
      progress()
  return tally
