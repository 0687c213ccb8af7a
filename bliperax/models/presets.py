"""Named model shapes: the 4B release, its 14B sibling, tiny shapes for tests, a benchmark shape."""
from __future__ import annotations

from bliperax.models.config import (ResamplerConfig, TextConfig, VisionConfig,
                                    XGenMMConfig)


def xgenmm_4b() -> XGenMMConfig:
  """xgen-mm-phi3-mini-*-r-v1.5: SigLIP so400m/14@384, 6-layer Perceiver, Phi-3-mini."""
  return XGenMMConfig()


def xgenmm_14b() -> XGenMMConfig:
  """The 14B sibling: the same vision side with a Phi-3-medium decoder (GQA, 10 kv heads)."""
  text = TextConfig(width=5120, depth=40, num_heads=40, num_kv_heads=10, head_dim=128,
                    mlp_dim=17920)
  return XGenMMConfig(resampler=ResamplerConfig(out_width=5120), text=text)


def tiny() -> XGenMMConfig:
  """The golden fixture's shapes (56 px crops, 16 patches, 16 latents, widths 48/64)."""
  return XGenMMConfig(
      vision=VisionConfig(image_size=56, patch_size=14, width=48, mlp_dim=96, depth=2,
                          num_heads=4),
      resampler=ResamplerConfig(width=48, out_width=64, num_latents=16, depth=2,
                                num_heads=4, head_dim=8, ff_mult=4),
      text=TextConfig(width=64, depth=2, num_heads=4, num_kv_heads=4, head_dim=16,
                      mlp_dim=128),
  )


def tiny_gqa() -> XGenMMConfig:
  """Tiny shapes with grouped-query attention and a short sliding window."""
  base = tiny()
  text = TextConfig(width=64, depth=2, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=128,
                    sliding_window=5)
  return base.replace(text=text)


def digits() -> XGenMMConfig:
  """The digits model (tools/make_digits.py): 16 px crops, one patch each, 4 latents.

  Sized for CPU training in minutes. The real tokenizer's 32064-row tables dominate
  its parameters and the head's 32015 logits per token dominate its compute, so
  the decoder is narrow (64) and each image is only 4 vision tokens. Grid (4, 1)
  joins the reference's grids so a row of four digits gets one crop per digit.
  One patch per crop: trained from scratch on CPU, 4×4 px patches reached 34% and
  8×8 px 60% on held-out digit VQA after 150 steps, whole-crop patches 82%.
  """
  return XGenMMConfig(
      vision=VisionConfig(image_size=16, patch_size=16, width=64, mlp_dim=128, depth=2,
                          num_heads=4, with_head=False),
      resampler=ResamplerConfig(width=64, out_width=64, num_latents=4, depth=2,
                                num_heads=4, head_dim=16, ff_mult=2),
      text=TextConfig(width=64, depth=4, num_heads=4, num_kv_heads=4, head_dim=16,
                      mlp_dim=256),
      anyres_grids=((1, 2), (2, 1), (2, 2), (3, 1), (1, 3), (4, 1)),
  )


def small() -> XGenMMConfig:
  """A CPU benchmark shape: SigLIP 256 x 4 layers at 112 px, Perceiver 2 x 32 latents,
  Phi-3 512 x 8 layers, the real 32064 + 3 vocabulary (tools/bench_generate.py)."""
  return XGenMMConfig(
      vision=VisionConfig(image_size=112, patch_size=14, width=256, mlp_dim=1024, depth=4,
                          num_heads=4),
      resampler=ResamplerConfig(width=256, out_width=512, num_latents=32, depth=2,
                                num_heads=4, head_dim=64, ff_mult=4),
      text=TextConfig(width=512, depth=8, num_heads=8, num_kv_heads=8, head_dim=64,
                      mlp_dim=1536),
  )


PRESETS = {
    "xgenmm_4b": xgenmm_4b,
    "xgenmm_14b": xgenmm_14b,
    "tiny": tiny,
    "tiny_gqa": tiny_gqa,
    "digits": digits,
    "small": small,
}


def get(name: str, **numerics) -> XGenMMConfig:
  """The preset `name`, with Numerics fields overridden by keyword (e.g. scan_layers=True)."""
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
  cfg = PRESETS[name]()
  return cfg.with_numerics(**numerics) if numerics else cfg
