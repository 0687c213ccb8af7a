"""The paper's training stages as configs, for any model preset (bliperax/DESIGN.md §9).

`pretrain`, `sft`, `sft_interleaved` and `dpo` each return the whole experiment of one stage:
the paper's mixture (`mixtures.py`) under `root`, the parameters to start from
(`init`), and the scale (bf16 compute with float32 master weights, scanned layers
with full remat, FSDP over the slice, the stage's batch and sequence length).
experiments/xgenmm_{4b,14b}/<stage>.py call them with their preset.

Knobs (`file.py:k=v,...`):
  root=DIR       the folder of shard sets (tools/build_shards.py --output=DIR/<folder>);
                 required unless synthetic=1
  init=DIR       the parameter checkpoint to start from: the backbones conversion
                 (tools/convert_checkpoint.py --from=hf_backbones) for pre-training, the
                 previous stage's export (python -m bliperax.export) after it; required,
                 init=random starts from random weights
  synthetic=1    deterministic synthetic batches instead of shards (AOT compiles,
                 benchmarks: with init=random, `:synthetic=1,init=random`)
  preset=tiny    the same recipe on the `tiny` model preset, 2 rows of 384 tokens per
                 batch (CPU smoke tests; the 4B and 14B configs shrink to the same
                 tiny configs)
  steps, batch, seq, accum, remat, workers, and images (pre-training) or crops (SFT,
                 DPO): total steps, global batch, tokens per row, gradient
                 accumulation, remat policy, Grain worker processes, images (= crops)
                 per row; DPO also beta
A missing root or init stops the config from loading, with one line naming the knob:
a paper config never trains on synthetic data or from random weights unless told so.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import ml_collections

from bliperax.configs import mixtures
from bliperax.configs.base import base, parse_arg
from bliperax.lora import config as lora_config
from bliperax.train import dpo_config

RANDOM_INIT = "random"
_KNOBS = ("root", "init", "synthetic", "preset", "steps", "batch", "seq", "accum", "remat",
          "workers")
# preset=tiny: 2 rows of 384 tokens in every stage (4 anyres images of the tiny model
# are 320 vision tokens); one row length, so the stages share their init compile.
_TINY_BATCH, _TINY_SEQ = 2, 384


def stage_knobs(arg: Optional[str], stage: str, preset: str, init_hint: str,
                extra: Tuple[str, ...] = ()) -> Dict[str, str]:
  """The knobs of `arg`, checked: no unknown knob, root (or synthetic=1) and init given.

  Raises ValueError with one line naming every missing or unknown knob.
  """
  k = parse_arg(arg)
  unknown = sorted(set(k) - set(_KNOBS) - set(extra))
  if unknown:
    raise ValueError(f"unknown knob(s) {', '.join(unknown)} for the {preset} {stage} config; "
                     f"its knobs: {', '.join(_KNOBS + extra)}")
  if k.get("preset", "tiny") != "tiny":
    raise ValueError(f"preset={k['preset']}: the paper configs shrink only to preset=tiny")
  missing = []
  if not k.get("root") and not _flag(k, "synthetic"):
    missing.append("root=DIR (the folder of shard sets that tools/build_shards.py wrote; "
                   "synthetic=1 for AOT compiles and benchmarks)")
  if not k.get("init"):
    missing.append(f"init=DIR (a parameter checkpoint: {init_hint}; init=random for AOT "
                   "compiles and benchmarks)")
  if missing:
    raise ValueError(f"the {preset} {stage} config needs {' and '.join(missing)}")
  return k


def _flag(k: Dict[str, str], name: str) -> bool:
  return k.get(name, "0").lower() in ("1", "true", "yes")


def _stage(preset: str, k: Dict[str, str], mixture, *, steps: int, batch: int, seq: int,
           crops: int, lr: float, warmup_steps: int,
           weight_decay: float) -> ml_collections.ConfigDict:
  """The config shared by every stage; `k` are checked knobs (`stage_knobs`)."""
  tiny = "preset" in k
  c = base("tiny" if tiny else preset)
  c.total_steps = int(k.get("steps", steps))
  c.log_every = 50
  c.checkpoint_every = 1000
  init = k["init"]
  c.model.init_from = "" if init == RANDOM_INIT else init
  c.model.numerics.update(dtype="bfloat16", param_dtype="float32", scan_layers=True,
                          remat_policy=k.get("remat", "full"))
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  # The ViT stays frozen (base's optim.freeze): the resampler and the LM train.
  c.optim.update(lr=lr, warmup_steps=warmup_steps, weight_decay=weight_decay,
                 final_lr_ratio=0.0)
  # images_per_row: the crops (= resampler groups) per row that tools/aot_compile.py
  # compiles for, equal to the pipeline's data.max_crops so both see one shape.
  c.train.update(global_batch=int(k.get("batch", _TINY_BATCH if tiny else batch)),
                 seq_len=int(k.get("seq", _TINY_SEQ if tiny else seq)),
                 accum_steps=int(k.get("accum", 1)), images_per_row=crops)
  if _flag(k, "synthetic"):
    c.data = ml_collections.ConfigDict(dict(kind="synthetic", seed=0))
  else:
    c.data = mixtures.grain_data(mixtures.sources_config(mixture, k["root"]),
                                 worker_count=int(k.get("workers", 8)))
    # One number, two readers: overriding train.images_per_row (a sweep member, a
    # --config flag) moves the pipeline's crop budget with it.
    c.data.max_crops = c.train.get_ref("images_per_row")
  return c


def pretrain(preset: str, arg: Optional[str]) -> ml_collections.ConfigDict:
  """Pre-training: the paper's mixture, one 384 px crop per image, resampler + LM trained.

  Global batch 512 x 2048 tokens; up to 16 images per row (16 x 128 vision tokens
  fill a row, so the token budget, not the crop count, ends a packed row); 50,000
  steps (~52B tokens); lr 1e-4 after 2000 warmup steps, cosine to 0, weight decay
  0.05 (the paper publishes neither: this project's choice). Extra knob: images.
  """
  k = stage_knobs(arg, "pretrain", preset, "the backbones conversion, "
                  "tools/convert_checkpoint.py --from=hf_backbones", extra=("images",))
  return _stage(preset, k, mixtures.PRETRAIN, steps=50_000, batch=512, seq=2048,
                crops=int(k.get("images", 16)), lr=1e-4, warmup_steps=2000, weight_decay=0.05)


def _sft_eval(c: ml_collections.ConfigDict, k: Dict[str, str]) -> None:
  """`python -m bliperax.evaluate` reads held-out chat sets from ROOT/heldout/<task>."""
  if k.get("root"):
    c.eval = ml_collections.ConfigDict(dict(
        root=f"{k['root'].rstrip('/')}/heldout", tasks="", anyres="", max_new_tokens=16,
        batch_size=64))


def sft(preset: str, arg: Optional[str]) -> ml_collections.ConfigDict:
  """SFT: ~1M instruction chats, anyres, from the pre-training export.

  The reference's SFT example: lr 2e-5, 2000 warmup steps, weight decay 0, batch 64;
  rows of 4096 tokens with up to 20 crops (4 images of at most 1 + 4 crops); 4000
  steps, about one epoch of 1M samples at ~4 packed samples per row (set steps= for
  your shards). Extra knob: crops.
  """
  k = stage_knobs(arg, "sft", preset, "the pre-training export, python -m bliperax.export",
                  extra=("crops",))
  c = _stage(preset, k, mixtures.SFT, steps=4000, batch=64, seq=4096,
             crops=int(k.get("crops", 20)), lr=2e-5, warmup_steps=2000, weight_decay=0.0)
  _sft_eval(c, k)
  return c


def sft_interleaved(preset: str, arg: Optional[str]) -> ml_collections.ConfigDict:
  """Interleaved SFT: multi-image chats (MANTIS, MMDU) plus part of the SFT set, anyres.

  From the SFT export, with the SFT recipe's lr, batch and rows (the paper gives no
  numbers of its own): at most 4 images per sample, 20 crops per row; 2000 steps with
  200 warmup steps (placeholders, this project's choice: set steps= for your shards).
  Extra knob: crops.
  """
  k = stage_knobs(arg, "sft_interleaved", preset, "the SFT export, python -m bliperax.export",
                  extra=("crops",))
  c = _stage(preset, k, mixtures.SFT_INTERLEAVED, steps=2000, batch=64, seq=4096, crops=int(k.get("crops", 20)), lr=2e-5, warmup_steps=200,
             weight_decay=0.0)
  _sft_eval(c, k)
  return c


# LoRA ranks of the post-training stages: about 2.5% of the language model, the
# paper's share, on every Phi-3 projection (python -m bliperax.lora.count): rank 64 is
# 2.63% of the 4B LLM, rank 100 2.49% of the 14B's. preset=tiny: rank 8 for both, so
# the 14B configs still shrink to the 4B ones.
LORA_RANKS = {"xgenmm_4b": 64, "xgenmm_14b": 100}
_TINY_LORA_RANK = 8


def _with_lora(c: ml_collections.ConfigDict, preset: str, k: Dict[str, str]) -> None:
  """Adapters (alpha = 2 x rank) on a frozen base kept in bf16: the base takes no
  update, so its float32 master copy would be half the memory for nothing."""
  rank = _TINY_LORA_RANK if "preset" in k else LORA_RANKS[preset]
  c.lora = lora_config.defaults()
  c.lora.update(enabled=True, rank=rank, alpha=2.0 * rank, base_dtype="bfloat16")


def safety(preset: str, arg: Optional[str]) -> ml_collections.ConfigDict:
  """Safety fine-tuning: VLGuard chats mixed with SFT chats, LoRA on the LLM, anyres.

  The paper: VLGuard (~2k samples) with 5k SFT samples, 3 epochs, LoRA; the mixture's
  weights are that 2 : 5 (mixtures.SAFETY). Its lr and batch are not published: lr
  2e-4, weight decay 0 and 3% warmup are LLaVA-1.5's LoRA fine-tuning recipe (its
  scripts/v1_5/finetune_task_lora.sh; VLGuard's README fine-tunes with LLaVA's
  scripts). The SFT rows (batch 64 x 4096 tokens, 20 crops per row) hold ~4 samples
  each, so 3 epochs of ~7k samples are ~80 steps (set steps= for your shards). From
  the DPO export (or the SFT export). Extra knob: crops.
  """
  k = stage_knobs(arg, "safety", preset, "the DPO or SFT export, python -m bliperax.export",
                  extra=("crops",))
  c = _stage(preset, k, mixtures.SAFETY, steps=80, batch=64, seq=4096,
             crops=int(k.get("crops", 20)), lr=2e-4, warmup_steps=3, weight_decay=0.0)
  _with_lora(c, preset, k)
  _sft_eval(c, k)
  return c


def dpo(preset: str, arg: Optional[str]) -> ml_collections.ConfigDict:
  """DPO: preference pairs with LoRA, from the SFT export (bliperax/DESIGN.md §9).

  The paper (SPEC §5): VLFeedback pairs plus the SFT model's answers on noised images
  as extra rejected answers (mixtures.DPO: `vlfeedback` and `noised_pairs`, the
  latter from tools/make_preferences.py), LoRA on about 2.5% of the LM (`_with_lora`,
  the base frozen in bf16), the frozen SFT model as the reference (with LoRA, the
  frozen base itself: bliperax/train/dpo_step.py), one epoch. This project's choices,
  the paper giving no numbers: β 0.1 (the DPO paper's usual value), no label
  smoothing, lr 5e-6 with 100 warmup steps and cosine to 0, weight decay 0; 128 rows
  of 2048 tokens (64 pair rows of ~2 pairs: an anyres image is at most 640 vision
  tokens, an answer a few hundred) with up to 10 crops, two rows per chip on the
  recipes' 64-chip slices so a pair's rows share a chip; 1000 steps, about one epoch
  of 62.6k pairs plus as many noised-image pairs at ~128 pairs per step (set steps=
  for your shards). Extra knobs: crops, beta.
  """
  k = stage_knobs(arg, "dpo", preset, "the SFT export, python -m bliperax.export",
                  extra=("crops", "beta"))
  c = _stage(preset, k, mixtures.DPO, steps=1000, batch=128, seq=2048,
             crops=int(k.get("crops", 10)), lr=5e-6, warmup_steps=100, weight_decay=0.0)
  _with_lora(c, preset, k)
  c.dpo = dpo_config.defaults()
  c.dpo.update(enabled=True, beta=float(k.get("beta", 0.1)))
  _sft_eval(c, k)
  return c
