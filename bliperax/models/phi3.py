"""Phi-3 language model with xGen-MM's decoupled vocabulary, GQA, sliding window and a KV cache.

Shapes: tokens int[B, T] -> embeddings [B, T, D] -> hidden [B, T, D] -> logits
[B, T, V] with V = base_vocab + num_added (32015 for the release).

Masking is by segment ids (0 = padding; packed samples get distinct ids) and by
sequence slots (causal, plus the reference's sliding window `0 <= i - j <= window`).
With `decode=True` every attention layer keeps a cache (collection 'cache') of keys,
values and key segment ids for `S` slots; a call writes its `t` new tokens at
`cache_index` and attends over all `S` slots (unwritten ones have segment 0, masked).
"""
from __future__ import annotations

from typing import Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from bliperax.models import layers
from bliperax.models.config import Numerics, TextConfig

Array = jax.Array


class Phi3Attention(nn.Module):
  cfg: TextConfig
  num: Numerics
  decode: bool = False

  @nn.compact
  def __call__(self, x: Array, positions: Array, segment_ids: Array) -> Array:
    """x [B, T, D], positions int[B, T], segment_ids int[B, T] -> [B, T, D]."""
    c, num = self.cfg, self.num
    kw = dict(use_bias=False, dtype=num.dtype, param_dtype=num.param_dtype)
    # The projections run on [B·T, D] rows (see Phi3MLP.__call__).
    rows = x.reshape(-1, x.shape[-1])
    unflatten = lambda y: y.reshape(x.shape[:-1] + y.shape[1:])
    if self.has_variable("params", "qkv_proj"):  # fuse_projections' form (decoding)
      qkv = unflatten(layers.Dense((c.num_heads + 2 * c.num_kv_heads, c.head_dim),
                                   ("embed", "qkv_heads", "head_dim"), name="qkv_proj",
                                   **kw)(rows))
      q, k, v = jnp.split(qkv, (c.num_heads, c.num_heads + c.num_kv_heads), axis=-2)
    else:
      q = unflatten(layers.Dense((c.num_heads, c.head_dim), ("embed", "heads", "head_dim"),
                                 name="q_proj", **kw)(rows))
      k = unflatten(layers.Dense((c.num_kv_heads, c.head_dim),
                                 ("embed", "kv_heads", "head_dim"), name="k_proj", **kw)(rows))
      v = unflatten(layers.Dense((c.num_kv_heads, c.head_dim),
                                 ("embed", "kv_heads", "head_dim"), name="v_proj", **kw)(rows))
    q = layers.rope(q, positions, c.rope_theta)
    k = layers.rope(k, positions, c.rope_theta)

    t = x.shape[1]
    q_slots = jnp.arange(t)
    k_slots, k_segments = q_slots, segment_ids
    if self.decode:
      k, v, k_segments, q_slots, k_slots = self._use_cache(k, v, segment_ids)
    mask = layers.attention_mask(q_slots, k_slots, segment_ids, k_segments, causal=True,
                                 window=c.sliding_window)
    if self.decode:
      out = layers.cached_attention(q, k, v, mask)
    else:
      out = layers.dot_product_attention(q, k, v, mask, num.attention_impl)
    return unflatten(layers.Dense(c.width, ("heads", "head_dim", "embed"), contract=2,
                                  name="o_proj", **kw)(out.reshape((-1,) + out.shape[2:])))

  def _use_cache(self, k: Array, v: Array, segment_ids: Array):
    """Writes k, v [B, t, K, H] at the cache index; returns the whole cache, as
    [B·K, S, H] (`layers.cached_attention`'s layout), and the slots."""
    initialized = self.has_variable("cache", "cached_key")
    b, t, kv_heads, h = k.shape
    # [B, t, K, H] -> [B·K, t, H]
    k, v = (y.transpose(0, 2, 1, 3).reshape(b * kv_heads, t, h) for y in (k, v))
    # At init the input's length is the cache length (S).
    ck = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
    cv = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
    cs = self.variable("cache", "cached_segments", jnp.zeros, segment_ids.shape, jnp.int32)
    ci = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
    if not initialized:  # shape-only init call: behave like a full forward
      return k, v, segment_ids, jnp.arange(t), jnp.arange(t)
    idx = ci.value
    ck.value = jax.lax.dynamic_update_slice(ck.value, k.astype(ck.value.dtype), (0, idx, 0))
    cv.value = jax.lax.dynamic_update_slice(cv.value, v.astype(cv.value.dtype), (0, idx, 0))
    cs.value = jax.lax.dynamic_update_slice(cs.value, segment_ids.astype(jnp.int32), (0, idx))
    ci.value = idx + t
    s = ck.value.shape[1]
    return ck.value, cv.value, cs.value, idx + jnp.arange(t), jnp.arange(s)


