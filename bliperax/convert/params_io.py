"""bliperax parameter checkpoints: an Orbax tree of weights plus a JSON model card.

Layout of a directory written by `save_params`:
  params/         Orbax PyTree checkpoint (OCDBT) of numpy/jax arrays; restorable with
                  `ocp.StandardCheckpointer`
  bliperax.json   {"format": 1, "model": <XGenMMConfig dict>, "hf_config": <source config.json>,
                   "source": <what it was made from, optional: an export's workdir and step>}
The directory appears only when complete (written beside it, then renamed); in a
bucket, where nothing renames, the card is written last and marks it complete.

Memory (one copy of the weights, measured on a float32 4B model: 16.2 GiB of weights,
16.7-17.1 GiB peak RSS either way): Orbax's defaults would hold about three copies of
a numpy tree while saving (its numpy handler deep-copies every array to guard against
concurrent mutation, and zstd-compressed chunks of every array are buffered until
commit), and another copy of each array above 2 GiB that it splits into chunks.
Saving is synchronous here, so nothing can mutate the arrays meanwhile: the handler
below writes straight from them, uncompressed (trained weights barely compress) and
unchunked. Restoring goes in batches, since TensorStore reads every array into a
buffer of its own first (see `load_params`).
"""
from __future__ import annotations

import json
import os
import pathlib
import threading
from typing import Optional, Tuple

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import type_handlers
import tqdm
from etils import epath

from bliperax import atomic
from bliperax import paths
from bliperax.convert.safetensors_io import CheckpointError
from bliperax.models import config as config_lib
from bliperax.models.config import XGenMMConfig

CARD = "bliperax.json"
FORMAT = 1


def _numpy_handler() -> type_handlers.NumpyHandler:
  """Orbax's numpy handler, told not to copy host arrays where the version allows it."""
  try:
    return type_handlers.NumpyHandler(deepcopy_host_arrays=False)
  except TypeError:  # orbax versions without the option (seen on a CUDA image): copies
    return type_handlers.NumpyHandler()


def _handler() -> ocp.PyTreeCheckpointHandler:
  """PyTree handler that writes numpy leaves in place (no deep copy, no compression)."""
  # Orbax's own handlers for everything else (jax arrays from a training run, scalars).
  registry = type_handlers.create_type_handler_registry(
      (np.ndarray, _numpy_handler()),
      *[(ty, type_handlers.get_type_handler(ty)) for ty in (jax.Array, np.number, int, float)])
  return ocp.PyTreeCheckpointHandler(type_handler_registry=registry, use_ocdbt=True,
                                     use_compression=False)


class _DiskProgress:
  """A progress bar fed by the bytes that appear under a directory.

  Orbax writes the whole tree in one call with no callback, so the only honest
  measure of its progress is what has reached the disk.
  """

  def __init__(self, directory: pathlib.Path, total: int, desc: str, enabled: bool):
    self._dir, self._stop = directory, threading.Event()
    self._bar = tqdm.tqdm(total=total, desc=desc, unit="B", unit_scale=True,
                          unit_divisor=1024, disable=not enabled)
    self._thread = threading.Thread(target=self._poll, daemon=True) if enabled else None

  def _size(self) -> int:
    total = 0
    for root, _, files in os.walk(self._dir):
      for f in files:
        try:
          total += os.path.getsize(os.path.join(root, f))
        except OSError:  # a temporary file renamed away meanwhile
          pass
    return total

  def _poll(self):
    while not self._stop.wait(0.5):
      self._bar.n = min(self._size(), self._bar.total)
      self._bar.refresh()

  def __enter__(self):
    if self._thread:
      self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    if self._thread:
      self._thread.join()
    if exc[0] is None:
      self._bar.n = self._bar.total
    self._bar.close()


