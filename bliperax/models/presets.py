"""Named model shapes: the 4B release, its 14B sibling, and tiny shapes for tests."""
from __future__ import annotations

from bliperax.models.config import (Numerics, ResamplerConfig, TextConfig, VisionConfig,
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


PRESETS = {
    "xgenmm_4b": xgenmm_4b,
    "xgenmm_14b": xgenmm_14b,
    "tiny": tiny,
    "tiny_gqa": tiny_gqa,
}


def get(name: str, **numerics) -> XGenMMConfig:
  """The preset `name`, with Numerics fields overridden by keyword (e.g. scan_layers=True)."""
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
  cfg = PRESETS[name]()
  return cfg.with_numerics(**numerics) if numerics else cfg