class Phi3MLP(nn.Module):
  """down(up(x) · silu(gate(x))); the checkpoint fuses gate|up into one matrix."""
  cfg: TextConfig
  num: Numerics

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x [B, T, D] -> [B, T, D], the products on x as [B·T, D] rows.

    Same products, as 2-D matrices. With [B, T, ·] operands XLA's CPU backend computed
    each weight gradient with the activation gradient transposed, fused into the
    gated activation's backward (~12 ms per [1024, 1536] copy, 2 per layer); as rows
    it needs none. The train step of tools/bench_process.py's workload: ~10% faster
    with the attention projections done the same way. The merge is of leading axes
    only, so a batch sharded over `data`/`fsdp` stays sharded the same way.
    """
    kw = dict(use_bias=False, dtype=self.num.dtype, param_dtype=self.num.param_dtype)
    rows = x.reshape(-1, x.shape[-1])
    if self.has_variable("params", "gate_up_proj"):  # fuse_projections' form (decoding)
      gate, up = jnp.split(layers.Dense(2 * self.cfg.mlp_dim, ("embed", "mlp"),
                                        name="gate_up_proj", **kw)(rows), 2, axis=-1)
    else:
      gate = layers.Dense(self.cfg.mlp_dim, ("embed", "mlp"), name="gate_proj", **kw)(rows)
      up = layers.Dense(self.cfg.mlp_dim, ("embed", "mlp"), name="up_proj", **kw)(rows)
    out = layers.Dense(self.cfg.width, ("mlp", "embed"), name="down_proj", **kw)(
        up * jax.nn.silu(gate))
    return out.reshape(x.shape[:-1] + out.shape[1:])


# fused name -> (parts, the kernel axis they are stacked on, counted from the end).
_FUSED = {"qkv_proj": (("q_proj", "k_proj", "v_proj"), -2),  # [.., D, heads, head_dim]
          "gate_up_proj": (("gate_proj", "up_proj"), -1)}    # [.., D, mlp]


def fuse_projections(decoder_params: dict) -> dict:
  """The decoder's parameters with q|k|v and gate|up each joined into one kernel.

  For decoding: at one token per step every product is a matrix-vector product, and
  on CPU each costs a fixed overhead on top of reading its weights, so three 1 MB
  products cost more than one of 3 MB (the `small` model's layers: ~10% of a token).
  The attention and MLP modules use whichever form the tree holds; the checkpoint,
  training and LoRA keep the separate kernels. Works on scanned ([L, ...]) and
  unscanned layers; a projection carrying anything but its kernel (unmerged LoRA
  adapters) is left separate. Traceable: inside a jitted decode loop the join runs
  once, before the loop (XLA hoists it; it is loop-invariant).

  Args:
    decoder_params: the `lm/decoder` subtree (unboxed).
  Returns:
    A new tree (the other leaves shared, not copied).
  """
  def visit(tree):
    if not isinstance(tree, Mapping):
      return tree
    out = {k: visit(v) for k, v in tree.items()}
    for fused, (parts, axis) in _FUSED.items():
      if all(isinstance(out.get(p), dict) and set(out[p]) == {"kernel"} for p in parts):
        out[fused] = {"kernel": jnp.concatenate([out.pop(p)["kernel"] for p in parts],
                                                axis=axis)}
    return out
  return visit(decoder_params)


class Phi3Block(nn.Module):
  cfg: TextConfig
  num: Numerics
  decode: bool = False

  @nn.compact
  def __call__(self, x: Array, positions: Array, segment_ids: Array):
    kw = dict(eps=self.cfg.rms_norm_eps, dtype=self.num.dtype, param_dtype=self.num.param_dtype)
    x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
    h = layers.RMSNorm(name="input_layernorm", **kw)(x)
    x = x + Phi3Attention(self.cfg, self.num, self.decode, name="self_attn")(
        h, positions, segment_ids)
    h = layers.RMSNorm(name="post_attention_layernorm", **kw)(x)
    x = x + Phi3MLP(self.cfg, self.num, name="mlp")(h)
    return x, None


class Phi3Decoder(nn.Module):
  """The transformer stack and final norm: embeddings [B, T, D] -> hidden [B, T, D]."""
  cfg: TextConfig
  num: Numerics
  decode: bool = False

  @nn.compact
  def __call__(self, x: Array, positions: Array, segment_ids: Array) -> Array:
    c, num = self.cfg, self.num
    make = layers.stack_layers(Phi3Block, scan=num.scan_layers, remat_policy=num.remat_policy,
                               length=c.depth, broadcast_args=2,
                               variable_axes=("params", "cache"))
    x = layers.run_layers(make, scan=num.scan_layers, length=c.depth, name="layers", x=x,
                          args=(positions, segment_ids), cfg=c, num=num, decode=self.decode)
    return layers.RMSNorm(c.rms_norm_eps, dtype=num.dtype, param_dtype=num.param_dtype,
                          name="norm")(x)


class DecoupledEmbedding(nn.Module):
  """Ids < base_vocab read `embedding` [vocab_rows, D]; the rest read `additional_embedding`."""
  cfg: TextConfig
  num: Numerics

  @nn.compact
  def __call__(self, tokens: Array) -> Array:
    c = self.cfg
    pdtype, dtype = layers.dtype_of(self.num.param_dtype), layers.dtype_of(self.num.dtype)
    init = nn.initializers.normal(0.02)
    table = self.param("embedding", layers.param_with_axes(init, ("vocab", "embed")),
                       (c.vocab_rows, c.width), pdtype)
    x = jnp.take(table, jnp.where(tokens < c.base_vocab, tokens, 0), axis=0)
    if c.num_added:
      added = self.param("additional_embedding",
                         layers.param_with_axes(init, ("added_vocab", "embed")),
                         (c.num_added, c.width), pdtype)
      extra = jnp.take(added, jnp.clip(tokens - c.base_vocab, 0, c.num_added - 1), axis=0)
      x = jnp.where((tokens >= c.base_vocab)[..., None], extra, x)
    return x.astype(dtype)


class DecoupledHead(nn.Module):
  """logits = [x·W[:, :base_vocab] + b[:base_vocab] ; x·W_add + b_add], float32[B, T, V].

  Rows base_vocab..vocab_rows of the base head are dead (never produce a logit) but are
  kept so checkpoints round-trip.
  """
  cfg: TextConfig
  num: Numerics
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: Array, parts: bool = False):
    """x [B, T, D] -> logits float32[B, T, V].

    With `parts`: (base float32[B, T, vocab_rows], added float32[B, T, num_added] or
    None) uncut, for losses that work on the parts (train/losses.decoupled_nll):
    cutting and concatenating [B, T, V] logits costs a copy forward and a padded copy
    of their gradient backward.
    """
    c = self.cfg
    pdtype, dtype = layers.dtype_of(self.num.param_dtype), layers.dtype_of(self.num.dtype)
    init = nn.initializers.normal(0.02)
    kernel = self.param("kernel", layers.param_with_axes(init, ("embed", "vocab")),
                        (c.width, c.vocab_rows), pdtype)
    bias = None
    if self.use_bias:
      bias = self.param("bias", layers.param_with_axes(nn.initializers.zeros, ("vocab",)),
                        (c.vocab_rows,), pdtype)
    # The whole table times x, then the logits cut: cutting (and concatenating) the
    # kernel instead makes XLA copy the [D, vocab_rows] table on every call, which
    # dominated a decoded token's time. The dead columns cost vocab_rows - base_vocab
    # extra logits (52 of 32064).
    base = self._project(x, kernel, bias, dtype)
    added = None
    if c.num_added:
      add_k = self.param("additional_kernel",
                         layers.param_with_axes(init, ("embed", "added_vocab")),
                         (c.width, c.num_added), pdtype)
      add_b = self.param("additional_bias",
                         layers.param_with_axes(nn.initializers.zeros, ("added_vocab",)),
                         (c.num_added,), pdtype)
      added = self._project(x, add_k, add_b if bias is not None else None, dtype)
    if parts:
      return base, added
    logits = base[..., :c.base_vocab]
    return logits if added is None else jnp.concatenate([logits, added], axis=-1)

  @staticmethod
  def _project(x: Array, kernel: Array, bias: Optional[Array], dtype) -> Array:
    """x [B, T, D] · kernel [D, N] (+ bias [N]) -> float32[B, T, N]."""
    out = jnp.einsum("btd,dv->btv", x.astype(dtype), kernel.astype(dtype),
                     preferred_element_type=jnp.float32)
    return out if bias is None else out + bias.astype(jnp.float32)


class Phi3LanguageModel(nn.Module):
  """Embedding, decoder and head, callable separately so the VLM can splice in vision tokens."""
  cfg: TextConfig
  num: Numerics
  decode: bool = False
  head_bias: bool = True

  def setup(self):
    self.embed = DecoupledEmbedding(self.cfg, self.num)
    self.decoder = Phi3Decoder(self.cfg, self.num, self.decode)
    self.head = DecoupledHead(self.cfg, self.num, self.head_bias)

  def __call__(self, tokens: Array, positions: Array, segment_ids: Array) -> Array:
    """Text-only forward: tokens int[B, T] -> logits float32[B, T, V]."""
    return self.head(self.decoder(self.embed(tokens), positions, segment_ids))
