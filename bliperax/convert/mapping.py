"""Declarative map between HF/PyTorch tensor names and bliperax parameter paths.

One `Rule` per HF tensor: its name, the bliperax path(s) it becomes (several when the
checkpoint fuses projections: Phi-3 `qkv_proj`, `gate_up_proj`, the Perceiver
`to_kv`, the SigLIP head's `in_proj`), and a transform kind:

  copy    same array (norm scales, biases of unsplit layers, tables, latents)
  linear  torch Linear weight [out, in] -> kernel [in..., out...] (transpose + reshape);
          fused weights split along `out` into the listed kernels
  bias    [out] -> bias of each listed layer, split like `linear`
  conv    OIHW -> HWIO

Paths use the unscanned layout (`layers_{i}`); `bliperax.convert.layout` stacks them
for `nn.scan`. Tower prefixes differ between the released VLM (`vlm.vision_encoder.`,
`vlm.vision_tokenizer.`, `vlm.lang_model.`) and standalone backbones (`vision_model.`
for SigLIP, none for Phi-3); the rule builders take the prefix.
"""
from __future__ import annotations

import dataclasses
from typing import List, Tuple

import numpy as np

from bliperax.models.config import XGenMMConfig

VLM_PREFIXES = {"vision": "vlm.vision_encoder.", "resampler": "vlm.vision_tokenizer.",
                "lm": "vlm.lang_model."}


@dataclasses.dataclass(frozen=True)
class Rule:
  hf: str  # full HF tensor name
  paths: Tuple[str, ...]  # bliperax parameter paths ('/'-separated)
  kind: str  # copy | linear | bias | conv
  n_in: int = 1  # leading kernel axes that are the input (2 for [heads, head_dim, out])


def _linear(hf, paths, n_in=1):
  return Rule(hf, tuple(paths), "linear", n_in)


def vision_rules(cfg: XGenMMConfig, prefix: str = VLM_PREFIXES["vision"],
                 base: str = "vision") -> List[Rule]:
  """SigLIP vision tower (HF `SiglipVisionTransformer` names under `prefix`)."""
  p, b = prefix, base
  rules = [
      Rule(p + "embeddings.patch_embedding.weight", (f"{b}/patch_embedding/kernel",), "conv"),
      Rule(p + "embeddings.patch_embedding.bias", (f"{b}/patch_embedding/bias",), "copy"),
      Rule(p + "embeddings.position_embedding.weight", (f"{b}/position_embedding",), "copy"),
      Rule(p + "post_layernorm.weight", (f"{b}/post_layernorm/scale",), "copy"),
      Rule(p + "post_layernorm.bias", (f"{b}/post_layernorm/bias",), "copy"),
  ]
  for i in range(cfg.vision.depth):
    hp, fp = f"{p}encoder.layers.{i}.", f"{b}/layers_{i}/"
    for n in ("layer_norm1", "layer_norm2"):
      rules += [Rule(hp + n + ".weight", (fp + n + "/scale",), "copy"),
                Rule(hp + n + ".bias", (fp + n + "/bias",), "copy")]
    for n in ("q_proj", "k_proj", "v_proj"):
      rules += [_linear(hp + f"self_attn.{n}.weight", [fp + f"self_attn/{n}/kernel"]),
                Rule(hp + f"self_attn.{n}.bias", (fp + f"self_attn/{n}/bias",), "bias")]
    rules += [_linear(hp + "self_attn.out_proj.weight", [fp + "self_attn/out_proj/kernel"], 2),
              Rule(hp + "self_attn.out_proj.bias", (fp + "self_attn/out_proj/bias",), "copy")]
    for n in ("fc1", "fc2"):
      rules += [_linear(hp + f"mlp.{n}.weight", [fp + f"mlp/{n}/kernel"]),
                Rule(hp + f"mlp.{n}.bias", (fp + f"mlp/{n}/bias",), "copy")]
  if cfg.vision.with_head:
    hp, fp = p + "head.", f"{b}/head/"
    qkv = [fp + f"{n}/kernel" for n in ("q_proj", "k_proj", "v_proj")]
    rules += [
        Rule(hp + "probe", (fp + "probe",), "copy"),
        _linear(hp + "attention.in_proj_weight", qkv),
        Rule(hp + "attention.in_proj_bias",
             tuple(fp + f"{n}/bias" for n in ("q_proj", "k_proj", "v_proj")), "bias"),
        _linear(hp + "attention.out_proj.weight", [fp + "out_proj/kernel"], 2),
        Rule(hp + "attention.out_proj.bias", (fp + "out_proj/bias",), "copy"),
        Rule(hp + "layernorm.weight", (fp + "layernorm/scale",), "copy"),
        Rule(hp + "layernorm.bias", (fp + "layernorm/bias",), "copy"),
    ]
    for n in ("fc1", "fc2"):
      rules += [_linear(hp + f"mlp.{n}.weight", [fp + f"mlp/{n}/kernel"]),
                Rule(hp + f"mlp.{n}.bias", (fp + f"mlp/{n}/bias",), "copy")]
  return rules


