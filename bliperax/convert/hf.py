"""HF checkpoint directories <-> bliperax parameters, streamed tensor by tensor.

`load_xgenmm` reads a released-layout xGen-MM directory; `save_xgenmm` writes one the
reference code loads; `load_backbones` starts a fresh xGen-MM from HF SigLIP and Phi-3
checkpoints. Every tensor is validated (present, expected, shape, floating dtype)
before any is converted, and errors name the tensor and file.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import tempfile
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import jax
import numpy as np
import tqdm

from bliperax.convert import hf_config, layout, mapping
from bliperax.convert.safetensors_io import (FLOAT_DTYPES, INDEX_NAME, SINGLE_NAME,
                                             CheckpointError, CheckpointReader, write_file)
from bliperax.models import xgenmm
from bliperax.models.config import XGenMMConfig

Flat = Dict[str, np.ndarray]
_EMBED = "vlm.lang_model.model.embed_tokens.weight"


def _read_json(path: pathlib.Path) -> dict:
  if not path.exists():
    raise CheckpointError(f"{path}: missing (an HF checkpoint directory needs its config.json)")
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path}: not valid JSON ({e})") from e


def _shape_map(cfg: XGenMMConfig) -> Dict[str, Tuple[int, ...]]:
  flat = layout.flatten(xgenmm.abstract_params(cfg))
  return {k: tuple(v.shape) for k, v in flat.items()}


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


def _convert(reader: CheckpointReader, rules: List[mapping.Rule],
             shapes: Dict[str, Tuple[int, ...]], dtype: Optional[str], progress: bool) -> Flat:
  """Reads and transforms one tensor at a time into a flat dict (one copy of the weights)."""
  flat: Flat = {}
  cast = np.dtype(jax.numpy.dtype(dtype)) if dtype else None
  for rule in tqdm.tqdm(rules, desc="convert", unit="tensor", disable=not progress):
    tensor = reader.get(rule.hf)  # memory-mapped; no copy yet
    if cast is not None and tensor.dtype != cast:
      tensor = tensor.astype(cast)
    parts = mapping.to_params(rule, tensor, [shapes[p] for p in rule.paths])
    for path, part in zip(rule.paths, parts):
      flat[path] = np.array(part, order="C", copy=True)  # detach from the mmap
  return flat


def load_xgenmm(src: os.PathLike, dtype: Optional[str] = None, scan_layers: bool = False,
                progress: bool = False) -> Tuple[dict, XGenMMConfig, dict]:
  """Reads an HF xGen-MM directory.

  Args:
    src: directory with config.json and model.safetensors or shards + index.
    dtype: cast every tensor to this dtype ('float32', 'bfloat16'); None keeps each
      tensor's own dtype (lossless).
    scan_layers: return the stacked (nn.scan) layout.
  Returns:
    (params nested dict of numpy arrays, model config, the original config.json dict).
  """
  src = pathlib.Path(src)
  reader = CheckpointReader(src)
  config = _read_json(src / "config.json")
  vocab_rows = reader.shape(_EMBED)[0] if _EMBED in reader else None
  cfg = hf_config.xgenmm_from_hf(config, vocab_rows)
  rules = mapping.xgenmm_rules(cfg)
  shapes = _shape_map(cfg)
  check_tensors(reader, rules, shapes)
  flat = _convert(reader, rules, shapes, dtype, progress)
  if scan_layers:
    flat = layout.stack_layers(flat)
    cfg = cfg.with_numerics(scan_layers=True)
  return layout.unflatten(flat), cfg, config


def load_backbones(siglip: os.PathLike, phi3: os.PathLike, rng: jax.Array,
                   dtype: str = "float32", scan_layers: bool = False,
                   progress: bool = False) -> Tuple[dict, XGenMMConfig, dict]:
  """A fresh xGen-MM from HF SigLIP (vision tower) and Phi-3 checkpoints.

  The resampler, the added vocabulary rows and the head bias (zero) are newly
  initialised; everything else is copied. The pre-training starting point.
  """
  siglip, phi3 = pathlib.Path(siglip), pathlib.Path(phi3)
  s_reader, p_reader = CheckpointReader(siglip), CheckpointReader(phi3)
  s_conf = _read_json(siglip / "config.json")
  p_conf = _read_json(phi3 / "config.json")
  v_conf = s_conf.get("vision_config", s_conf)  # full SiglipModel or SiglipVisionModel
  vision = hf_config.vision_from_hf(v_conf)
  if "vision_model.head.probe" not in s_reader:
    raise CheckpointError(f"{siglip}: no vision_model.head.* tensors; the SigLIP vision "
                          "checkpoint must include its pooling head")
  rows = p_reader.shape("model.embed_tokens.weight")[0] if (
      "model.embed_tokens.weight" in p_reader) else None
  text = hf_config.text_from_hf(p_conf, rows)
  base = XGenMMConfig()
  cfg = XGenMMConfig(vision=vision, text=text,
                     resampler=base.resampler.__class__(
                         width=vision.width, out_width=text.width,
                         num_latents=base.resampler.num_latents, depth=base.resampler.depth,
                         num_heads=base.resampler.num_heads, head_dim=base.resampler.head_dim,
                         ff_mult=base.resampler.ff_mult))
  cfg = cfg.with_numerics(param_dtype=dtype)
  shapes = _shape_map(cfg)
  v_rules = mapping.vision_rules(cfg, prefix="vision_model.")
  l_rules = mapping.lm_rules(cfg, prefix="", decoupled=False, head_bias=False)
  check_tensors(s_reader, v_rules, shapes, ignore=("text_model.", "logit_scale", "logit_bias"))
  check_tensors(p_reader, l_rules, shapes)
  flat = layout.flatten(jax.device_get(xgenmm.init_params(cfg, rng)))
  flat = {k: np.asarray(v) for k, v in flat.items()}
  flat.update(_convert(s_reader, v_rules, shapes, dtype, progress))
  flat.update(_convert(p_reader, l_rules, shapes, dtype, progress))
  flat["lm/head/bias"] = np.zeros_like(flat["lm/head/bias"])  # Phi-3's head has no bias
  if scan_layers:
    flat = layout.stack_layers(flat)
    cfg = cfg.with_numerics(scan_layers=True)
  return layout.unflatten(flat), cfg, hf_config.xgenmm_to_hf(cfg, dtype)


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
                overwrite: bool = False, progress: bool = False) -> pathlib.Path:
  """Writes params as an HF xGen-MM directory (safetensors shards + index + config.json).

  Streams one tensor at a time into a temporary directory that is renamed to `dst`
  only when complete, so a failure never leaves a half-written checkpoint.
  """
  dst = pathlib.Path(dst)
  if dst.exists() and any(dst.iterdir()) and not overwrite:
    raise CheckpointError(f"{dst}: exists and is not empty (pass overwrite to replace it)")
  flat = layout.flatten(params)
  if layout.is_scanned(flat):
    flat = layout.unstack_layers(flat)
  cfg = cfg.with_numerics(scan_layers=False)
  rules = mapping.xgenmm_rules(cfg)
  known = {p for r in rules for p in r.paths}
  missing = sorted(known - set(flat))
  if missing:
    raise CheckpointError(f"parameters lack {', '.join(missing[:5])}")
  extra = sorted(set(flat) - known)
  if extra:
    raise CheckpointError(f"parameters have no HF name: {', '.join(extra[:5])}")
  dtypes = {r.hf: np.asarray(flat[r.paths[0]]).dtype for r in rules}
  shapes = {r.hf: mapping.hf_shape(r, [np.shape(flat[p]) for p in r.paths]) for r in rules}
  sizes = [int(np.prod(shapes[r.hf])) * dtypes[r.hf].itemsize for r in rules]
  plan = _plan_shards(rules, sizes, max_shard_bytes)

  dst.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
  bar = tqdm.tqdm(total=len(rules), desc="export", unit="tensor", disable=not progress)
  try:
    weight_map = {}
    for k, idx in enumerate(plan):
      fname = SINGLE_NAME if len(plan) == 1 else (
          f"model-{k + 1:05d}-of-{len(plan):05d}.safetensors")
      chosen = [rules[i] for i in idx]

      def tensors(chosen=chosen):
        for r in chosen:
          yield r.hf, mapping.to_hf(r, [np.asarray(flat[p]) for p in r.paths])
          bar.update(1)

      write_file(tmp / fname, [(r.hf, dtypes[r.hf], shapes[r.hf]) for r in chosen], tensors())
      weight_map.update({r.hf: fname for r in chosen})
    if len(plan) > 1:
      index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
      (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2))
    dtype_name = str(next(iter(dtypes.values())))
    config = hf_config.xgenmm_to_hf(cfg, dtype_name, source=source_config)
    (tmp / "config.json").write_text(json.dumps(config, indent=1))
    if dst.exists():
      shutil.rmtree(dst)
    os.replace(tmp, dst)
  finally:
    bar.close()
    if tmp.exists():
      shutil.rmtree(tmp)
  return dst
