"""SigLIP vision tower: patch embedding, pre-LN encoder, post-LN, and the (unused) pooling head.

Shapes: images float32[B, H, W, 3] in [-1, 1] -> features [B, P, D] with P = (H/patch)².
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from bliperax.models import layers
from bliperax.models.config import Numerics, VisionConfig

Array = jax.Array


class SiglipAttention(nn.Module):
  """Bidirectional multi-head self-attention with biased q/k/v/out projections."""
  cfg: VisionConfig
  num: Numerics

  @nn.compact
  def __call__(self, x: Array) -> Array:
    n, h = self.cfg.num_heads, self.cfg.width // self.cfg.num_heads
    kw = dict(dtype=self.num.dtype, param_dtype=self.num.param_dtype)
    proj = lambda name: layers.Dense((n, h), ("embed", "heads", "head_dim"), name=name, **kw)
    q, k, v = proj("q_proj")(x), proj("k_proj")(x), proj("v_proj")(x)  # [B, P, N, H]
    out = layers.dot_product_attention(q, k, v, None, self.num.attention_impl)
    return layers.Dense(self.cfg.width, ("heads", "head_dim", "embed"), contract=2,
                        name="out_proj", **kw)(out)


class SiglipMLP(nn.Module):
  """fc1 -> GELU (tanh form) -> fc2, both biased."""
  width: int
  mlp_dim: int
  num: Numerics

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kw = dict(dtype=self.num.dtype, param_dtype=self.num.param_dtype)
    x = layers.Dense(self.mlp_dim, ("embed", "mlp"), name="fc1", **kw)(x)
    x = jax.nn.gelu(x, approximate=True)
    return layers.Dense(self.width, ("mlp", "embed"), name="fc2", **kw)(x)


class SiglipBlock(nn.Module):
  """Pre-LN transformer block: x + attn(LN1 x), then x + mlp(LN2 x)."""
  cfg: VisionConfig
  num: Numerics

  @nn.compact
  def __call__(self, x: Array):
    kw = dict(eps=self.cfg.layer_norm_eps, dtype=self.num.dtype,
              param_dtype=self.num.param_dtype)
    x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
    x = x + SiglipAttention(self.cfg, self.num, name="self_attn")(
        layers.LayerNorm(name="layer_norm1", **kw)(x))
    x = x + SiglipMLP(self.cfg.width, self.cfg.mlp_dim, self.num, name="mlp")(
        layers.LayerNorm(name="layer_norm2", **kw)(x))
    return x, None


class SiglipPoolingHead(nn.Module):
  """Multi-head attention pooling (MAP) head of SigLIP: probe attends over the features.

  xGen-MM never uses it; it exists so released checkpoints round-trip and so the tower
  can be checked against `SiglipVisionModel.pooler_output`.
  """
  cfg: VisionConfig
  num: Numerics

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """[B, P, D] -> pooled [B, D]."""
    d, n = self.cfg.width, self.cfg.num_heads
    h = d // n
    kw = dict(dtype=self.num.dtype, param_dtype=self.num.param_dtype)
    probe = self.param("probe", layers.param_with_axes(nn.initializers.normal(1.0),
                                                       (None, None, "embed")),
                       (1, 1, d), layers.dtype_of(self.num.param_dtype))
    probe = jnp.broadcast_to(probe.astype(x.dtype), (x.shape[0], 1, d))
    proj = lambda name: layers.Dense((n, h), ("embed", "heads", "head_dim"), name=name, **kw)
    q, k, v = proj("q_proj")(probe), proj("k_proj")(x), proj("v_proj")(x)
    y = layers.dot_product_attention(q, k, v, None, self.num.attention_impl)
    y = layers.Dense(d, ("heads", "head_dim", "embed"), contract=2, name="out_proj", **kw)(y)
    normed = layers.LayerNorm(self.cfg.layer_norm_eps, name="layernorm", **kw)(y)
    y = y + SiglipMLP(d, self.cfg.mlp_dim, self.num, name="mlp")(normed)
    return y[:, 0]


class SiglipVisionTower(nn.Module):
  """SigLIP ViT returning the post-layernorm patch features (what xGen-MM uses)."""
  cfg: VisionConfig
  num: Numerics

  @nn.compact
  def __call__(self, images: Array, with_pooled: bool = False):
    """images float32[B, H, W, 3] -> features [B, P, D] (and pooled [B, D] if asked)."""
    c, num = self.cfg, self.num
    dtype, pdtype = layers.dtype_of(num.dtype), layers.dtype_of(num.param_dtype)
    x = nn.Conv(c.width, (c.patch_size, c.patch_size), strides=(c.patch_size, c.patch_size),
                padding="VALID", dtype=dtype, param_dtype=pdtype,
                kernel_init=layers.param_with_axes(
                    nn.initializers.lecun_normal(),
                    ("conv_height", "conv_width", "channels", "embed")),
                bias_init=layers.param_with_axes(nn.initializers.zeros, ("embed",)),
                name="patch_embedding")(images.astype(dtype))
    x = x.reshape(x.shape[0], -1, c.width)  # [B, P, D], patches row-major
    pos = self.param("position_embedding",
                     layers.param_with_axes(nn.initializers.normal(0.02), ("patches", "embed")),
                     (c.num_patches, c.width), pdtype)
    x = x + pos[None, :x.shape[1]].astype(dtype)
    make = layers.stack_layers(SiglipBlock, scan=num.scan_layers,
                               remat_policy=num.remat_policy, length=c.depth,
                               broadcast_args=0)
    x = layers.run_layers(make, scan=num.scan_layers, length=c.depth, name="layers", x=x,
                          args=(), cfg=c, num=num)
    x = layers.LayerNorm(c.layer_norm_eps, dtype=num.dtype, param_dtype=num.param_dtype,
                         name="post_layernorm")(x)
    if c.with_head and (with_pooled or self.is_initializing()):
      pooled = SiglipPoolingHead(c, num, name="head")(x)
      if with_pooled:
        return x, pooled
    return x
