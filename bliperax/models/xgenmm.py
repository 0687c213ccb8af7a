"""The xGen-MM VLM: crops -> SigLIP -> regroup -> Perceiver -> splice into text -> Phi-3 -> logits.

Inputs are the static-shape arrays named `MODEL_KEYS` in `bliperax.data.batch_spec`,
whose docstring is the one description of the batch layout (the regrouping is
bliperax/DESIGN.md §3); everything ragged was resolved on the host.
"""
from __future__ import annotations

from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from bliperax.data import batch_spec
from bliperax.data import pixels
from bliperax.models.config import XGenMMConfig
from bliperax.models.phi3 import Phi3LanguageModel
from bliperax.models.resampler import PerceiverResampler
from bliperax.models.siglip import SiglipVisionTower

Array = jax.Array
BTD = ("activation_batch", "activation_length", "activation_embed")


def _constrain(x: Array, axes) -> Array:
  """Pins activations to the batch sharding (a no-op without a mesh and rules)."""
  return nn.with_logical_constraint(x, axes)


def _write_slots(x: Array, vision: Array, vision_slots: Array) -> Array:
  """Text embeddings x [B, T, D] with vision tokens [B, G, L, D] written at their slots
  int[B, G·L]; slot T (out of range) drops a token (padding groups)."""
  b = vision.shape[0]
  vision = vision.reshape(b, -1, vision.shape[-1]).astype(x.dtype)  # [B, G·L, D]
  x = x.at[jnp.arange(b)[:, None], vision_slots].set(vision, mode="drop")
  return _constrain(x, BTD)


