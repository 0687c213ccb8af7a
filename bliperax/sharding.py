"""Device mesh from config, logical-axis rules, abstract sharded init, host-local -> global batches.

Mesh axes: `data` (pure data parallel), `fsdp` (data parallel with parameters and
optimizer state sharded across it), `tensor` (Megatron-style model parallel). A
config gives each axis a size (-1 fills with the remaining devices) and, for
multi-slice TPU pods, DCN factors (`dcn_data`, ...): the mesh is then built with
`create_hybrid_device_mesh`, slices along the slow network.

Rules map the logical names every parameter carries (see bliperax/models/layers.py)
and the activation names used in `with_logical_constraint` to mesh axes. Weight
names and activation names are separate, so e.g. a batch can be split over
data×fsdp while weights split over fsdp only.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXES = ("data", "fsdp", "tensor")
Rules = Tuple[Tuple[str, Any], ...]

# Weights: shard the model width over fsdp (ZeRO-3 style), heads / mlp / vocab over
# tensor. The vocabulary (32064) does not divide most pod sizes, hence width on fsdp.
WEIGHT_RULES: Rules = (
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vocab", "tensor"),
    ("added_vocab", None),
    ("out_embed", "tensor"),
    ("layers", None),
    ("norm", None),
    ("patches", None),
    ("latents", None),
    ("conv_height", None),
    ("conv_width", None),
    ("channels", None),
    # LoRA's rank axis (bliperax/lora/adapters.py): fsdp, unless the adapter's kernel
    # axes took it already (flax gives each mesh axis to the first rule that asks).
    ("lora_rank", "fsdp"),
)
# Activations: the batch over every data-parallel axis, everything else replicated.
ACTIVATION_RULES: Rules = (
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_vocab", None),
)
DEFAULT_RULES: Rules = WEIGHT_RULES + ACTIVATION_RULES


def mesh_shape(sizes: Mapping[str, int], num_devices: int) -> Tuple[int, ...]:
  """Resolves the -1 entry (at most one) so the product equals `num_devices`."""
  shape = [int(sizes.get(a, 1)) for a in AXES]
  if shape.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(AXES, shape))}")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f"mesh {dict(zip(AXES, shape))} does not divide {num_devices} devices")
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices:
    raise ValueError(f"mesh {dict(zip(AXES, shape))} needs {math.prod(shape)} devices, "
                     f"{num_devices} are available")
  return tuple(shape)


def make_mesh(sizes: Mapping[str, int], devices: Optional[Sequence[Any]] = None) -> Mesh:
  """Mesh over `devices` (default: all) with axes data/fsdp/tensor.

  `sizes` holds the per-slice sizes (`data`, `fsdp`, `tensor`) and optionally DCN
  factors (`dcn_data`, `dcn_fsdp`, `dcn_tensor`, default 1) for multi-slice runs.
  """
  devices = list(devices if devices is not None else jax.devices())
  dcn = tuple(int(sizes.get(f"dcn_{a}", 1)) for a in AXES)
  num_slices = math.prod(dcn)
  ici = mesh_shape(sizes, len(devices) // num_slices)
  if num_slices > 1:
    grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
  else:
    try:
      grid = mesh_utils.create_device_mesh(ici, devices)
    except (ValueError, NotImplementedError, AssertionError):
      grid = np.asarray(devices).reshape(ici)  # CPU / unknown topologies
  return Mesh(grid, AXES)


def fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
  """Makes `spec` valid for `shape`: every sharded dimension divisible by its axes.

  A mesh axis that does not divide its dimension (e.g. SigLIP's width 1152 over an
  fsdp axis of 256) moves to the largest other unsharded dimension it divides
  (the resampler's 4608-wide feed-forward, say), else that axis is dropped (replicated). So any mesh works,
  and ZeRO-style sharding is kept wherever the shapes allow it.
  """
  entries = list(spec) + [None] * (len(shape) - len(spec))
  homeless = []
  for i, entry in enumerate(entries):
    axes = () if entry is None else (entry if isinstance(entry, tuple) else (entry,))
    kept = []
    for axis in axes:
      size = math.prod(mesh.shape[a] for a in kept + [axis])
      (kept if shape[i] % size == 0 else homeless).append(axis)
    entries[i] = None if not kept else (kept[0] if len(kept) == 1 else tuple(kept))
  def axes_of(entry):
    return () if entry is None else (entry if isinstance(entry, tuple) else (entry,))

  for axis in homeless:
    if mesh.shape[axis] == 1:
      continue
    # Unsharded dimensions first (largest first), then sharing an already-sharded one.
    order = sorted(range(len(shape)), key=lambda i: (entries[i] is not None, -shape[i]))
    for i in order:
      axes = axes_of(entries[i]) + (axis,)
      if shape[i] % math.prod(mesh.shape[a] for a in axes) == 0:
        entries[i] = axes[0] if len(axes) == 1 else axes
        break
  while entries and entries[-1] is None:
    entries.pop()
  return PartitionSpec(*entries)


def logical_shardings(abstract_tree: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
  """NamedShardings for a tree boxed with logical axis names (`nn.LogicallyPartitioned`).

  Specs come from the rules, then `fit_spec` adapts them to each array's shape.
  """
  specs = nn.logical_to_mesh(nn.get_partition_spec(abstract_tree), rules)
  shapes = strip_boxes(abstract_tree)
  is_spec = lambda x: isinstance(x, PartitionSpec)
  fitted = jax.tree.map(lambda sp, x: fit_spec(sp, x.shape, mesh), specs, shapes,
                        is_leaf=is_spec)
  return jax.tree.map(lambda sp: NamedSharding(mesh, sp), fitted, is_leaf=is_spec)


def strip_boxes(tree: Any) -> Any:
  """The tree without its logical-axis boxes, values untouched.

  Unlike `nn.meta.unbox`, never applies the boxes' sharding constraints: under
  `jax.set_mesh` and logical rules those run eagerly, which fails on abstract
  shapes and costs one dispatch per leaf on concrete arrays.
  """
  return jax.tree.map(lambda x: x.unbox(apply_constraint=False)
                      if isinstance(x, nn.Partitioned) else x,
                      tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Leading (batch) axis over every data-parallel axis, the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *([None] * (ndim - 1))))


def sharded_init(init_fn: Callable[..., Any], mesh: Mesh, rules: Rules, *args,
                 shardings: Any = None) -> Any:
  """Runs `init_fn(*args)` directly into its shardings; the whole is never materialised.

  The abstract output (`jax.eval_shape`) gives the logical partitioning, the rules
  give shardings, and `jit(init_fn, out_shardings=...)` creates every shard on its
  own device. Pass `shardings` (`logical_shardings` of the abstract output) when the
  caller has them: tracing the init again costs about a second for a small model.
  Returns the unboxed tree.
  """
  if shardings is None:
    shardings = logical_shardings(jax.eval_shape(init_fn, *args), mesh, rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.jit(init_fn, out_shardings=shardings)(*args)
  return strip_boxes(boxed)


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> Dict[str, jax.Array]:
  """Host-local arrays (this process's rows) -> global arrays sharded over the batch axis."""
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)),
                                                    np.asarray(v))
          for k, v in local.items()}


def maybe_initialize_distributed(coordinator: Optional[str] = None,
                                 num_processes: Optional[int] = None,
                                 process_id: Optional[int] = None) -> None:
  """`jax.distributed.initialize` for multi-host runs; a no-op for one process.

  On TPU pods and SLURM/ Kubernetes clusters jax discovers everything itself
  (`BLIPERAX_DISTRIBUTED=1` asks for it); elsewhere pass the coordinator address,
  process count and id (e.g. two CPU processes on localhost for tests).
  """
  if coordinator is None and os.environ.get("BLIPERAX_DISTRIBUTED") != "1":
    return
  kwargs = {}
  if coordinator is not None:
    kwargs = dict(coordinator_address=coordinator, num_processes=num_processes,
                  process_id=process_id)
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
