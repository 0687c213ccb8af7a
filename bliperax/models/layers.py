"""Shared building blocks: dense layers and norms with logical axes, RoPE, attention, layer stacking.

Einsum letters used across the model files:
  B batch, T query length, S key length, D width, N query heads, K key/value heads,
  H head dim, F feed-forward width, P patches per crop, L latents, G vision groups.

Logical axis names (mapped to mesh axes by the rules in `bliperax.sharding`):
  'embed' model width, 'mlp' feed-forward width, 'heads' / 'kv_heads' attention heads,
  'head_dim', 'vocab', 'layers' (stacked by nn.scan), 'norm' (norm scales), 'patches',
  'latents', 'conv_height' / 'conv_width' / 'channels' (patch conv), 'added_vocab'.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Axes = Tuple[Optional[str], ...]

REMAT_POLICIES = {
    "none": None,  # no rematerialisation
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "everything": jax.checkpoint_policies.everything_saveable,
}


def dtype_of(name: str) -> jnp.dtype:
  return jnp.dtype(name)


def param_with_axes(init: Callable, axes: Axes) -> Callable:
  """An initializer whose parameter carries logical axis names."""
  return nn.with_logical_partitioning(init, axes)


class Dense(nn.Module):
  """y = x·W (+ b) contracting the last `len(in_shape)` axes; W has logical axes.

  Attributes:
    features: output shape (int or tuple), e.g. `(num_heads, head_dim)`.
    axes: logical names of the kernel, input axes first, e.g. ('embed', 'heads', 'head_dim').
    contract: number of trailing input axes contracted (2 for an output projection
      from [.., N, H]).
  """
  features: Any
  axes: Axes
  use_bias: bool = True
  contract: int = 1
  dtype: str = "float32"
  param_dtype: str = "float32"
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    in_shape = x.shape[-self.contract:]
    n_in = len(in_shape)
    # lecun_normal looks at fan-in over the contracted axes via in_axis/out_axis.
    init = nn.initializers.variance_scaling(
        1.0, "fan_in", "truncated_normal",
        in_axis=tuple(range(n_in)), out_axis=tuple(range(n_in, n_in + len(features))))
    kernel = self.param("kernel", param_with_axes(init, self.axes), in_shape + features,
                        dtype_of(self.param_dtype))
    dtype = dtype_of(self.dtype)
    x = x.astype(dtype)
    kernel = kernel.astype(dtype)
    y = jax.lax.dot_general(
        x, kernel,
        (((tuple(range(x.ndim - n_in, x.ndim))), tuple(range(n_in))), ((), ())))
    if self.use_bias:
      bias = self.param("bias", param_with_axes(nn.initializers.zeros, self.axes[n_in:]),
                        features, dtype_of(self.param_dtype))
      y = y + bias.astype(dtype)
    return y


class LayerNorm(nn.Module):
  """LayerNorm with scale and bias (computed in float32, as PyTorch does)."""
  eps: float
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    d = x.shape[-1]
    scale = self.param("scale", param_with_axes(nn.initializers.ones, ("norm",)), (d,),
                       dtype_of(self.param_dtype))
    bias = self.param("bias", param_with_axes(nn.initializers.zeros, ("norm",)), (d,),
                      dtype_of(self.param_dtype))
    xf = x.astype(jnp.float32)
    mean = xf.mean(-1, keepdims=True)
    var = jnp.square(xf - mean).mean(-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
    y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return y.astype(dtype_of(self.dtype))


class RMSNorm(nn.Module):
  """Phi-3 RMSNorm: normalise in float32, cast back, then scale."""
  eps: float
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    d = x.shape[-1]
    scale = self.param("scale", param_with_axes(nn.initializers.ones, ("norm",)), (d,),
                       dtype_of(self.param_dtype))
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.square(xf).mean(-1, keepdims=True) + self.eps)
    dtype = dtype_of(self.dtype)
    return scale.astype(dtype) * y.astype(dtype)


def rope(x: Array, positions: Array, theta: float) -> Array:
  """Rotary embedding in the non-interleaved ("rotate half") layout of Phi-3/Llama.

  Args:
    x: [B, T, N, H] queries or keys.
    positions: int[B, T] position of every token.
    theta: RoPE base.
  Returns:
    [B, T, N, H], same dtype as x.
  """
  h = x.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))  # [H/2]
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, T, 1, H]
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  xf = x.astype(jnp.float32)
  x1, x2 = jnp.split(xf, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (xf * cos + rotated * sin).astype(x.dtype)


def attention_mask(q_slots: Array, k_slots: Array, q_segments: Array, k_segments: Array,
                   causal: bool, window: Optional[int]) -> Array:
  """Boolean attention mask bool[B, 1, T, S] (True = attend).

  A query attends a key of the same non-zero segment (0 marks padding; packing gives
  each sample its own segment id). With `causal`, only keys at slots <= the query's
  slot, and with `window` only keys with 0 <= q_slot - k_slot <= window (the
  reference's sliding-window rule: window + 1 keys).

  Args:
    q_slots: int[T] or int[B, T] sequence slot of each query.
    k_slots: int[S] or int[B, S] sequence slot of each key.
    q_segments: int[B, T]; k_segments: int[B, S].
  """
  q_slots = jnp.broadcast_to(q_slots, q_segments.shape)
  k_slots = jnp.broadcast_to(k_slots, k_segments.shape)
  mask = (q_segments[:, :, None] == k_segments[:, None, :]) & (k_segments[:, None, :] != 0)
  diff = q_slots[:, :, None] - k_slots[:, None, :]
  if causal:
    mask &= diff >= 0
  if window is not None:
    mask &= diff <= window
  return mask[:, None, :, :]


def dot_product_attention(q: Array, k: Array, v: Array, mask: Optional[Array],
                          implementation: Optional[str] = None) -> Array:
  """Softmax attention through `jax.nn.dot_product_attention` (GQA when K < N).

  Args:
    q: [B, T, N, H]; k, v: [B, S, K, H] with N % K == 0.
    mask: bool[B, 1 or N, T, S] or None.
  Returns:
    [B, T, N, H].
  """
  scale = q.shape[-1] ** -0.5
  return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale,
                                      implementation=implementation)


def cached_attention(q: Array, k_cache: Array, v_cache: Array, mask: Array) -> Array:
  """Softmax attention of queries over a KV cache kept as [B·K, S, H].

  The arithmetic of `dot_product_attention`'s XLA path (jax.nn's: logits in at least
  float32, scaled, masked to its large negative, softmax in float32, probabilities in
  the cache's dtype), with each (row, kv head) one batch entry of a plain batched
  matrix product. Why this layout: XLA's CPU batched products take operands as
  [batch, rows, columns] and nothing else; with the cache as [B, S, K, H] XLA copied
  both caches of every layer into that order for every decoded token, 16 copies of
  the whole cache per token for 8 layers, ~20% of the `small` preset's decode step.

  Args:
    q: [B, T, N, H] with N a multiple of K.
    k_cache, v_cache: [B·K, S, H], row b's head k at b·K + k.
    mask: bool[B, 1, T, S] (True = attend).
  Returns:
    [B, T, N, H] in v_cache's dtype.
  """
  b, t, n, h = q.shape
  bk, s, _ = k_cache.shape
  kv_heads = bk // b
  groups = n // kv_heads
  # [B, T, K, G, H] -> [B·K, T·G, H]: query heads k·G .. k·G + G - 1 share kv head k.
  q = q.reshape(b, t, kv_heads, groups, h).transpose(0, 2, 1, 3, 4).reshape(bk, t * groups, h)
  batched = ((0,), (0,))
  logits = jax.lax.dot_general(q, k_cache, (((2,), (2,)), batched),
                               preferred_element_type=jnp.promote_types(q.dtype, jnp.float32))
  logits = logits * jnp.array(h ** -0.5, logits.dtype)
  mask = jnp.broadcast_to(mask[:, :, :, None, :], (b, kv_heads, t, groups, s))
  logits = jnp.where(mask.reshape(bk, t * groups, s), logits,
                     -0.7 * jnp.finfo(jnp.float32).max)  # jax.nn's masked value
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(k_cache.dtype)
  out = jax.lax.dot_general(probs, v_cache, (((2,), (1,)), batched))
  return out.reshape(b, kv_heads, t, groups, h).transpose(0, 2, 1, 3, 4).reshape(b, t, n, h)


def stack_layers(block: type[nn.Module], *, scan: bool, remat_policy: str, length: int,
                 broadcast_args: int, variable_axes: Sequence[str] = ("params",),
                 static_argnums: Tuple[int, ...] = ()) -> Callable[..., nn.Module]:
  """Returns a constructor for `length` copies of `block`, scanned or unrolled.

  `block.__call__(x, *args)` must return `(x, None)`; the `broadcast_args` extra
  arguments are the same for every layer. With `scan`, parameters get a leading
  'layers' axis (named in their logical partitioning) and live under one module;
  without, each layer is its own module `name_{i}`.
  """
  policy = REMAT_POLICIES[remat_policy]
  if remat_policy != "none":
    block = nn.remat(block, policy=policy, prevent_cse=not scan,
                     static_argnums=static_argnums)
  if scan:
    return functools.partial(
        nn.scan(block,
                variable_axes={name: 0 for name in variable_axes},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast,) * broadcast_args,
                length=length,
                metadata_params={nn.PARTITION_NAME: "layers"}))
  return block


def run_layers(make: Callable[..., nn.Module], *, scan: bool, length: int, name: str,
               x: Array, args: Sequence[Any], **block_kwargs) -> Array:
  """Applies stacked layers built by `stack_layers` to `x` (called inside a compact module)."""
  if scan:
    x, _ = make(name=name, **block_kwargs)(x, *args)
    return x
  for i in range(length):
    x, _ = make(name=f"{name}_{i}", **block_kwargs)(x, *args)
  return x
