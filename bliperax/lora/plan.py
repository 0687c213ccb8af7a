"""Which kernels get adapters, how many of their axes are inputs, and which share an A.

A *site* is one `layers.Dense` the model calls, named by its module path
('lm/decoder/layers/self_attn/k_proj'; `layers_{i}` when unscanned). Sites come from
one abstract trace of the forward (`jax.eval_shape`, nothing allocated) that records
every Dense call: only kernels that really multiply an input through `layers.Dense`
can be adapted, and the layer itself says how many leading kernel axes are inputs
(its `contract`: 2 for an output projection [heads, head_dim, out]). A target regex
that matches no such kernel, or matches any other parameter (an embedding table, the
decoupled head), is refused rather than silently ignored.

Kernels that the HF checkpoint fuses into one Linear (Phi-3's q/k/v -> qkv_proj and
gate/up -> gate_up_proj, the resampler's to_k/to_v -> to_kv; bliperax.convert.mapping)
share one A, the first targeted member's: the adapters are then exactly PEFT's LoRA
on the HF model's modules (one A [r, in] and one B [out_q + out_k + out_v, r] for
qkv_proj), with its parameter count, and export to PEFT without any reshaping of
ranks.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax

from bliperax.convert import layout, mapping
from bliperax.models import layers, xgenmm
from bliperax.models.config import XGenMMConfig


@dataclasses.dataclass(frozen=True)
class Site:
  """One adapted Dense layer.

  Attributes:
    path: the Dense module's path, e.g. 'lm/decoder/layers/self_attn/k_proj'; its
      kernel is `path + '/kernel'`, its adapters live at `path` in the adapter tree.
    n_in: leading kernel axes (after a stacked 'layers' axis) contracted with the input.
    a_from: the site whose `lora_a` this one multiplies: itself, or the first targeted
      member of its fused HF Linear.
  """
  path: str
  n_in: int
  a_from: str

  @property
  def owns_a(self) -> bool:
    return self.a_from == self.path


Plan = Tuple[Site, ...]


def dense_layers(cfg: XGenMMConfig, params: Optional[Any] = None) -> Dict[str, int]:
  """{module path: contract} of every `layers.Dense` the forward calls, in the
  config's layout (one abstract trace of the forward on `params`, abstract or not;
  default: the config's abstract parameters; nothing allocated)."""
  model = xgenmm.XGenMM(cfg)
  inputs = xgenmm.dummy_inputs(cfg)
  if params is None:
    params = xgenmm.abstract_params(cfg)
  params = nn.meta.unbox(params)
  calls: Dict[str, int] = {}

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, layers.Dense) and context.method_name == "__call__":
      calls["/".join(context.module.path)] = context.module.contract
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda p: model.apply({"params": p}, **inputs), params)
  return calls


def fused_groups(cfg: XGenMMConfig) -> Dict[str, Tuple[str, ...]]:
  """{module path: the module paths of its HF Linear, in checkpoint order} for every
  kernel the checkpoint fuses with others, in the config's layout."""
  scanned = cfg.numerics.scan_layers
  groups: Dict[str, Tuple[str, ...]] = {}
  for rule in mapping.xgenmm_rules(cfg.with_numerics(scan_layers=False)):
    if rule.kind != "linear" or len(rule.paths) < 2:
      continue
    members = []
    for path in rule.paths:
      module = path[:-len("/kernel")]
      split = layout.split_layer_path(module) if scanned else None
      members.append(split[0] if split else module)
    for m in members:
      groups[m] = tuple(members)
  return groups


def make(cfg: XGenMMConfig, targets: Sequence[str], abstract: Optional[Any] = None) -> Plan:
  """The sites whose kernels match any of `targets` (regexes, `re.search`).

  `abstract`: the config's (boxed) abstract parameters when the caller has them
  (default: `xgenmm.abstract_params(cfg)`, which traces the model's init again).

  Raises:
    ValueError: a regex matches nothing, or matches a parameter that is not the
      kernel of a Dense layer the forward calls.
  """
  if abstract is None:
    abstract = xgenmm.abstract_params(cfg)
  dense = dense_layers(cfg, abstract)
  params = layout.flatten(abstract)
  kernels = {f"{m}/kernel": m for m in dense}
  chosen = set()
  for pattern in targets:
    regex = re.compile(pattern)
    hits = [p for p in params if regex.search(p)]
    if not hits:
      raise ValueError(f"lora target {pattern!r} matches no parameter")
    others = [p for p in hits if p not in kernels]
    if others:
      raise ValueError(f"lora target {pattern!r} matches {others[0]!r}, which is not the "
                       "kernel of a Dense layer the model calls (only those can be adapted)")
    chosen.update(kernels[p] for p in hits)
  groups = fused_groups(cfg)
  sites = []
  for path in sorted(chosen):
    owner = next(m for m in groups.get(path, (path,)) if m in chosen)
    sites.append(Site(path=path, n_in=dense[path], a_from=owner))
  return tuple(sites)
