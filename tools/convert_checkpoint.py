"""Converts xGen-MM weights between HF safetensors and bliperax (Orbax) checkpoints.

  # Released HF checkpoint (config.json + safetensors shards) -> bliperax params
  python tools/convert_checkpoint.py --from=hf --to=orbax --src=HF_DIR --dst=OUT_DIR

  # bliperax params -> HF checkpoint the reference PyTorch code loads
  python tools/convert_checkpoint.py --from=orbax --to=hf --src=OUT_DIR --dst=HF_DIR

  # Fresh xGen-MM from HF SigLIP + Phi-3 checkpoints (pre-training start)
  python tools/convert_checkpoint.py --from=hf_backbones --siglip=SIGLIP_DIR \\
      --phi3=PHI3_DIR --dst=OUT_DIR [--seed=0]

Any source (hf, orbax, hf_backbones) may go to either target (hf, orbax); --to
defaults to orbax, or to hf when converting from orbax. The conversion is exact:
without --dtype every tensor keeps its dtype and bits. It streams tensor by tensor
and holds one copy of the weights at most (float32 4B: about 17.4 GB). Pickle files
(pytorch_model.bin etc.) are never loaded. The destination appears only once complete.

Prints progress on stderr and, as the last stdout line, a JSON summary:
{"from", "to", "src", "dst", "tensors", "parameters", "bytes", "dtype", "scan_layers",
"seconds"}; tensors counts HF-layout tensors, bytes the weight data written. A bad
input prints one line `error: ...` naming the file or tensor and exits with status 1.
Runs on CPU (JAX_PLATFORMS defaults to cpu).
"""
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import app, flags, logging # noqa: E402

from bliperax import cli
import jax  # noqa: E402
import numpy as np  # noqa: E402

from bliperax import atomic  # noqa: E402
from bliperax.convert import hf, layout, mapping, params_io  # noqa: E402
from bliperax.convert.safetensors_io import CheckpointError  # noqa: E402

_FROM = flags.DEFINE_enum(
    "from", None, ["hf", "orbax", "hf_backbones"],
    "Source: 'hf' = xGen-MM HF directory (config.json + model.safetensors or shards with "
    "model.safetensors.index.json); 'orbax' = bliperax parameter checkpoint (params/ + "
    "bliperax.json); 'hf_backbones' = HF SigLIP and Phi-3 directories (--siglip, --phi3): "
    "a freshly initialised xGen-MM with both towers copied in.")
_TO = flags.DEFINE_enum(
    "to", None, ["hf", "orbax"],
    "Target format (default: hf when --from=orbax, else orbax).")
_SRC = flags.DEFINE_string("src", None, "Source directory (--from=hf or orbax).")
_DST = flags.DEFINE_string("dst", None, "Destination directory; must be absent or empty "
                           "unless --overwrite.")
_SIGLIP = flags.DEFINE_string("siglip", None, "--from=hf_backbones: HF SigLIP directory "
                              "(SiglipVisionModel or full SiglipModel, with the pooling head).")
_PHI3 = flags.DEFINE_string("phi3", None, "--from=hf_backbones: HF Phi-3 (Phi3ForCausalLM) "
                            "directory.")
_DTYPE = flags.DEFINE_enum(
    "dtype", None, ["float32", "bfloat16"],
    "Cast every tensor to this dtype. Default: keep each tensor's dtype (bit-exact); "
    "hf_backbones defaults to float32.")
_SCAN = flags.DEFINE_bool(
    "scan_layers", False, "Orbax output: store each layer stack as one array with a leading "
    "layer axis (the nn.scan layout, for models built with scan_layers=True).")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace a non-empty --dst (only after the new one is complete).")
_SEED = flags.DEFINE_integer("seed", 0, "hf_backbones: seed for the newly initialised "
                             "resampler and added vocabulary rows.")
_MAX_SHARD_GB = flags.DEFINE_float(
    "max_shard_gb", 5.0, "HF output: largest safetensors shard in GiB; a checkpoint that "
    "fits in one is written as model.safetensors.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show progress bars on stderr.")


def _check_flags(source: str, target: str) -> None:
  """Raises app.UsageError for a flag combination that cannot work."""
  if not _DST.value:
    raise app.UsageError("--dst is required")
  if source == "hf_backbones":
    if not (_SIGLIP.value and _PHI3.value):
      raise app.UsageError("--from=hf_backbones needs --siglip and --phi3")
    if _SRC.value:
      raise app.UsageError("--from=hf_backbones reads --siglip and --phi3, not --src")
  else:
    if not _SRC.value:
      raise app.UsageError(f"--from={source} needs --src")
    if _SIGLIP.value or _PHI3.value:
      raise app.UsageError("--siglip/--phi3 are for --from=hf_backbones only")
  if _SCAN.value and target != "orbax":
    raise app.UsageError("--scan_layers applies to --to=orbax only (HF files are unscanned)")
  if _MAX_SHARD_GB.value <= 0:
    raise app.UsageError("--max_shard_gb must be positive")
  srcs = [_SRC.value] if _SRC.value else [_SIGLIP.value, _PHI3.value]
  dst = pathlib.Path(_DST.value).absolute()
  for s in srcs:
    s = pathlib.Path(s).absolute()
    if s == dst or s in dst.parents:
      raise app.UsageError(f"--dst {dst} must not be (inside) the source {s}")


