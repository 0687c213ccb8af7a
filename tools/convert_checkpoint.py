"""Converts xGen-MM weights between HF safetensors and bliperax (Orbax) checkpoints.

  # Released HF checkpoint (config.json + safetensors shards) -> bliperax params
  python tools/convert_checkpoint.py --from=hf --to=orbax --src=HF_DIR --dst=OUT_DIR

  # bliperax params -> HF checkpoint the reference PyTorch code loads
  python tools/convert_checkpoint.py --from=orbax --to=hf --src=OUT_DIR --dst=HF_DIR

  # Fresh xGen-MM from HF SigLIP + Phi-3 checkpoints (pre-training start)
  python tools/convert_checkpoint.py --from=hf_backbones --siglip=SIGLIP_DIR \\
      --phi3=PHI3_DIR --dst=OUT_DIR [--seed=0]

  # A LoRA run (bliperax/lora): base + adapters merged -> HF checkpoint, and the
  # adapters alone in PEFT's format (adapter_config.json + adapter_model.safetensors)
  python tools/convert_checkpoint.py --from=lora --src=WORKDIR --dst=HF_DIR \\
      [--peft_dst=PEFT_DIR]

Any source (hf, orbax, hf_backbones, lora) may go to either target (hf, orbax); --to
defaults to orbax, or to hf when converting from orbax or lora. The conversion is exact:
without --dtype every tensor keeps its dtype and bits. It streams tensor by tensor
and holds one copy of the weights at most (float32 4B: about 17.4 GB). Pickle files
(pytorch_model.bin etc.) are never loaded. The destination appears only once complete.

--from=lora reads a LoRA training run (bliperax/lora: the frozen base, the adapters,
the run's lora settings) and merges the adapters into their kernels, W + alpha/r · A·B
in float32; a base stored in bf16 is then written in float32 too, unless --dtype says
otherwise. --peft_dst also writes the adapters alone (bliperax/convert/peft.py):
`peft.PeftModel.from_pretrained(hf_model, PEFT_DIR)` puts them on the HF model built
from the run's base, and computes what the merged checkpoint computes.

Prints progress on stderr and, as the last stdout line, a JSON summary:
{"from", "to", "src", "dst", "tensors", "parameters", "bytes", "dtype", "scan_layers",
"seconds"}, plus {"peft_dst", "peft_tensors"} with --peft_dst; tensors counts HF-layout
tensors, bytes the weight data written. A bad input prints one line `error: ...` naming
the file or tensor and exits with status 1.
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
from bliperax.convert import hf, layout, mapping, params_io, peft  # noqa: E402
from bliperax.convert.safetensors_io import CheckpointError  # noqa: E402

_FROM = flags.DEFINE_enum(
    "from", None, ["hf", "orbax", "hf_backbones", "lora"],
    "Source: 'hf' = xGen-MM HF directory (config.json + model.safetensors or shards with "
    "model.safetensors.index.json); 'orbax' = bliperax parameter checkpoint (params/ + "
    "bliperax.json); 'hf_backbones' = HF SigLIP and Phi-3 directories (--siglip, --phi3): "
    "a freshly initialised xGen-MM with both towers copied in; 'lora' = a LoRA training "
    "run (--src: its workdir, checkpoints/ or a step folder): base and adapters merged.")
_TO = flags.DEFINE_enum(
    "to", None, ["hf", "orbax"],
    "Target format (default: hf when --from=orbax, else orbax).")
_SRC = flags.DEFINE_string("src", None, "Source directory (--from=hf, orbax or lora).")
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
_PEFT_DST = flags.DEFINE_string(
    "peft_dst", None, "--from=lora: also write the adapters alone in PEFT's format here "
    "(adapter_config.json + adapter_model.safetensors, HF module names, float32).")


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
  if _PEFT_DST.value and source != "lora":
    raise app.UsageError("--peft_dst needs --from=lora (only a LoRA run has adapters)")
  if _SCAN.value and target != "orbax":
    raise app.UsageError("--scan_layers applies to --to=orbax only (HF files are unscanned)")
  if _MAX_SHARD_GB.value <= 0:
    raise app.UsageError("--max_shard_gb must be positive")
  srcs = [_SRC.value] if _SRC.value else [_SIGLIP.value, _PHI3.value]
  for flag, out in (("--dst", _DST.value), ("--peft_dst", _PEFT_DST.value)):
    if not out:
      continue
    dst = pathlib.Path(out).absolute()
    for s in srcs:
      s = pathlib.Path(s).absolute()
      if s == dst or s in dst.parents:
        raise app.UsageError(f"{flag} {dst} must not be (inside) the source {s}")
  if _PEFT_DST.value and (pathlib.Path(_PEFT_DST.value).absolute()
                          == pathlib.Path(_DST.value).absolute()):
    raise app.UsageError("--peft_dst must differ from --dst")


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


def _merge_lora(run) -> dict:
  """A LoRA run's merged params; all float32 when the merge left mixed dtypes and no
  --dtype will cast them (an HF tensor's fused parts must share one dtype)."""
  params = run.merged()
  dtypes = {np.dtype(x.dtype) for x in jax.tree.leaves(params)}
  if len(dtypes) > 1 and not _DTYPE.value:
    params = _cast_in_place(params, "float32")
  return params


def _load(source: str, target: str, run=None):
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
  if source == "lora":
    params, cfg, hf_conf = _merge_lora(run), run.model_cfg, None
  else:
    params, cfg, hf_conf = params_io.load_params(_SRC.value, progress=progress)
  if _DTYPE.value and target == "orbax":
    params = _cast_in_place(params, _DTYPE.value)  # HF export casts while it streams
  if target == "orbax":
    params, cfg = _set_layout(params, cfg, scan)
  return params, cfg, hf_conf


def _load_lora_run(src: str):
  """The LoRA run at `src` (bliperax.lora.io); anything else there is a CheckpointError."""
  from bliperax.infer import checkpoints  # pylint: disable=g-import-not-at-top
  from bliperax.lora import io as lora_io  # pylint: disable=g-import-not-at-top
  try:
    return lora_io.load_run(src)
  except (checkpoints.CheckpointNotFound, ValueError) as e:  # no run, or not a LoRA one
    raise CheckpointError(str(e)) from e


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
  target = _TO.value or ("hf" if source in ("orbax", "lora") else "orbax")
  _check_flags(source, target)
  start = time.time()
  try:
    dst = pathlib.Path(_DST.value)
    if atomic.is_occupied(dst) and not _OVERWRITE.value:
      # Checked again when writing; failing here saves reading a whole model first.
      raise CheckpointError(f"{dst}: exists and is not empty (pass --overwrite to replace it)")
    if _PEFT_DST.value and atomic.is_occupied(_PEFT_DST.value) and not _OVERWRITE.value:
      raise CheckpointError(f"{_PEFT_DST.value}: exists and is not empty (pass --overwrite "
                            "to replace it)")
    run = _load_lora_run(_SRC.value) if source == "lora" else None
    params, cfg, hf_conf = _load(source, target, run)
    stats = _summary(params, cfg, target)
    if target == "orbax":
      dst = params_io.save_params(_DST.value, params, cfg, hf_conf, overwrite=_OVERWRITE.value,
                                  progress=_PROGRESS.value)
    else:
      dst = hf.save_xgenmm(params, cfg, _DST.value, source_config=hf_conf,
                           max_shard_bytes=int(_MAX_SHARD_GB.value * 2**30),
                           overwrite=_OVERWRITE.value, progress=_PROGRESS.value,
                           dtype=_DTYPE.value)
    if _PEFT_DST.value:
      lora = run.settings
      peft_dir = peft.save(_PEFT_DST.value, run.adapters, run.model_cfg, rank=int(lora.rank),
                           alpha=float(lora.alpha), dropout=float(lora.get("dropout", 0.0)),
                           overwrite=_OVERWRITE.value)
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
  if _PEFT_DST.value:
    modules = json.loads((peft_dir / peft.CONFIG_NAME).read_text())["target_modules"]
    summary.update(peft_dst=str(pathlib.Path(peft_dir).absolute()),
                   peft_tensors=2 * len(modules))  # lora_A and lora_B per module
  print(json.dumps(summary), flush=True)


if __name__ == "__main__":
  cli.run(main)
