"""Running the model with adapters (unmerged, for training) and merging them (for export).

Unmerged: `attach` puts each site's `lora_a` / `lora_b` beside its kernel in the
parameter tree handed to `model.apply`, and inside `intercept()` every
`layers.Dense` that finds them there adds the low-rank path to its output:

  y = x·W (+ b)  +  ((dropout(x)·A)·B) · alpha/r       x [..., *I], A [*I, r], B [r, *O]

This is PEFT's order of operations. It costs 2·tokens·r·(in + out) extra flops per
site, and the backward pass never forms a full-size gradient of W: the base is a
constant of the loss, only A and B are differentiated. Because the adapters sit in
the `params` collection, `nn.scan` slices stacked ones [L, ...] per layer and
`nn.remat` carries them like any parameter; nothing in the model knows about LoRA.
With B = 0 the added term is exactly zero, so the output is bit-identical to the base.

Merged: `merge` returns the base with W + alpha/r · A·B in each adapted kernel
(float32, A·B at full precision), the form inference and the HF export use.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Iterator

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from bliperax.lora import config as lora_config
from bliperax.lora import plan as plan_lib
from bliperax.models import layers
from bliperax.models.config import XGenMMConfig


def _flat(tree: Any) -> dict:
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree))


def _key(path: str) -> tuple:
  return tuple(path.split("/"))


def attach(base: Any, adapters: Any, plan: plan_lib.Plan) -> dict:
  """The parameter tree for `model.apply` under `intercept()`: `base` (unboxed) with
  each site's `lora_a` (its own or its fused Linear's) and `lora_b` beside its kernel.
  Only the tree is rebuilt; no array is copied."""
  flat, ad = _flat(base), _flat(adapters)
  for site in plan:
    flat[_key(site.path) + ("lora_a",)] = ad[_key(site.a_from) + ("lora_a",)]
    flat[_key(site.path) + ("lora_b",)] = ad[_key(site.path) + ("lora_b",)]
  return flax.traverse_util.unflatten_dict(flat)


def _low_rank(module: layers.Dense, x: jax.Array, scale: float, dropout: float) -> jax.Array:
  """((dropout(x)·A)·B)·scale in the layer's compute dtype: [..., *I] -> [..., *O]."""
  dtype = layers.dtype_of(module.dtype)
  a = module.get_variable("params", "lora_a").astype(dtype)  # [*I, r]
  b = module.get_variable("params", "lora_b").astype(dtype)  # [r, *O]
  x = x.astype(dtype)
  if dropout:
    keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - dropout, x.shape)
    x = jnp.where(keep, x / (1.0 - dropout), jnp.zeros((), dtype))
  n = module.contract
  h = jax.lax.dot_general(x, a, ((tuple(range(x.ndim - n, x.ndim)), tuple(range(n))),
                                 ((), ())))  # [..., r]
  d = jax.lax.dot_general(h, b, (((h.ndim - 1,), (0,)), ((), ())))  # [..., *O]
  return d * scale


@contextlib.contextmanager
def intercept(scale: float, dropout: float = 0.0) -> Iterator[None]:
  """While active, Dense layers with adapters in their parameters add the low-rank path.

  `dropout` > 0 drops adapter inputs and needs a 'dropout' rng in `model.apply`; pass
  0 for evaluation. Each Dense draws its own mask, so q, k and v (one fused Linear in
  PEFT, one mask there) get independent masks of the same rate. Layers without
  adapters run untouched.
  """
  def adapt(next_fun, args, kwargs, context):
    y = next_fun(*args, **kwargs)
    module = context.module
    if (isinstance(module, layers.Dense) and context.method_name == "__call__"
        and module.has_variable("params", "lora_b")):
      x = args[0] if args else kwargs["x"]
      y = y + _low_rank(module, x, scale, dropout).astype(y.dtype)
    return y

  with nn.intercept_methods(adapt):
    yield


def delta(a: jax.Array, b: jax.Array, n_in: int, scale: float) -> jax.Array:
  """scale · A·B shaped like the kernel: A [*S, *I, r], B [*S, r, *O] -> float32[*S, *I, *O].

  At full precision (an accelerator's default float32 matmul would round to bf16).
  """
  s = a.ndim - n_in - 1
  stack, ins, r, outs = a.shape[:s], a.shape[s:-1], a.shape[-1], b.shape[s + 1:]
  a2 = jnp.reshape(a, stack + (math.prod(ins), r)).astype(jnp.float32)
  b2 = jnp.reshape(b, stack + (r, math.prod(outs))).astype(jnp.float32)
  ab = jnp.matmul(a2, b2, precision=jax.lax.Precision.HIGHEST)
  return jnp.reshape(scale * ab, stack + ins + outs)


def merge(base: Any, adapters: Any, plan: plan_lib.Plan, scale: float) -> dict:
  """`base` with each adapted kernel replaced by float32 W + scale · A·B; the other
  parameters are returned as they are (same arrays, same dtypes)."""
  flat, ad = _flat(base), _flat(adapters)
  for site in plan:
    k = _key(site.path) + ("kernel",)
    a = ad[_key(site.a_from) + ("lora_a",)]
    b = ad[_key(site.path) + ("lora_b",)]
    flat[k] = jnp.asarray(flat[k], jnp.float32) + delta(a, b, site.n_in, scale)
  return flax.traverse_util.unflatten_dict(flat)


@dataclasses.dataclass(frozen=True)
class Lora:
  """What the train step and the exporters need to know about a run's adapters.

  Hashable (a static argument of jitted code).
  """
  plan: plan_lib.Plan
  rank: int
  scale: float
  dropout: float = 0.0

  @classmethod
  def from_config(cls, model_cfg: XGenMMConfig, lora: ml_collections.ConfigDict,
                  abstract_params: Any = None) -> "Lora":
    """From a `cfg.lora` block (bliperax/lora/config.py) for this model config;
    `abstract_params`, the config's boxed abstract parameters if the caller has them
    (else `plan_lib.make` traces the model's init for them)."""
    lora_config.check(lora)
    return cls(plan=plan_lib.make(model_cfg, tuple(lora.targets), abstract_params),
               rank=int(lora.rank), scale=lora_config.scale(lora),
               dropout=float(lora.get("dropout", 0.0)))

  def params(self, base: Any, adapters: Any) -> dict:
    """The tree to apply under `intercept()` (see `attach`)."""
    return attach(base, adapters, self.plan)

  def intercept(self, train: bool = False):
    """The context for `model.apply`; dropout only when `train`."""
    return intercept(self.scale, self.dropout if train else 0.0)

  def merge(self, base: Any, adapters: Any) -> dict:
    return merge(base, adapters, self.plan, self.scale)