class XGenMM(nn.Module):
  """The VLM. Parameters: 'vision' (SigLIP), 'resampler' (Perceiver), 'lm' (Phi-3)."""
  config: XGenMMConfig
  decode: bool = False
  # Stop gradients at the ViT output when the vision tower is frozen, so its backward
  # pass is never computed (the optimizer also gives it no state and no update).
  freeze_vision: bool = False

  def setup(self):
    c = self.config
    self.vision = SiglipVisionTower(c.vision, c.numerics)
    self.resampler = PerceiverResampler(c.resampler, c.numerics)
    self.lm = Phi3LanguageModel(c.text, c.numerics, decode=self.decode)

  def encode_images(self, crops: Array, group_index: Array, group_mask: Array) -> Array:
    """crops [B, C, H, W, 3], group_index int[B, G, P], group_mask bool[B, G, P] -> [B, G, L, D].

    Crops are uint8 pixels (the batch layout), normalised here, on the device, by the
    host's own table (bliperax/data/pixels.py), or float32 already in [-1, 1].
    """
    if crops.dtype == jnp.uint8:
      crops = pixels.normalize(crops)
    b, c = crops.shape[:2]
    crops = _constrain(crops.reshape((b * c,) + crops.shape[2:]),
                       ("activation_batch", None, None, None))
    feats = self.vision(crops)  # [B·C, P, Dv]
    if self.freeze_vision:
      feats = jax.lax.stop_gradient(feats)
    self.sow("intermediates", "vit_features", feats)
    p, dv = feats.shape[1:]
    feats = feats.reshape(b, c * p, dv)
    grouped = jax.vmap(lambda f, i: f[i])(feats, group_index)  # [B, G, P, Dv]
    g = group_index.shape[1]
    grouped = _constrain(grouped.reshape(b * g, p, dv), BTD)
    mask = group_mask.reshape(b * g, p)
    self.sow("intermediates", "resampler_inputs", grouped)
    tokens = self.resampler(grouped, mask)  # [B·G, L, D]
    self.sow("intermediates", "resampler_outputs", tokens)
    return tokens.reshape((b, g) + tokens.shape[1:])

  def embed(self, tokens: Array, crops: Optional[Array] = None,
            group_index: Optional[Array] = None, group_mask: Optional[Array] = None,
            vision_slots: Optional[Array] = None) -> Array:
    """Text embeddings [B, T, D] with vision tokens written into their slots."""
    x = _constrain(self.lm.embed(tokens), BTD)
    if crops is None:
      return x
    vis = self.encode_images(crops, group_index, group_mask)
    return _write_slots(x, vis, vision_slots)

  def features(self, tokens: Array, positions: Array, segment_ids: Array,
               crops: Optional[Array] = None, group_index: Optional[Array] = None,
               group_mask: Optional[Array] = None,
               vision_slots: Optional[Array] = None) -> Array:
    """The decoder's final hidden state [B, T, D] (after the final norm), sown as 'hidden'."""
    x = self.embed(tokens, crops, group_index, group_mask, vision_slots)
    hidden = _constrain(self.lm.decoder(x, positions, segment_ids), BTD)
    self.sow("intermediates", "hidden", hidden)
    return hidden

  def features_with_vision(self, tokens: Array, positions: Array, segment_ids: Array,
                           vision: Array, vision_slots: Array) -> Array:
    """`features` with the vision tokens given instead of computed: vision [B, G, L, D]
    (`encode_images`' output, e.g. computed once for both rows of a DPO pair,
    bliperax/data/pairs.py) written into `vision_slots` int[B, G·L]."""
    x = _write_slots(_constrain(self.lm.embed(tokens), BTD), vision, vision_slots)
    hidden = _constrain(self.lm.decoder(x, positions, segment_ids), BTD)
    self.sow("intermediates", "hidden", hidden)
    return hidden

  def logits(self, hidden: Array) -> Array:
    """hidden [B, K, D] -> logits float32[B, K, V] (K: all positions or a gathered subset)."""
    return _constrain(self.lm.head(hidden),
                      ("activation_batch", "activation_length", "activation_vocab"))

  def logit_parts(self, hidden: Array) -> Tuple[Array, Optional[Array]]:
    """hidden [B, K, D] -> the head's uncut parts (base float32[B, K, vocab_rows], added
    float32[B, K, num_added] or None), for train/losses.decoupled_nll."""
    base, added = self.lm.head(hidden, parts=True)
    return _constrain(base, ("activation_batch", "activation_length", "activation_vocab")), added

  def __call__(self, tokens: Array, positions: Array, segment_ids: Array,
               crops: Optional[Array] = None, group_index: Optional[Array] = None,
               group_mask: Optional[Array] = None,
               vision_slots: Optional[Array] = None) -> Array:
    """Returns logits float32[B, T, V]; the final hidden state is sown as 'hidden'."""
    return self.logits(self.features(tokens, positions, segment_ids, crops, group_index,
                                      group_mask, vision_slots))


def dummy_inputs(cfg: XGenMMConfig, batch: int = 1, length: int = 8, crops: int = 1,
                 groups: int = 1) -> dict:
  """Smallest well-formed inputs (for init / shape inference), as keyword arguments."""
  s, p = cfg.vision.image_size, cfg.vision.num_patches
  return dict(
      tokens=jnp.zeros((batch, length), jnp.int32),
      positions=jnp.zeros((batch, length), jnp.int32),
      segment_ids=jnp.ones((batch, length), jnp.int32),
      crops=jnp.zeros((batch, crops, s, s, 3), batch_spec.CROPS_DTYPE),
      group_index=jnp.zeros((batch, groups, p), jnp.int32),
      group_mask=jnp.ones((batch, groups, p), bool),
      vision_slots=jnp.full((batch, groups * cfg.resampler.num_latents), length, jnp.int32),
  )


def init_params(cfg: XGenMMConfig, rng: jax.Array) -> dict:
  """Freshly initialised parameters (boxed with their logical axis names).

  Jitted: eager init would compile every initializer op separately (~10x slower).
  """
  return jax.jit(lambda r: XGenMM(cfg).init(r, **dummy_inputs(cfg))["params"])(rng)


def abstract_params(cfg: XGenMMConfig) -> dict:
  """Parameter shapes and dtypes (boxed with logical axes) without allocating anything."""
  return jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
