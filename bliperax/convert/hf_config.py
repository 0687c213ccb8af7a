"""HF `config.json` (xGen-MM, SigLIP, Phi-3) <-> bliperax model configs.

The released xGen-MM config leaves the vision and resampler shapes implicit (the
reference's defaults: SigLIP so400m/14 at 384 and a 6-layer Perceiver); fixtures and
our exports spell them out. Missing fields fall back to those defaults.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Optional

from bliperax.models.config import (BASE_VOCAB, NUM_ADDED_TOKENS, ResamplerConfig, TextConfig,
                                    VisionConfig, XGenMMConfig)


def _get(d: Dict[str, Any], key: str, default):
  value = d.get(key)
  return default if value is None else value


def vision_from_hf(v: Dict[str, Any]) -> VisionConfig:
  """From a SigLIP vision config (`vision_encoder_config` or SiglipVisionConfig)."""
  dflt = VisionConfig()
  return VisionConfig(
      image_size=_get(v, "image_size", dflt.image_size),
      patch_size=_get(v, "patch_size", dflt.patch_size),
      width=_get(v, "hidden_size", dflt.width),
      mlp_dim=_get(v, "intermediate_size", dflt.mlp_dim),
      depth=_get(v, "num_hidden_layers", dflt.depth),
      num_heads=_get(v, "num_attention_heads", dflt.num_heads),
      layer_norm_eps=_get(v, "layer_norm_eps", dflt.layer_norm_eps),
  )


def text_from_hf(t: Dict[str, Any], vocab_rows: Optional[int] = None,
                 decoupled: bool = True) -> TextConfig:
  """From a Phi-3 config; `vocab_rows` from the checkpoint's embedding when known."""
  dflt = TextConfig()
  # transformers 5 writes {"rope_parameters": {"rope_theta", "rope_type", ...}} instead
  # of top-level rope_theta / rope_scaling; read both spellings.
  rope = t.get("rope_parameters") or {}
  if t.get("rope_scaling") or rope.get("rope_type", "default") not in ("default", None):
    raise ValueError(f"rope_scaling={t.get('rope_scaling') or rope} is not supported "
                     "(only plain RoPE)")
  theta = t.get("rope_theta", rope.get("rope_theta"))
  width = _get(t, "hidden_size", dflt.width)
  heads = _get(t, "num_attention_heads", dflt.num_heads)
  rows = vocab_rows or _get(t, "vocab_size", dflt.vocab_rows)
  base = _get(t, "initial_tokenizer_len", BASE_VOCAB) if decoupled else rows
  return TextConfig(
      vocab_rows=rows,
      base_vocab=base,
      num_added=NUM_ADDED_TOKENS if decoupled else 0,
      width=width,
      depth=_get(t, "num_hidden_layers", dflt.depth),
      num_heads=heads,
      num_kv_heads=_get(t, "num_key_value_heads", heads),
      head_dim=_get(t, "head_dim", width // heads),
      mlp_dim=_get(t, "intermediate_size", dflt.mlp_dim),
      rms_norm_eps=_get(t, "rms_norm_eps", dflt.rms_norm_eps),
      rope_theta=float(dflt.rope_theta if theta is None else theta),
      max_positions=_get(t, "max_position_embeddings", dflt.max_positions),
      sliding_window=t.get("sliding_window", dflt.sliding_window),
  )


def xgenmm_from_hf(config: Dict[str, Any], vocab_rows: Optional[int] = None) -> XGenMMConfig:
  """From an xGen-MM `config.json` dict (released or explicit)."""
  if config.get("model_type") not in (None, "xgenmm"):
    raise ValueError(f"config model_type is {config.get('model_type')!r}, expected 'xgenmm'")
  v = config.get("vision_encoder_config") or {}
  r = config.get("vision_tokenizer_config") or {}
  vision = vision_from_hf(v)
  text = text_from_hf(config.get("text_config") or {}, vocab_rows)
  dflt = ResamplerConfig()
  resampler = ResamplerConfig(
      width=_get(r, "vis_feature_dim", vision.width),
      out_width=_get(r, "lang_embedding_dim", text.width),
      num_latents=_get(r, "num_vis_tokens", dflt.num_latents),
      depth=_get(r, "depth", dflt.depth),
      num_heads=_get(r, "heads", dflt.num_heads),
      head_dim=_get(r, "dim_head", dflt.head_dim),
      ff_mult=_get(r, "ff_mult", dflt.ff_mult),
  )
  grids = tuple(tuple(g) for g in _get(v, "anyres_grids", XGenMMConfig().anyres_grids))
  return XGenMMConfig(vision=vision, resampler=resampler, text=text, anyres_grids=grids)


def xgenmm_to_hf(cfg: XGenMMConfig, dtype: str = "float32",
                 source: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  """An explicit xGen-MM config.json dict; keeps every field of `source` (the original file)."""
  out = copy.deepcopy(source) if source else {
      "architectures": ["XGenMMModelForConditionalGeneration"], "model_type": "xgenmm"}
  v = out.setdefault("vision_encoder_config", {})
  v.setdefault("model_type", "xgenmm_vision_encoder")
  v.setdefault("image_aspect_ratio", "anyres")
  v.setdefault("anyres_patch_sampling", True)
  v.update(anyres_grids=[list(g) for g in cfg.anyres_grids], hidden_size=cfg.vision.width,
           intermediate_size=cfg.vision.mlp_dim, num_hidden_layers=cfg.vision.depth,
           num_attention_heads=cfg.vision.num_heads, image_size=cfg.vision.image_size,
           patch_size=cfg.vision.patch_size, layer_norm_eps=cfg.vision.layer_norm_eps)
  v.setdefault("hidden_act", "gelu_pytorch_tanh")
  r = out.setdefault("vision_tokenizer_config", {})
  r.setdefault("model_type", "xgenmm_vision_tokenizer")
  rc = cfg.resampler
  r.update(vis_feature_dim=rc.width, lang_embedding_dim=rc.out_width,
           num_vis_tokens=rc.num_latents, depth=rc.depth, heads=rc.num_heads,
           dim_head=rc.head_dim, ff_mult=rc.ff_mult)
  t = out.setdefault("text_config", {})
  tc = cfg.text
  t.setdefault("model_type", "phi3")
  t.update(hidden_size=tc.width, intermediate_size=tc.mlp_dim, num_hidden_layers=tc.depth,
           num_attention_heads=tc.num_heads, num_key_value_heads=tc.num_kv_heads,
           rms_norm_eps=tc.rms_norm_eps, rope_theta=tc.rope_theta,
           max_position_embeddings=tc.max_positions, sliding_window=tc.sliding_window,
           initial_tokenizer_len=tc.base_vocab, hidden_act="silu")
  if tc.head_dim != tc.width // tc.num_heads:
    t["head_dim"] = tc.head_dim
  t.setdefault("vocab_size", tc.logit_width)
  t.setdefault("tie_word_embeddings", False)
  t.setdefault("pad_token_id", 32011)
  t.setdefault("eos_token_id", 32000)
  t.setdefault("bos_token_id", 1)
  t.setdefault("rope_scaling", None)
  out.setdefault("torch_dtype", dtype)
  return out
