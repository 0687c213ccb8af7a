"""HF checkpoint directories <-> bliperax parameters, streamed tensor by tensor.

`load_xgenmm` reads a released-layout xGen-MM directory; `save_xgenmm` writes one the
reference code loads; `load_backbones` starts a fresh xGen-MM from HF SigLIP and Phi-3
checkpoints. Every tensor is validated (present, expected, shape, floating dtype)
before any is converted, and errors name the tensor and file; the vocabulary rows,
which only the checkpoint knows, are the count its vocabulary tensors agree on, so a
wrong one is the one named. Exports check every parameter's shape against the config.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
import pathlib
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import jax
import numpy as np
import tqdm

from bliperax import atomic
from bliperax.convert import hf_config, layout, mapping
from bliperax.convert.safetensors_io import (DTYPE_NAMES, FLOAT_DTYPES, INDEX_NAME, ITEMSIZES,
                                             SINGLE_NAME, CheckpointError, CheckpointReader,
                                             write_file)
from bliperax.models import xgenmm
from bliperax.models.config import XGenMMConfig

Flat = Dict[str, np.ndarray]
_HEAD_BIAS = "lm/head/bias"
# Parameters whose HF tensors have the vocabulary rows as their first axis.
_VOCAB_PATHS = frozenset({"lm/embed/embedding", "lm/head/kernel", _HEAD_BIAS})


def _read_json(path: pathlib.Path) -> dict:
  if not path.exists():
    raise CheckpointError(f"{path}: missing (an HF checkpoint directory needs its config.json)")
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path}: not valid JSON ({e})") from e


@functools.lru_cache(maxsize=8)
def _shape_map(cfg: XGenMMConfig) -> Dict[str, Tuple[int, ...]]:
  """Parameter shapes of `cfg` in its layout; shared, do not modify.

  Cached because tracing a full-size model's init takes seconds.
  """
  flat = layout.flatten(xgenmm.abstract_params(cfg))
  return {k: tuple(v.shape) for k, v in flat.items()}


def tensor_specs(cfg: XGenMMConfig) -> List[Tuple[str, Tuple[int, ...]]]:
  """(HF name, HF shape) of every tensor of an xGen-MM checkpoint, in checkpoint order.

  Computed from abstract shapes (`jax.eval_shape`), so a full-size model costs nothing.
  """
  shapes = _shape_map(cfg.with_numerics(scan_layers=False))
  return [(r.hf, mapping.hf_shape(r, [shapes[p] for p in r.paths]))
          for r in mapping.xgenmm_rules(cfg)]


def check_tensors(reader: CheckpointReader, rules: List[mapping.Rule],
                  shapes: Dict[str, Tuple[int, ...]], ignore: Iterable[str] = ()) -> None:
  """Raises CheckpointError on missing, unexpected, mis-shaped or non-float tensors."""
  expected = {r.hf for r in rules}
  present = set(reader.keys())
  missing = sorted(expected - present)
  if missing:
    more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
    raise CheckpointError(f"{reader.dir}: missing tensor(s) {', '.join(missing[:5])}{more}")
  unexpected = sorted(n for n in present - expected if not any(n.startswith(p) for p in ignore))
  if unexpected:
    more = f" (and {len(unexpected) - 5} more)" if len(unexpected) > 5 else ""
    raise CheckpointError(f"{reader.dir}: unexpected tensor(s) {', '.join(unexpected[:5])}{more}"
                          " — is the config right for this checkpoint?")
  for rule in rules:
    dt = reader.dtype_name(rule.hf)
    if dt not in FLOAT_DTYPES:
      raise CheckpointError(f"{reader.file_of(rule.hf)}: tensor {rule.hf!r} has dtype {dt}; "
                            f"expected one of {', '.join(FLOAT_DTYPES)}")
    want = mapping.hf_shape(rule, [shapes[p] for p in rule.paths])
    got = reader.shape(rule.hf)
    if got != want:
      raise CheckpointError(f"{reader.file_of(rule.hf)}: tensor {rule.hf!r} has shape "
                            f"{list(got)}, expected {list(want)} for this config")


def _vocab_rows(reader: CheckpointReader, rules: List[mapping.Rule],
               config_rows: Optional[int] = None) -> Optional[int]:
  """The vocabulary rows of a checkpoint: the count its vocabulary tensors agree on.

  The tables may be padded beyond what config.json says (xGen-MM's `vocab_size` is the
  logit width), so the checkpoint decides. Every vocabulary tensor (embedding, head,
  head bias) is consulted, not just one: the count fixes the expected shape of all of
  them, so taking it from a wrong tensor would make `check_tensors` blame the right
  ones. The majority wins, and `check_tensors` then names the odd one out; a tie (no
  head bias) is broken by `config_rows`.

  Args:
    reader: the checkpoint.
    rules: its rules; those of vocabulary parameters say which tensors to read.
    config_rows: the rows config.json implies, for breaking a tie.
  Returns:
    The row count, or None when no vocabulary tensor is present (the config decides,
    and `check_tensors` reports the missing tensors).
  Raises:
    CheckpointError: the tensors disagree and nothing says which one is right.
  """
  rows = {r.hf: reader.shape(r.hf)[0] for r in rules
          if _VOCAB_PATHS.intersection(r.paths) and r.hf in reader and reader.shape(r.hf)}
  if not rows:
    return None
  counts = collections.Counter(rows.values())
  top = max(counts.values())
  leaders = [n for n, c in counts.items() if c == top]
  if len(leaders) == 1:
    return leaders[0]
  if config_rows in leaders:
    return config_rows
  first, second = [next(name for name, n in rows.items() if n == lead) for lead in leaders[:2]]
  raise CheckpointError(
      f"{reader.file_of(first)}: vocabulary tensors disagree: {first!r} has {rows[first]} rows "
      f"but {second!r} has {rows[second]} ({reader.file_of(second)}), and config.json "
      f"implies {config_rows}, so neither is known to be right")


def check_params(flat: Flat, rules: List[mapping.Rule],
                 shapes: Dict[str, Tuple[int, ...]]) -> None:
  """Raises CheckpointError for a parameter whose shape is not the config's.

  Export writes whatever shapes the parameters have; without this check a wrong one
  would make a checkpoint that only fails when loaded, blamed on whichever tensor the
  loader compares it with.
  """
  for rule in rules:
    for path in rule.paths:
      got = tuple(np.shape(flat[path]))  # np.shape: no fetch of a device array
      if got != shapes[path]:
        raise CheckpointError(f"parameter {path!r} (tensor {rule.hf!r}) has shape {list(got)}, "
                              f"expected {list(shapes[path])} for this config")


class _Sink:
  """Collects converted arrays under their final parameter paths.

  Unscanned, each array is stored as given. Scanned (`nn.scan` layout), the first layer
  of a stack allocates the whole stacked array and every layer is copied straight into
  its slot, so stacking never needs the per-layer arrays and the stack at once (which
  `layout.stack_layers` would, doubling peak memory on a full-size model).
  """

  def __init__(self, shapes: Dict[str, Tuple[int, ...]], scan: bool):
    self.scan = scan
    self.stacked = layout.stacked_shapes(shapes) if scan else {}
    self.flat: Flat = {}

  def put(self, path: str, array: np.ndarray, source: str = "") -> None:
    split = layout.split_layer_path(path) if self.scan else None
    if split is None:
      self.flat[path] = np.ascontiguousarray(array)
      return
    key, i = split
    buf = self.flat.get(key)
    if buf is None:
      buf = self.flat[key] = np.empty(self.stacked[key], array.dtype)
    elif buf.dtype != array.dtype:
      raise CheckpointError(
          f"{source or path}: dtype {array.dtype} differs from {buf.dtype} of the other layers "
          f"stacked into {key}; convert with an explicit dtype")
    buf[i] = array


def _convert(reader: CheckpointReader, rules: List[mapping.Rule],
             shapes: Dict[str, Tuple[int, ...]], dtype: Optional[str], progress: bool,
             sink: Optional[_Sink] = None) -> Flat:
  """Reads and transforms one tensor at a time into `sink` (one copy of the weights).

  Each tensor is read into a fresh array (`CheckpointReader.read`, not the memory
  map) and only transient per-tensor copies are made (cast, transpose), so the peak is
  the converted weights plus about two of the largest tensor.
  """
  sink = sink or _Sink(shapes, scan=False)
  cast = np.dtype(jax.numpy.dtype(dtype)) if dtype else None
  total = sum(int(np.prod(reader.shape(r.hf), dtype=np.int64)) * ITEMSIZES[reader.dtype_name(r.hf)]
              for r in rules)
  bar = tqdm.tqdm(total=total, desc=f"read {reader.dir.name}", unit="B", unit_scale=True,
                  unit_divisor=1024, disable=not progress)
  with bar:
    for rule in rules:
      tensor = reader.read(rule.hf)
      bar.update(tensor.nbytes)
      if cast is not None and tensor.dtype != cast:
        tensor = tensor.astype(cast)
      parts = mapping.to_params(rule, tensor, [shapes[p] for p in rule.paths])
      for path, part in zip(rule.paths, parts):
        sink.put(path, part, source=f"{reader.file_of(rule.hf)}: tensor {rule.hf!r}")
      del tensor, parts  # release this tensor before reading the next one
  return sink.flat


def _parse_config(path: pathlib.Path, parse: Callable, *args):
  """Runs a config parser; its ValueErrors become CheckpointErrors naming the file."""
  try:
    return parse(*args)
  except (ValueError, TypeError, KeyError) as e:
    raise CheckpointError(f"{path}: {e}") from e


def load_xgenmm(src: os.PathLike, dtype: Optional[str] = None, scan_layers: bool = False,
                progress: bool = False) -> Tuple[dict, XGenMMConfig, dict]:
  """Reads an HF xGen-MM directory.

  Every tensor is validated (names, shapes, floating dtype) before any is read, so a
  bad checkpoint fails fast with the tensor and file named.

  Args:
    src: directory with config.json and model.safetensors or shards + index.
    dtype: cast every tensor to this dtype ('float32', 'bfloat16'); None keeps each
      tensor's own dtype (lossless).
    scan_layers: return the stacked (nn.scan) layout.
    progress: show a progress bar.
  Returns:
    (params nested dict of numpy arrays, model config, the original config.json dict).
  Raises:
    CheckpointError: the directory, its config or one of its tensors is unusable.
  """
  src = pathlib.Path(src)
  reader = CheckpointReader(src)
  config_path = src / "config.json"
  config = _read_json(config_path)
  # A first parse gives the tensor names; the vocabulary rows then come from the tensors.
  draft = _parse_config(config_path, hf_config.xgenmm_from_hf, config)
  rows = _vocab_rows(reader, mapping.lm_rules(draft), draft.text.vocab_rows)
  cfg = _parse_config(config_path, hf_config.xgenmm_from_hf, config, rows)
  rules = mapping.xgenmm_rules(cfg)
  shapes = _shape_map(cfg)
  check_tensors(reader, rules, shapes)
  flat = _convert(reader, rules, shapes, dtype, progress, _Sink(shapes, scan_layers))
  if scan_layers:
    cfg = cfg.with_numerics(scan_layers=True)
  return layout.unflatten(flat), cfg, config


def _fresh_params(cfg: XGenMMConfig, rng: jax.Array, paths: List[str]) -> Flat:
  """Initial values of only `paths` (unscanned names), without materialising the model.

  The whole model's init is traced, but only the requested leaves are outputs of the
  jitted function, so XLA drops every other initialiser as dead code: a 4B model's new
  pieces cost their own size (about 0.4 GB), not 17 GB. The scanned layout is traced
  because one layer body compiles about twice as fast as unrolled layers.
  """
  scan_cfg = cfg.with_numerics(scan_layers=True)
  keys = sorted({(layout.split_layer_path(p) or (p, None))[0] for p in paths})

  def init(key):
    flat = layout.flatten(xgenmm.init_params(scan_cfg, key))
    return {k: flat[k] for k in keys}

  stacked = {k: np.asarray(jax.device_get(v)) for k, v in jax.jit(init)(rng).items()}
  out: Flat = {}
  for p in paths:
    split = layout.split_layer_path(p)
    out[p] = stacked[p] if split is None else stacked[split[0]][split[1]]
  return out


def load_backbones(siglip: os.PathLike, phi3: os.PathLike, rng: jax.Array,
                   dtype: str = "float32", scan_layers: bool = False,
                   progress: bool = False) -> Tuple[dict, XGenMMConfig, dict]:
  """A fresh xGen-MM from HF SigLIP (vision tower) and Phi-3 checkpoints.

  The resampler, the added vocabulary rows (`additional_embedding`, `additional_fc`)
  and the head bias (zero: Phi-3's head has none) are newly initialised; everything
  else is copied, cast to `dtype`. The pre-training starting point.

  Returns:
    (params, model config, an explicit xGen-MM config.json dict for exports).
  Raises:
    CheckpointError: a directory, config or tensor is unusable.
  """
  siglip, phi3 = pathlib.Path(siglip), pathlib.Path(phi3)
  s_reader, p_reader = CheckpointReader(siglip), CheckpointReader(phi3)
  s_conf = _read_json(siglip / "config.json")
  p_conf = _read_json(phi3 / "config.json")
  v_conf = s_conf.get("vision_config", s_conf)  # full SiglipModel or SiglipVisionModel
  vision = _parse_config(siglip / "config.json", hf_config.vision_from_hf, v_conf)
  # Hub SigLIP checkpoints (full SiglipModel, or SiglipVisionModel saved by transformers
  # 4.x) prefix the tower with `vision_model.`; transformers 5.x saves a
  # SiglipVisionModel without it.
  prefix = next((p for p in ("vision_model.", "") if p + "head.probe" in s_reader), None)
  if prefix is None:
    raise CheckpointError(f"{siglip}: no vision_model.head.probe or head.probe tensor; the "
                          "SigLIP vision checkpoint must include its pooling head")
  # Phi-3's vocab_size is its table rows: it breaks an embedding/head tie.
  draft = _parse_config(phi3 / "config.json", hf_config.text_from_hf, p_conf)
  lm_draft = mapping.lm_rules(XGenMMConfig(text=draft), prefix="", decoupled=False,
                              head_bias=False)
  rows = _vocab_rows(p_reader, lm_draft, draft.vocab_rows)
  text = _parse_config(phi3 / "config.json", hf_config.text_from_hf, p_conf, rows)
  base = XGenMMConfig()
  cfg = XGenMMConfig(vision=vision, text=text,
                     resampler=dataclasses.replace(base.resampler, width=vision.width,
                                                   out_width=text.width))
  cfg = cfg.with_numerics(param_dtype=dtype)
  shapes = _shape_map(cfg)
  v_rules = mapping.vision_rules(cfg, prefix=prefix)
  l_rules = mapping.lm_rules(cfg, prefix="", decoupled=False, head_bias=False)
  check_tensors(s_reader, v_rules, shapes, ignore=("text_model.", "logit_scale", "logit_bias"))
  check_tensors(p_reader, l_rules, shapes)
  copied = {p for r in v_rules + l_rules for p in r.paths}
  fresh = sorted(set(shapes) - copied - {_HEAD_BIAS})
  sink = _Sink(shapes, scan_layers)
  for path, value in _fresh_params(cfg, rng, fresh).items():
    sink.put(path, value)
  sink.put(_HEAD_BIAS, np.zeros(shapes[_HEAD_BIAS], np.dtype(jax.numpy.dtype(dtype))))
  _convert(s_reader, v_rules, shapes, dtype, progress, sink)
  _convert(p_reader, l_rules, shapes, dtype, progress, sink)
  if scan_layers:
    cfg = cfg.with_numerics(scan_layers=True)
  return layout.unflatten(sink.flat), cfg, hf_config.xgenmm_to_hf(cfg, dtype)


def _plan_shards(rules: List[mapping.Rule], sizes: List[int], max_bytes: int) -> List[List[int]]:
  shards: List[List[int]] = [[]]
  used = 0
  for i, size in enumerate(sizes):
    if shards[-1] and used + size > max_bytes:
      shards.append([])
      used = 0
    shards[-1].append(i)
    used += size
  return shards


def save_xgenmm(params: dict, cfg: XGenMMConfig, dst: os.PathLike,
                source_config: Optional[dict] = None, max_shard_bytes: int = 5 * 2**30,
                overwrite: bool = False, progress: bool = False,
                dtype: Optional[str] = None) -> pathlib.Path:
  """Writes params as an HF xGen-MM directory (safetensors shards + index + config.json).

  Streams one tensor at a time into a temporary directory beside `dst` that is renamed
  to `dst` only when complete, so a failure never leaves a half-written checkpoint
  (and, with `overwrite`, leaves the old one in place). Only the fused or transposed
  tensor being written is copied; `params` may be numpy or jax arrays, scanned or not.

  Args:
    params: bliperax parameters (nested dict).
    cfg: their model config.
    dst: output directory; must be absent or empty unless `overwrite`.
    source_config: the original config.json dict, whose extra fields are kept.
    max_shard_bytes: start a new shard before a tensor would exceed this; one shard
      is written as model.safetensors, several as model-0000k-of-0000n plus an index.
    overwrite: replace a non-empty `dst`.
    progress: show a progress bar.
    dtype: cast every tensor to this dtype on the fly; None keeps the params' dtypes.
  Returns:
    `dst`.
  Raises:
    CheckpointError: `dst` is in the way, or params do not match the config.
  """
  dst = pathlib.Path(dst)
  if atomic.is_occupied(dst) and not overwrite:
    raise CheckpointError(f"{dst}: exists and is not empty (pass overwrite to replace it)")
  flat = layout.flatten(params)
  if layout.is_scanned(flat):
    flat = layout.unstack_layers(flat)  # views of the stacked arrays, no copy
  cfg = cfg.with_numerics(scan_layers=False)
  rules = mapping.xgenmm_rules(cfg)
  known = {p for r in rules for p in r.paths}
  missing = sorted(known - set(flat))
  if missing:
    raise CheckpointError(f"parameters lack {', '.join(missing[:5])}")
  extra = sorted(set(flat) - known)
  if extra:
    raise CheckpointError(f"parameters have no HF name: {', '.join(extra[:5])}")
  check_params(flat, rules, _shape_map(cfg))
  cast = np.dtype(jax.numpy.dtype(dtype)) if dtype else None
  dtypes = {}
  for r in rules:
    # `.dtype`, not np.asarray(...).dtype: the latter would fetch device arrays whole.
    kinds = {np.dtype(flat[p].dtype) for p in r.paths}
    if len(kinds) > 1:
      raise CheckpointError(f"tensor {r.hf!r}: its parts {', '.join(r.paths)} have mixed dtypes "
                            f"{sorted(map(str, kinds))}; pass a dtype")
    dtypes[r.hf] = cast if cast is not None else kinds.pop()
    if dtypes[r.hf] not in DTYPE_NAMES:
      raise CheckpointError(f"tensor {r.hf!r}: dtype {dtypes[r.hf]} cannot be written to "
                            "safetensors here; pass a dtype")
  shapes = {r.hf: mapping.hf_shape(r, [np.shape(flat[p]) for p in r.paths]) for r in rules}
  sizes = [int(np.prod(shapes[r.hf], dtype=np.int64)) * dtypes[r.hf].itemsize for r in rules]
  plan = _plan_shards(rules, sizes, max_shard_bytes)

  with atomic.atomic_directory(dst) as tmp, tqdm.tqdm(
      total=sum(sizes), desc=f"write {dst.name}", unit="B", unit_scale=True,
      unit_divisor=1024, disable=not progress) as bar:
    weight_map = {}
    for k, idx in enumerate(plan):
      fname = SINGLE_NAME if len(plan) == 1 else (
          f"model-{k + 1:05d}-of-{len(plan):05d}.safetensors")
      chosen = [rules[i] for i in idx]

      def tensors(chosen=chosen):
        for r in chosen:
          tensor = mapping.to_hf(r, [np.asarray(flat[p]) for p in r.paths])
          if tensor.dtype != dtypes[r.hf]:
            tensor = tensor.astype(dtypes[r.hf])
          yield r.hf, tensor
          bar.update(tensor.nbytes)

      write_file(tmp / fname, [(r.hf, dtypes[r.hf], shapes[r.hf]) for r in chosen], tensors())
      weight_map.update({r.hf: fname for r in chosen})
    if len(plan) > 1:
      index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
      (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2))
    dtype_name = str(dtypes[rules[0].hf])
    config = hf_config.xgenmm_to_hf(cfg, dtype_name, source=source_config)
    config["torch_dtype"] = dtype_name  # a kept source value would be stale after a cast
    (tmp / "config.json").write_text(json.dumps(config, indent=1))
  return dst