def _cast_in_place(params: dict, dtype: str) -> dict:
  """Casts every leaf, replacing one array at a time (never two full copies)."""
  flat = layout.flatten(params)
  want = np.dtype(jax.numpy.dtype(dtype))
  for path in list(flat):
    if flat[path].dtype != want:
      flat[path] = flat[path].astype(want)
  return layout.unflatten(flat)


def _set_layout(params: dict, cfg, scan: bool):
  """Params and config in the scanned or unscanned layout that was asked for."""
  flat = layout.flatten(params)
  if layout.is_scanned(flat) == scan:
    return params, cfg.with_numerics(scan_layers=scan)
  flat = layout.stack_layers(flat) if scan else layout.unstack_layers(flat)
  return layout.unflatten(flat), cfg.with_numerics(scan_layers=scan)


def _load(source: str, target: str):
  """Reads the source: (params, model config, HF config dict or None)."""
  progress = _PROGRESS.value
  # The scan layout only matters for orbax output; HF export unstacks anyway.
  scan = _SCAN.value and target == "orbax"
  if source == "hf":
    return hf.load_xgenmm(_SRC.value, dtype=_DTYPE.value, scan_layers=scan, progress=progress)
  if source == "hf_backbones":
    return hf.load_backbones(_SIGLIP.value, _PHI3.value, jax.random.PRNGKey(_SEED.value),
                             dtype=_DTYPE.value or "float32", scan_layers=scan,
                             progress=progress)
  params, cfg, hf_conf = params_io.load_params(_SRC.value, progress=progress)
  if _DTYPE.value and target == "orbax":
    params = _cast_in_place(params, _DTYPE.value)  # HF export casts while it streams
  if target == "orbax":
    params, cfg = _set_layout(params, cfg, scan)
  return params, cfg, hf_conf


def _summary(params: dict, cfg, target: str) -> dict:
  leaves = jax.tree.leaves(params)
  numel = sum(int(np.prod(np.shape(x), dtype=np.int64)) for x in leaves)
  if target == "hf" and _DTYPE.value:
    nbytes = numel * np.dtype(jax.numpy.dtype(_DTYPE.value)).itemsize
  else:
    nbytes = sum(int(np.prod(np.shape(x), dtype=np.int64)) * np.dtype(x.dtype).itemsize
                 for x in leaves)
  rules = mapping.xgenmm_rules(cfg.with_numerics(scan_layers=False))
  return {"tensors": len(rules), "parameters": numel, "bytes": nbytes}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _FROM.value:
    raise app.UsageError("--from is required (hf, orbax or hf_backbones)")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every step at INFO
  source = _FROM.value
  target = _TO.value or ("hf" if source == "orbax" else "orbax")
  _check_flags(source, target)
  start = time.time()
  try:
    dst = pathlib.Path(_DST.value)
    if atomic.is_occupied(dst) and not _OVERWRITE.value:
      # Checked again when writing; failing here saves reading a whole model first.
      raise CheckpointError(f"{dst}: exists and is not empty (pass --overwrite to replace it)")
    params, cfg, hf_conf = _load(source, target)
    stats = _summary(params, cfg, target)
    if target == "orbax":
      dst = params_io.save_params(_DST.value, params, cfg, hf_conf, overwrite=_OVERWRITE.value,
                                  progress=_PROGRESS.value)
    else:
      dst = hf.save_xgenmm(params, cfg, _DST.value, source_config=hf_conf,
                           max_shard_bytes=int(_MAX_SHARD_GB.value * 2**30),
                           overwrite=_OVERWRITE.value, progress=_PROGRESS.value,
                           dtype=_DTYPE.value)
  except (CheckpointError, OSError) as e:
    # Expected failures (bad or missing input, destination in the way, disk full):
    # one line naming the file or tensor, no traceback.
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  dtypes = sorted({str(np.dtype(x.dtype)) for x in jax.tree.leaves(params)})
  summary = {"from": source, "to": target,
             "src": _SRC.value or {"siglip": _SIGLIP.value, "phi3": _PHI3.value},
             "dst": str(pathlib.Path(dst).absolute()), **stats,
             "dtype": _DTYPE.value or "/".join(dtypes),
             "scan_layers": bool(target == "orbax" and cfg.numerics.scan_layers),
             "seconds": round(time.time() - start, 2)}
  print(json.dumps(summary), flush=True)


if __name__ == "__main__":
  cli.run(main)