def save_params(dst: os.PathLike, params: dict, cfg: XGenMMConfig,
                hf_config: Optional[dict] = None, overwrite: bool = False,
                progress: bool = False, source: Optional[dict] = None) -> epath.Path:
  """Writes `params` (numpy or jax arrays) and the model card to the directory `dst`.

  Args:
    dst: output directory, local or in a bucket (`gs://`); must be absent or empty
      unless `overwrite`.
    params: nested parameter dict (boxed logical-axis metadata is unboxed).
    cfg: the model config, recorded in the card (scan layout included).
    hf_config: the HF config.json the weights came from, kept for a later export.
    overwrite: replace a non-empty `dst` (only once the new one is complete).
    progress: show a progress bar (bytes written; local destinations).
    source: what the parameters were made from (an export's training workdir and
      step), kept in the card as "source" so a run started from them can say so.
  Returns:
    `dst` as an epath.Path (absolute when local).
  Raises:
    CheckpointError: `dst` is in the way.
  """
  dst = paths.resolve(dst)
  if atomic.is_occupied(dst) and not overwrite:
    raise CheckpointError(f"{dst}: exists and is not empty (pass overwrite to replace it)")
  params = flax_unbox(params)
  card = {"format": FORMAT, "model": config_lib.to_dict(cfg), "hf_config": hf_config}
  if source is not None:
    card["source"] = source
  if paths.is_remote(dst):
    _save_remote(dst, params, card)
    return dst
  with atomic.atomic_directory(dst) as tmp:
    total = sum(int(np.prod(np.shape(x), dtype=np.int64)) * np.dtype(x.dtype).itemsize
                for x in jax.tree.leaves(params))
    with _DiskProgress(tmp, total, f"write {dst.name}", progress), \
        ocp.Checkpointer(_handler()) as ckptr:
      _save_tree(ckptr, tmp / "params", params)
    (tmp / CARD).write_text(json.dumps(card, indent=1))
  return dst


def _save_tree(ckptr: ocp.Checkpointer, directory, params: dict) -> None:
  # ocdbt_target_data_file_size=0: Orbax would otherwise cut every array above
  # 2 GiB (stacked layers, e.g. [32, 3072, 8192]) into chunks, and TensorStore
  # copies a chunked array whole before writing (measured: +3 GiB per 3 GiB
  # array). Unchunked, it writes straight from the array.
  ckptr.save(directory, args=ocp.args.PyTreeSave(params, ocdbt_target_data_file_size=0))


def _save_remote(dst, params: dict, card: dict) -> None:
  """Writes into a bucket, where no directory renames: the card is the commit.

  `read_card` accepts only a folder with a card, and the card is written last, so
  an interrupted write (or replacement: the old card goes first) is never taken
  for a checkpoint.
  """
  paths.remove_tree(dst / CARD)
  paths.remove_tree(dst / "params")
  dst.mkdir(parents=True, exist_ok=True)
  with ocp.Checkpointer(_handler()) as ckptr:
    _save_tree(ckptr, dst / "params", params)
  (dst / CARD).write_text(json.dumps(card, indent=1))


def flax_unbox(params):
  """Strips flax logical-partitioning boxes (Orbax would otherwise save them as nodes)."""
  return flax.linen.meta.unbox(params)


