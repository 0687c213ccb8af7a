"""Perceiver resampler (xGen-MM `vision_tokenizer`): P vision features -> L latent tokens.

Per layer (bliperax/DESIGN.md §1.2): keys/values come from [LN_media(x) ; LN_latents(latents)],
queries from LN_latents(latents); the residual adds the un-normalised latents; then a
pre-LN feed-forward with exact (erf) GELU. Output: projection(LN(latents)) with bias.

Shapes: features [B, P, Dv], key mask bool[B, P] -> tokens [B, L, Dllm].
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from bliperax.models import layers
from bliperax.models.config import Numerics, ResamplerConfig

Array = jax.Array


class PerceiverAttention(nn.Module):
  cfg: ResamplerConfig
  num: Numerics

  @nn.compact
  def __call__(self, x: Array, latents: Array, media_mask: Array) -> Array:
    """x [B, P, D], latents [B, L, D], media_mask bool[B, P] -> latents update [B, L, D]."""
    c = self.cfg
    kw = dict(dtype=self.num.dtype, param_dtype=self.num.param_dtype)
    norm_kw = dict(eps=c.layer_norm_eps, **kw)
    m = layers.LayerNorm(name="norm_media", **norm_kw)(x)
    lat = layers.LayerNorm(name="norm_latents", **norm_kw)(latents)
    heads = (c.num_heads, c.head_dim)
    q = layers.Dense(heads, ("embed", "heads", "head_dim"), use_bias=False, name="to_q",
                     **kw)(lat)
    kv_in = jnp.concatenate([m, lat], axis=1)  # [B, P+L, D]: media first, then latents
    k = layers.Dense(heads, ("embed", "heads", "head_dim"), use_bias=False, name="to_k",
                     **kw)(kv_in)
    v = layers.Dense(heads, ("embed", "heads", "head_dim"), use_bias=False, name="to_v",
                     **kw)(kv_in)
    # Latent keys are never masked, so no query row is ever empty.
    key_valid = jnp.concatenate(
        [media_mask, jnp.ones(latents.shape[:2], dtype=bool)], axis=1)  # [B, P+L]
    mask = key_valid[:, None, None, :]  # [B, 1, 1, P+L]
    out = layers.dot_product_attention(q, k, v, mask, self.num.attention_impl)
    return layers.Dense(c.width, ("heads", "head_dim", "embed"), use_bias=False,
                        contract=2, name="to_out", **kw)(out)


class PerceiverFeedForward(nn.Module):
  cfg: ResamplerConfig
  num: Numerics

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = self.cfg
    kw = dict(dtype=self.num.dtype, param_dtype=self.num.param_dtype)
    y = layers.LayerNorm(c.layer_norm_eps, name="norm", **kw)(x)
    y = layers.Dense(c.width * c.ff_mult, ("embed", "mlp"), use_bias=False, name="fc1",
                     **kw)(y)
    y = jax.nn.gelu(y, approximate=False)
    return layers.Dense(c.width, ("mlp", "embed"), use_bias=False, name="fc2", **kw)(y)


class PerceiverBlock(nn.Module):
  cfg: ResamplerConfig
  num: Numerics

  @nn.compact
  def __call__(self, latents: Array, x: Array, media_mask: Array):
    latents = PerceiverAttention(self.cfg, self.num, name="attn")(x, latents, media_mask) + latents
    latents = PerceiverFeedForward(self.cfg, self.num, name="ff")(latents) + latents
    return latents, None


class PerceiverResampler(nn.Module):
  cfg: ResamplerConfig
  num: Numerics

  @nn.compact
  def __call__(self, x: Array, media_mask: Array) -> Array:
    """x [B, P, Dv], media_mask bool[B, P] -> [B, L, Dllm]."""
    c, num = self.cfg, self.num
    latents = self.param("latents",
                         layers.param_with_axes(nn.initializers.normal(1.0), ("latents", "embed")),
                         (c.num_latents, c.width), layers.dtype_of(num.param_dtype))
    lat = jnp.broadcast_to(latents.astype(layers.dtype_of(num.dtype))[None],
                           (x.shape[0],) + latents.shape)
    make = layers.stack_layers(PerceiverBlock, scan=num.scan_layers,
                               remat_policy=num.remat_policy, length=c.depth,
                               broadcast_args=2)
    lat = layers.run_layers(make, scan=num.scan_layers, length=c.depth, name="layers", x=lat,
                            args=(x, media_mask), cfg=c, num=num)
    lat = layers.LayerNorm(c.layer_norm_eps, dtype=num.dtype, param_dtype=num.param_dtype,
                           name="norm")(lat)
    return layers.Dense(c.out_width, ("embed", "out_embed"), use_bias=True, name="projection",
                        dtype=num.dtype, param_dtype=num.param_dtype)(lat)
