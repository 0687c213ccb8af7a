"""Stage-by-stage comparison of bliperax against a golden fixture from the PyTorch reference.

A fixture directory holds `meta.json` (samples, images, grids) and `expected.npz`
(format: bliperax/DESIGN.md §11). Every input is rebuilt here with bliperax's own
tokenizer and preprocessing, the converted model runs in float32, and each stage is
compared: pixels, token ids, ViT features, resampler inputs / masks / outputs, final
hidden states, selected logits, argmax, per-token NLL, loss, greedy generations.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Callable, Dict, List, Optional

import jax
import numpy as np

from bliperax.convert import hf
from bliperax.data import batch as batch_lib
from bliperax.data import batch_spec
from bliperax.data import image as image_lib
from bliperax.data import pixels
from bliperax.data import tokenizer as tokenizer_lib
from bliperax.infer import generate as generate_lib
from bliperax.infer import golden_inputs
from bliperax.models import xgenmm
from bliperax.train import losses

# float32 round-off: activations and logits of O(1-10) agree to ~1e-6 when the
# computation is the same; 1e-4 absolute (+1e-5 relative for large values) is the
# bound the fixture's README states. Ids, masks, argmax and generations must be equal.
ATOL = 1e-4
RTOL = 1e-5
GOLDEN_EOS = (32007,)  # the fixture's generations stop at <|end|> only


@dataclasses.dataclass
class StageResult:
  stage: str
  worst: float  # max abs error, or number of mismatching entries for exact stages
  exact: bool  # compared for equality rather than within tolerance
  ok: bool
  note: str = ""


def _close(stage: str, got: np.ndarray, want: np.ndarray,
           where: Optional[np.ndarray] = None) -> StageResult:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  if got.shape != want.shape:
    return StageResult(stage, float("inf"), False, False,
                       f"shape {list(got.shape)} != expected {list(want.shape)}")
  if where is not None:
    got, want = got[where], want[where]
  err = np.abs(got - want)
  worst = float(err.max()) if err.size else 0.0
  ok = bool(np.all(err <= ATOL + RTOL * np.abs(want))) and np.isfinite(got).all()
  return StageResult(stage, worst, False, ok)


def _equal(stage: str, got: np.ndarray, want: np.ndarray,
           where: Optional[np.ndarray] = None) -> StageResult:
  got, want = np.asarray(got), np.asarray(want)
  if got.shape != want.shape:
    return StageResult(stage, float("inf"), True, False,
                       f"shape {list(got.shape)} != expected {list(want.shape)}")
  if where is not None:
    got, want = got[where], want[where]
  bad = int(np.sum(got != want))
  return StageResult(stage, float(bad), True, bad == 0, f"{bad} of {got.size} differ")


def run(hf_checkpoint: pathlib.Path, golden: pathlib.Path, images: pathlib.Path,
        log: Callable[[str], None] = lambda s: None) -> List[StageResult]:
  """Runs every stage; returns one result per stage (never raises on a mismatch)."""
  golden, images = pathlib.Path(golden), pathlib.Path(images)
  meta = json.loads((golden / "meta.json").read_text())
  exp = dict(np.load(golden / "expected.npz"))
  log(f"loading {hf_checkpoint}")
  params, cfg, hf_cfg = hf.load_xgenmm(hf_checkpoint, dtype="float32")
  anyres = (hf_cfg.get("vision_encoder_config") or {}).get("image_aspect_ratio",
                                                           "anyres") == "anyres"
  grids = meta.get("anyres_grids")
  if grids:
    cfg = cfg.replace(anyres_grids=tuple(tuple(g) for g in grids))
  tok = tokenizer_lib.Tokenizer.reference()
  results: List[StageResult] = []

  # --- inputs: pixels and token ids
  log("preprocessing")
  vision: List[List[batch_lib.VisionInput]] = []
  pixel_errs = []
  for s, sample in enumerate(meta["samples"]):
    row = []
    for i, name in enumerate(sample["images"]):
      v = batch_lib.prepare_image(image_lib.load_image(images / name), cfg, anyres)
      row.append(v)
      key = f"pixels_s{s}_i{i}"
      if key in exp:
        # The model normalises its uint8 crops with this same table on the device.
        pixel_errs.append(_close(key, pixels.normalize(v.crops).transpose(0, 3, 1, 2),
                                 exp[key]))
    vision.append(row)
  results.append(StageResult("pixels", max((r.worst for r in pixel_errs), default=0.0), False,
                             all(r.ok for r in pixel_errs),
                             "; ".join(f"{r.stage}: {r.note}" for r in pixel_errs if r.note)))
  train_rows = [golden_inputs.golden_sample_ids(s, tok, meta["system_prompt"]) for s in
                meta["samples"]]
  prompt_rows = [golden_inputs.golden_sample_ids(s, tok, meta["system_prompt"], with_answer=False)
                 for s in meta["samples"]]
  ids, mask, labels = golden_inputs.pad_batch([r[0] for r in train_rows],
                                              [r[1] for r in train_rows], tok.pad_id, "right")
  results.append(_equal("input_ids", ids, exp["input_ids"]))
  results.append(_equal("labels", labels, exp["labels"]))
  p_ids, p_mask, _ = golden_inputs.pad_batch([r[0] for r in prompt_rows], None, tok.pad_id, "left")
  results.append(_equal("prompt_ids", p_ids, exp["prompt_ids"]))

  # --- forward over the expanded training batch
  dims = batch_spec.VisionDims.of(cfg)
  examples = [batch_lib.expand(r[0], r[1], v, dims) for r, v in zip(train_rows, vision)]
  t = max(int(meta.get("expanded_length", 0)), max(len(e.tokens) for e in examples))
  batch = batch_lib.collate(examples, cfg, tok.pad_id, "right", length=t)
  log("forward")
  logits, state = jax.jit(lambda p, b: xgenmm.XGenMM(cfg).apply(
      {"params": p}, **b, mutable=["intermediates"]))(params, batch_spec.model_inputs(batch))
  inter = jax.tree.map(np.asarray, state["intermediates"])
  crop_valid = batch["crop_valid"].reshape(-1)
  group_valid = batch["group_valid"].reshape(-1)
  p = cfg.vision.num_patches
  vit = inter["vit_features"][0].reshape(-1, p, cfg.vision.width)[crop_valid]
  results.append(_close("vit_features", vit, exp["vit_features"]))
  results.append(_close("resampler_inputs", inter["resampler_inputs"][0][group_valid],
                        exp["resampler_inputs"]))
  results.append(_equal("resampler_masks",
                        batch["group_mask"].reshape(-1, p)[group_valid].astype(np.float32),
                        exp["resampler_masks"]))
  results.append(_close("resampler_outputs", inter["resampler_outputs"][0][group_valid],
                        exp["resampler_outputs"]))
  results.append(_equal("expanded_labels", batch["labels"], exp["expanded_labels"]))
  valid = exp["expanded_attention_mask"].astype(bool)
  results.append(_close("hidden_last", inter["hidden"][0], exp["hidden_last"],
                        valid if inter["hidden"][0].shape == exp["hidden_last"].shape else None))
  logits = np.asarray(logits)
  results.append(_equal("logit_width", np.int64(logits.shape[-1]), np.int64(meta["logit_width"])))
  same_shape = logits.shape[:2] == valid.shape
  results.append(_close("logits_selected", logits[..., exp["logit_ids"]], exp["logits_selected"],
                        valid if same_shape else None))
  results.append(_equal("logits_argmax", logits.argmax(-1), exp["logits_argmax"],
                        valid if same_shape else None))
  nll, _ = losses.token_nll(logits, batch["labels"])
  results.append(_close("token_nll", nll, exp["token_nll"]))
  results.append(_close("loss", losses.mean_nll(logits, batch["labels"]), exp["loss"]))

  # --- greedy generation from the left-padded prompts
  log("generating")
  prompts = [batch_lib.expand(r[0], None, v, dims) for r, v in zip(prompt_rows, vision)]
  prompt_batch = batch_lib.collate(prompts, cfg, tok.pad_id, "left")
  new = exp["generated"].shape[1]
  out = generate_lib.generate(params, cfg, prompt_batch, new, eos_ids=GOLDEN_EOS,
                              pad_id=tok.pad_id)
  results.append(_equal("generated", out, exp["generated"]))
  return results


def table(results: List[StageResult]) -> str:
  lines = [f"{'stage':20s} {'worst':>12s} {'tolerance':>18s}  ok"]
  for r in results:
    tol = "exact" if r.exact else f"{ATOL:g} + {RTOL:g}·|x|"
    worst = f"{int(r.worst)}" if r.exact and np.isfinite(r.worst) else f"{r.worst:.3e}"
    note = f"  ({r.note})" if r.note and not r.ok else ""
    lines.append(f"{r.stage:20s} {worst:>12s} {tol:>18s}  {'yes' if r.ok else 'NO'}{note}")
  return "\n".join(lines)


def summary(results: List[StageResult]) -> Dict[str, object]:
  return {"worst": {r.stage: (r.worst if np.isfinite(r.worst) else None) for r in results},
          "failed": [r.stage for r in results if not r.ok],
          "ok": all(r.ok for r in results)}