def read_card(src: os.PathLike) -> Tuple[XGenMMConfig, Optional[dict]]:
  src = paths.resolve(src)
  card_path = src / CARD
  if not card_path.exists():
    raise CheckpointError(f"{src}: not a bliperax parameter checkpoint (no {CARD})")
  try:
    card = json.loads(card_path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{card_path}: not valid JSON ({e})") from e
  if not (src / "params").is_dir():
    raise CheckpointError(f"{src}: has {CARD} but no params/ directory")
  if card.get("format") != FORMAT:
    raise CheckpointError(f"{card_path}: unsupported format {card.get('format')!r}")
  return config_lib.from_dict(card["model"]), card.get("hf_config")


def load_params(src: os.PathLike, progress: bool = False
                ) -> Tuple[dict, XGenMMConfig, Optional[dict]]:
  """Returns (params as numpy arrays, model config, source HF config or None).

  Restores host numpy arrays in their stored dtypes, in batches of about
  `_RESTORE_BATCH_BYTES` (the other leaves are Orbax placeholders). TensorStore reads
  each array into a buffer of its own and copies it out, and Orbax would read every
  array at once: a 4B model with stacked layers then peaked above 27 GB. In batches
  the transient is one batch (or the largest array), on top of one copy of the weights.
  """
  src = paths.resolve(src)  # local or gs://
  cfg, hf_config = read_card(src)
  return restore_arrays(src / "params", progress=progress), cfg, hf_config


def restore_arrays(directory: os.PathLike, subtree: Optional[str] = None,
                   progress: bool = False) -> dict:
  """The arrays of an Orbax PyTree checkpoint as host numpy arrays, in batches.

  Args:
    directory: the checkpoint folder (`params/` of a parameter checkpoint, or a
      training step's `state/`), local or gs://.
    subtree: read only this top-level key (e.g. "params" of a train state: the
      optimizer state, twice the parameters' bytes, is never read) and return it.
    progress: show a progress bar (bytes read).
  """
  directory = paths.resolve(directory)
  # The handler, not a Checkpointer: a training step's `state/` keeps its
  # checkpoint-level metadata one folder up, and a Checkpointer warns about that.
  handler = ocp.PyTreeCheckpointHandler()
  try:
    meta = handler.metadata(directory)
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_array_meta)
    wanted = [subtree is None or _top_key(path) == subtree for path, _ in leaves]
    if subtree is not None and not any(wanted):
      raise CheckpointError(f"{directory}: no {subtree!r} in the checkpoint")
    leaves = [m for _, m in leaves]
    sizes = [_nbytes(m) if w and _is_array_meta(m) else 0 for m, w in zip(leaves, wanted)]
    out = [m if w else ocp.PLACEHOLDER for m, w in zip(leaves, wanted)]
    bar = tqdm.tqdm(total=sum(sizes), desc=f"read {directory.parent.name}", unit="B",
                    unit_scale=True, unit_divisor=1024, disable=not progress)
    with bar:
      for batch in _batches(sizes, _RESTORE_BATCH_BYTES):
        chosen = set(batch)
        item = [np.empty(m.shape, m.dtype) if i in chosen else ocp.PLACEHOLDER
                for i, m in enumerate(leaves)]
        args = [ocp.RestoreArgs(restore_type=np.ndarray) if i in chosen else ocp.PLACEHOLDER
                for i in range(len(leaves))]
        got = handler.restore(directory, args=ocp.args.PyTreeRestore(
            item=jax.tree.unflatten(treedef, item),
            restore_args=jax.tree.unflatten(treedef, args)))
        got = jax.tree.leaves(got, is_leaf=lambda x: x is ocp.PLACEHOLDER)
        assert len(got) == len(leaves), "restored tree does not match the metadata"
        for i in batch:
          out[i] = got[i]
        bar.update(sum(sizes[i] for i in batch))
  finally:
    handler.close()
  restored = jax.tree.unflatten(treedef, out)
  return restored[subtree] if subtree is not None else restored


def _top_key(path) -> str:
  entry = path[0]
  return str(getattr(entry, "key", getattr(entry, "name", entry)))


_RESTORE_BATCH_BYTES = 1 << 30


def _is_array_meta(m) -> bool:
  return hasattr(m, "shape") and hasattr(m, "dtype")


def _nbytes(m) -> int:
  return int(np.prod(m.shape, dtype=np.int64)) * np.dtype(m.dtype).itemsize


def _batches(sizes, limit: int):
  """Consecutive index batches of arrays totalling at most `limit` bytes (or one array)."""
  batch, used = [], 0
  for i, size in enumerate(sizes):
    if size == 0:
      continue
    if batch and used + size > limit:
      yield batch
      batch, used = [], 0
    batch.append(i)
    used += size
  if batch:
    yield batch
