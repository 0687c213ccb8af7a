"""Shape and numerics configuration of the three towers and the VLM (frozen dataclasses)."""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

# Ids of the decoupled vocabulary (bliperax/DESIGN.md §2).
BASE_VOCAB = 32012  # `initial_tokenizer_len`: ids below read the base tables.
NUM_ADDED_TOKENS = 3  # <image>, <image placeholder>, <|endofchunk|>.


@dataclasses.dataclass(frozen=True)
class Numerics:
  """How layers compute: activation dtype, parameter dtype, scan and remat."""
  dtype: str = "float32"  # activations / matmul inputs
  param_dtype: str = "float32"  # stored parameters
  scan_layers: bool = False  # stack layers with nn.scan (one compiled body)
  remat_policy: str = "none"  # see layers.REMAT_POLICIES
  attention_impl: Optional[str] = None  # jax.nn.dot_product_attention `implementation`


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """SigLIP ViT (so400m/14 at 384 by default)."""
  image_size: int = 384
  patch_size: int = 14
  width: int = 1152
  mlp_dim: int = 4304
  depth: int = 27
  num_heads: int = 16
  layer_norm_eps: float = 1e-6
  with_head: bool = True  # the (unused) attention-pooling head, kept for round trips

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_patches(self) -> int:
    return self.grid * self.grid


@dataclasses.dataclass(frozen=True)
class ResamplerConfig:
  """Perceiver resampler (`vision_tokenizer`)."""
  width: int = 1152  # = vision width
  out_width: int = 3072  # = language-model width
  num_latents: int = 128
  depth: int = 6
  num_heads: int = 16
  head_dim: int = 96
  ff_mult: int = 4
  layer_norm_eps: float = 1e-5


@dataclasses.dataclass(frozen=True)
class TextConfig:
  """Phi-3 decoder (mini by default) with the decoupled vocabulary."""
  vocab_rows: int = 32064  # rows of the base embedding / head tables
  base_vocab: int = BASE_VOCAB
  num_added: int = NUM_ADDED_TOKENS
  width: int = 3072
  depth: int = 32
  num_heads: int = 32
  num_kv_heads: int = 32
  head_dim: int = 96
  mlp_dim: int = 8192
  rms_norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  max_positions: int = 4096
  # Reference semantics: query i sees key j iff 0 <= i - j <= sliding_window.
  sliding_window: Optional[int] = 2047

  @property
  def logit_width(self) -> int:
    return self.base_vocab + self.num_added


@dataclasses.dataclass(frozen=True)
class XGenMMConfig:
  vision: VisionConfig = VisionConfig()
  resampler: ResamplerConfig = ResamplerConfig()
  text: TextConfig = TextConfig()
  numerics: Numerics = Numerics()
  anyres_grids: Tuple[Tuple[int, int], ...] = ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))

  def replace(self, **kw) -> "XGenMMConfig":
    return dataclasses.replace(self, **kw)

  def with_numerics(self, **kw) -> "XGenMMConfig":
    return dataclasses.replace(self, numerics=dataclasses.replace(self.numerics, **kw))


def to_dict(cfg: XGenMMConfig) -> dict:
  """A JSON-able dict of the config (saved beside checkpoints)."""
  return dataclasses.asdict(cfg)


def from_dict(d: dict) -> XGenMMConfig:
  """Inverse of `to_dict`; unknown keys are an error so typos are not silently ignored."""
  return XGenMMConfig(
      vision=VisionConfig(**d["vision"]),
      resampler=ResamplerConfig(**d["resampler"]),
      text=TextConfig(**d["text"]),
      numerics=Numerics(**d.get("numerics", {})),
      anyres_grids=tuple(tuple(g) for g in d.get("anyres_grids", XGenMMConfig().anyres_grids)),
  )
