r"""The paper's ablations at 4B scale (a sweep config): does every member fit, and run it.

  # Fit first, on a CPU host with libtpu (pip install -e ".[tpu]"): nothing runs.
  python -m bliperax.sweep --config=experiments/xgenmm_4b/ablations.py:synthetic=1,init=random \
      --workdir=/tmp/ablations_4b --aot=v5e-256
  # Then run it (each member: pre-train -> export -> SFT), on a slice, one workload each:
  python -m bliperax.sweep --config=experiments/xgenmm_4b/ablations.py:root=gs://B/shards,init=gs://B/backbones \
      --workdir=gs://B/ablations_4b --launch=xpk --tpu=v5e-256 --cluster=C

Members, each against the baseline (the paper's recipe, experiments/xgenmm_4b/):
  * visual tokens per crop: the resampler's `num_latents` 64 and 256 beside 128;
  * the crop budget of an SFT row, which anyres spends: 4 (what 4 images cost
    with the base crop only), 20 (the recipe: up to 1 + 4 crops per image) and 40
    (room for larger grids); `train.images_per_row`, which `data.max_crops`
    follows;
  * the vision tower trained instead of frozen in both stages (`optim.freeze=()`:
    the ViT's gradients and Adam moments join the step);
  * pre-training mixture weights (with root=): captions up-weighted (their
    weights x4) against the interleaved and OCR/grounding sources. Only
    `data.sources.*.weight` changes, which no compile sees, so these members are
    left out of `--aot` runs (`synthetic=1` has no sources to weigh).

Knobs (`ablations.py:k=v,...`): those of the stage configs (root=, init=,
synthetic=1, steps=, batch=, ... see bliperax/configs/recipes.py), passed to both
stages; pretrain_steps and sft_steps set each stage's steps; stages=sft keeps the
SFT stage alone (an `--aot` table of the SFT step: every member changes it, and a
4B compile takes minutes).
"""
from bliperax import configs
from bliperax import sweep
from bliperax.configs import mixtures

_OWN = ("pretrain_steps", "sft_steps", "stages")
_CAPTIONS = ("datacomp", "cc12m", "cc3m", "vg", "sbu", "blip3_kale")


def _stage_knobs(arg, stage: str) -> str:
  knobs = configs.parse_arg(arg)
  steps = knobs.get(f"{stage}_steps")
  shared = {k: v for k, v in knobs.items() if k not in _OWN}
  if steps:
    shared["steps"] = steps
  return ",".join(f"{k}={v}" for k, v in shared.items())


def get_sweep(arg=None):
  knobs = configs.parse_arg(arg)
  members = ([{"name": "baseline"}]
             + sweep.product({"model.resampler.num_latents": [64, 256]})
             + sweep.product({"sft:train.images_per_row": [4, 40]})
             + [{"name": "vit_trained", "optim.freeze": ()}])
  if knobs.get("root") and knobs.get("synthetic", "0") in ("0", ""):
    weights = {s.name: s.weight for s in mixtures.PRETRAIN}
    members.append({"name": "captions_x4", **{
        f"pretrain:data.sources.{name}.weight": 4 * weights[name]
        for name in _CAPTIONS if name in weights}})
  return members


def get_stages(arg=None):
  sft = f"experiments/xgenmm_4b/sft.py:{_stage_knobs(arg, 'sft')}"
  if configs.parse_arg(arg).get("stages") == "sft":  # --aot of the SFT step alone
    return [sweep.train("sft", sft)]
  return [
      sweep.train("pretrain", f"experiments/xgenmm_4b/pretrain.py:{_stage_knobs(arg, 'pretrain')}"),
      sweep.export("pretrain_params", of="pretrain"),
      sweep.train("sft", sft, init_from="pretrain_params"),
  ]
