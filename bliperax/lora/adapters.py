"""Fresh adapters for a plan: A uniform as PEFT draws it, B zero, with logical axis names.

For a kernel float32[*S, *I, *O] (S: a stacked 'layers' axis when scanned, I: the
n_in input axes, O: the output axes) the adapters are

  lora_a  float32[*S, *I, r]   axes (*S names, *I names, 'lora_rank')
  lora_b  float32[*S, r, *O]   axes (*S names, 'lora_rank', *O names)

so each shards like the kernel's own input or output axes, and a scanned stack of
kernels [L, in, out] gets stacked adapters [L, in, r] and [L, r, out]. The rank axis
takes the `fsdp` mesh axis where the kernel's axes kept in the adapter do not
(bliperax/sharding.py's rules list 'lora_rank' after 'embed'): q_proj's B [r, heads]
would otherwise be replicated over fsdp, and with it its Adam moments: on an
FSDP-only mesh that is ~1 GiB per chip for the 4B recipe's rank 64. A site that shares its fused Linear's A has only `lora_b`.

The tree mirrors the parameter tree: {'lm': {'decoder': {'layers': {'self_attn':
{'q_proj': {'lora_a', 'lora_b'}, 'k_proj': {'lora_b'}, ...}}}}}. Adapters are always
float32: they are the trained (master) weights, whatever the base is stored in.

Init follows PEFT: A ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (torch's kaiming_uniform
with a = sqrt(5) on A [r, fan_in]) and B = 0, so a fresh adapter changes nothing.
Each site draws from the run's key folded with a hash of its path, so adding a target
leaves the other sites' draws unchanged.
"""
from __future__ import annotations

import math
import zlib
from typing import Any, Dict, Optional, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from bliperax.lora.plan import Plan, Site

# The logical name of an adapter's rank axis (mapped in bliperax/sharding.py).
RANK_AXIS = "lora_rank"


def _stacked(names: Optional[Tuple[Any, ...]]) -> int:
  """Leading 'layers' axes of a kernel (1 when scanned, else 0)."""
  count = 0
  for name in names or ():
    if name != "layers":
      break
    count += 1
  return count


def split_axes(site: Site, shape: Tuple[int, ...],
               names: Optional[Tuple[Any, ...]]) -> Tuple[int, int]:
  """(stacked axes, input axes) of the site's kernel; the rest are outputs."""
  s = _stacked(names)
  if len(shape) < s + site.n_in + 1:
    raise ValueError(f"{site.path}/kernel of shape {shape} has no output axes after "
                     f"{s} stacked and {site.n_in} input axes")
  return s, site.n_in


def _box(value: jax.Array, names: Optional[Tuple[Any, ...]]):
  return value if names is None else nn.LogicallyPartitioned(value, names)


def init(rng: jax.Array, plan: Plan, params: Any, rank: int) -> Dict[str, Any]:
  """Adapters for `plan`, shaped after the kernels in `params`.

  Args:
    rng: PRNG key.
    plan: the sites (bliperax.lora.plan.make).
    params: the base parameters, boxed with logical axes (model.init or
      xgenmm.abstract_params; concrete or abstract); unboxed ones give unboxed adapters.
    rank: r.
  Returns:
    the nested adapter tree, boxed like `params`.
  """
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
  axes, inputs = {}, {}  # path -> (names, stacked axes, input axes, shape); path -> [*S, *I]
  for site in plan:
    kernel = flat[site.path + "/kernel"]
    names = getattr(kernel, "names", None)
    shape = tuple(nn.meta.unbox(kernel).shape)
    s, n = split_axes(site, shape, names)
    axes[site.path] = (names, s, n, shape)
    inputs[site.path] = shape[:s + n]
  out: Dict[str, Any] = {}
  for site in plan:
    names, s, n, shape = axes[site.path]
    if inputs[site.path] != inputs[site.a_from]:
      raise ValueError(f"{site.path} shares the A of {site.a_from}, but their inputs differ: "
                       f"{inputs[site.path]} vs {inputs[site.a_from]}")
    if site.owns_a:
      bound = 1.0 / math.sqrt(math.prod(shape[s:s + n]))
      key = jax.random.fold_in(rng, zlib.crc32(site.path.encode()) & 0x7FFFFFFF)
      a = jax.random.uniform(key, shape[:s + n] + (rank,), jnp.float32, -bound, bound)
      out[f"{site.path}/lora_a"] = _box(a, None if names is None else names[:s + n] + (RANK_AXIS,))
    b = jnp.zeros(shape[:s] + (rank,) + shape[s + n:], jnp.float32)
    out[f"{site.path}/lora_b"] = _box(
        b, None if names is None else names[:s] + (RANK_AXIS,) + names[s + n:])
  return flax.traverse_util.unflatten_dict(out, sep="/")


def abstract(plan: Plan, params: Any, rank: int) -> Dict[str, Any]:
  """The adapters' ShapeDtypeStructs (boxed like `params`), nothing allocated."""
  return jax.eval_shape(lambda: init(jax.random.PRNGKey(0), plan, params, rank))