def resampler_rules(cfg: XGenMMConfig, prefix: str = VLM_PREFIXES["resampler"]) -> List[Rule]:
  """Perceiver resampler (reference `PerceiverResampler`: layers.{i}.0 attn, .1 = FF Sequential)."""
  p, b = prefix, "resampler"
  rules = [
      Rule(p + "latents", (f"{b}/latents",), "copy"),
      Rule(p + "norm.weight", (f"{b}/norm/scale",), "copy"),
      Rule(p + "norm.bias", (f"{b}/norm/bias",), "copy"),
      _linear(p + "projection.weight", [f"{b}/projection/kernel"]),
      Rule(p + "projection.bias", (f"{b}/projection/bias",), "copy"),
  ]
  for i in range(cfg.resampler.depth):
    hp, fp = f"{p}layers.{i}.", f"{b}/layers_{i}/"
    for n in ("norm_media", "norm_latents"):
      rules += [Rule(hp + f"0.{n}.weight", (fp + f"attn/{n}/scale",), "copy"),
                Rule(hp + f"0.{n}.bias", (fp + f"attn/{n}/bias",), "copy")]
    rules += [
        _linear(hp + "0.to_q.weight", [fp + "attn/to_q/kernel"]),
        _linear(hp + "0.to_kv.weight", [fp + "attn/to_k/kernel", fp + "attn/to_v/kernel"]),
        _linear(hp + "0.to_out.weight", [fp + "attn/to_out/kernel"], 2),
        Rule(hp + "1.0.weight", (fp + "ff/norm/scale",), "copy"),
        Rule(hp + "1.0.bias", (fp + "ff/norm/bias",), "copy"),
        _linear(hp + "1.1.weight", [fp + "ff/fc1/kernel"]),
        _linear(hp + "1.3.weight", [fp + "ff/fc2/kernel"]),
    ]
  return rules


def lm_rules(cfg: XGenMMConfig, prefix: str = VLM_PREFIXES["lm"], decoupled: bool = True,
             head_bias: bool = True) -> List[Rule]:
  """Phi-3 (HF `Phi3ForCausalLM` names) with xGen-MM's decoupled embedding and head."""
  p, b = prefix, "lm"
  rules = [
      Rule(p + "model.embed_tokens.weight", (f"{b}/embed/embedding",), "copy"),
      Rule(p + "model.norm.weight", (f"{b}/decoder/norm/scale",), "copy"),
      _linear(p + "lm_head.weight", [f"{b}/head/kernel"]),
  ]
  if head_bias:
    rules.append(Rule(p + "lm_head.bias", (f"{b}/head/bias",), "copy"))
  if decoupled:
    rules += [
        Rule(p + "model.embed_tokens.additional_embedding.weight",
             (f"{b}/embed/additional_embedding",), "copy"),
        _linear(p + "lm_head.additional_fc.weight", [f"{b}/head/additional_kernel"]),
        Rule(p + "lm_head.additional_fc.bias", (f"{b}/head/additional_bias",), "copy"),
    ]
  for i in range(cfg.text.depth):
    hp, fp = f"{p}model.layers.{i}.", f"{b}/decoder/layers_{i}/"
    rules += [
        Rule(hp + "input_layernorm.weight", (fp + "input_layernorm/scale",), "copy"),
        Rule(hp + "post_attention_layernorm.weight", (fp + "post_attention_layernorm/scale",),
             "copy"),
        _linear(hp + "self_attn.qkv_proj.weight",
                [fp + f"self_attn/{n}/kernel" for n in ("q_proj", "k_proj", "v_proj")]),
        _linear(hp + "self_attn.o_proj.weight", [fp + "self_attn/o_proj/kernel"], 2),
        _linear(hp + "mlp.gate_up_proj.weight",
                [fp + "mlp/gate_proj/kernel", fp + "mlp/up_proj/kernel"]),
        _linear(hp + "mlp.down_proj.weight", [fp + "mlp/down_proj/kernel"]),
    ]
  return rules


def xgenmm_rules(cfg: XGenMMConfig) -> List[Rule]:
  """Every tensor of a released xGen-MM checkpoint (`vlm.*`), in checkpoint order."""
  return vision_rules(cfg) + resampler_rules(cfg) + lm_rules(cfg)


# ----------------------------------------------------------------------------- transforms


def hf_shape(rule: Rule, shapes: List[Tuple[int, ...]]) -> Tuple[int, ...]:
  """The HF tensor shape implied by the bliperax shapes of `rule.paths`."""
  if rule.kind == "copy":
    return tuple(shapes[0])
  if rule.kind == "conv":
    kh, kw, cin, cout = shapes[0]
    return (cout, cin, kh, kw)
  if rule.kind == "bias":
    return (sum(int(np.prod(s)) for s in shapes),)
  n_in = rule.n_in
  fan_in = int(np.prod(shapes[0][:n_in]))
  return (sum(int(np.prod(s[n_in:])) for s in shapes), fan_in)


def to_params(rule: Rule, tensor: np.ndarray, shapes: List[Tuple[int, ...]]) -> List[np.ndarray]:
  """HF tensor -> bliperax arrays for `rule.paths` (shapes given); exact, no arithmetic."""
  if rule.kind == "copy":
    return [tensor.reshape(shapes[0])]
  if rule.kind == "conv":
    return [tensor.transpose(2, 3, 1, 0)]
  n_in = 1 if rule.kind == "bias" else rule.n_in
  sizes = [int(np.prod(s[n_in:])) if rule.kind == "linear" else int(np.prod(s)) for s in shapes]
  parts = np.split(tensor, np.cumsum(sizes)[:-1], axis=0)
  if rule.kind == "bias":
    return [part.reshape(s) for part, s in zip(parts, shapes)]
  return [part.T.reshape(s) for part, s in zip(parts, shapes)]


def to_hf(rule: Rule, arrays: List[np.ndarray]) -> np.ndarray:
  """bliperax arrays of `rule.paths` -> the HF tensor (inverse of `to_params`)."""
  if rule.kind == "copy":
    return arrays[0]
  if rule.kind == "conv":
    return arrays[0].transpose(3, 2, 0, 1)
  if rule.kind == "bias":
    return np.concatenate([a.reshape(-1) for a in arrays])
  fan_in = int(np.prod(arrays[0].shape[:rule.n_in]))
  parts = [a.reshape(fan_in, -1).T for a in arrays]
  return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
