r"""Compile the real training step for a TPU topology on a CPU host (libtpu compile-only).

  python -m bliperax.aot --config=experiments/xgenmm_4b/pretrain.py:synthetic=1,init=random \
      --topology=v5e-256 [--num_slices=2]

(tools/aot_compile.py is the same command.) A compile reads no data and no weights
(the batch and the state are abstract), so the paper configs, which refuse to load
without root= and init=, are compiled with the explicit `:synthetic=1,init=random`;
the data kind and init are printed beside the result. Rows have
`train.images_per_row` crops (= resampler groups): the paper configs set it to their
pipeline's data.max_crops.

Needs libtpu (`pip install -e ".[tpu]"`), no TPU: jax builds the topology's devices
from libtpu's description, and the step is lowered with abstract, sharded inputs
(nothing is allocated) and compiled as MaxText's train_compile.py does. Prints the
per-chip memory breakdown (arguments, temporaries, outputs, code) and FLOPs, and as
the last line a JSON object with `fits` (per-chip total below the chip's HBM).

FLOPs: XLA's cost analysis counts a scanned layer body once, so the model FLOPs come
from bliperax.train.flops (analytic); the compiler's own count is shown beside it.

Library: `parse_topology(name)` and `compile_train_step(cfg, topology, num_slices)`
(returns that JSON object); `python -m bliperax.sweep --aot=TOPOLOGY` runs this
command once per sweep member (bliperax/sweep/aot_members.py).
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from typing import Any, Callable, Dict

GiB = 2**30
# Per-chip HBM and the 2-D / 3-D chip grids of each generation.
_HBM = {"v4": 32 * GiB, "v5e": 16 * GiB, "v5p": 95 * GiB, "v6e": 32 * GiB}
_GRID_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
            256: "16x16"}
_GRID_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
            256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
BAD_INPUT = 2  # an unknown topology, no libtpu


class AotError(Exception):
  """A compile that cannot be attempted (topology, libtpu); the message is one line."""


def parse_topology(name: str) -> dict:
  """'v5e-256' -> libtpu topology arguments, device count and HBM per chip.

  v4 / v5p names count TensorCores (2 per chip, megacore: one device per chip);
  v5e / v6e names count chips. Raises ValueError for any other name.
  """
  m = re.fullmatch(r"(v4|v5e|v5p|v6e)-(\d+)", name)
  if not m:
    raise ValueError(f"unknown topology {name!r}; expected v4-N, v5e-N, v5p-N or v6e-N")
  gen, n = m.group(1), int(m.group(2))
  if gen in ("v5e", "v6e"):
    if n not in _GRID_2D:
      raise ValueError(f"{name}: chip count must be one of {sorted(_GRID_2D)}")
    grid, chips, config = _GRID_2D[n], n, "default"
    wrap = (n >= 256, n >= 128, False)
  else:
    chips = n // 2
    if chips not in _GRID_3D:
      raise ValueError(f"{name}: core count must be 2x one of {sorted(_GRID_3D)}")
    grid, config = _GRID_3D[chips], "megacore"
    wrap = (chips >= 64,) * 3
  prefix = {"v4": "v4", "v5e": "v5e", "v5p": "v5", "v6e": "v6e"}[gen]
  return dict(topology_name=f"{prefix}:{grid}", chip_config_name=config,
              chips_per_host_bounds=(2, 2, 1), wrap=wrap, chips=chips,
              hbm_bytes=_HBM[gen], generation=gen)


def set_compile_only_environment(environ=os.environ) -> None:
  """Before jax is imported: the CPU backend for everything but the TPU description,
  and no host lookup by libtpu (there is no TPU to find)."""
  environ.setdefault("JAX_PLATFORMS", "cpu")
  environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")


def compile_train_step(cfg, topology: str, num_slices: int = 1,
                       log: Callable[[str], None] = print) -> Dict[str, Any]:
  """Compiles cfg's train step for `topology` x `num_slices`; returns the result
  (per-chip bytes, fits, FLOPs, ...). Raises AotError where it cannot be attempted."""
  try:
    topo_args = parse_topology(topology)
  except ValueError as e:
    raise AotError(str(e)) from None
  try:
    from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise AotError(str(e)) from None
  # pylint: disable=g-import-not-at-top
  from bliperax import sharding
  from bliperax.data import batch_spec
  from bliperax.train import flops as flops_lib
  from bliperax.train.setup import TrainSetup

  try:
    topo = topologies.get_topology_desc(
        platform="tpu", topology_name=topo_args["topology_name"],
        chip_config_name=topo_args["chip_config_name"],
        chips_per_host_bounds=topo_args["chips_per_host_bounds"],
        num_slices=num_slices, wrap=topo_args["wrap"])
  except Exception as e:  # pylint: disable=broad-except  (libtpu missing or refusing)
    raise AotError(f"cannot describe {topology} ({e}); is libtpu installed? "
                   "pip install -e '.[tpu]'") from None
  devices = topo.devices
  log(f"{topology} x{num_slices}: {len(devices)} devices ({devices[0].device_kind})")
  mesh = sharding.make_mesh(cfg.mesh, devices)
  log(f"mesh {dict(mesh.shape)}")
  data_kind = cfg.data.get("kind", "synthetic")
  init = cfg.model.get("init_from") or "random"
  log(f"data {data_kind}, init {init}: the compile reads neither (abstract batch and state)")
  setup = TrainSetup.build(cfg, mesh)
  # Pre-training rows: each image one base crop and one resampler group.
  n_img = cfg.train.get("images_per_row", 1)
  batch = setup.abstract_batch(batch_spec.Limits(cfg.train.seq_len, n_img, n_img))
  t0 = time.time()
  with setup.context():
    compiled = setup.compile_step(batch)
  compile_s = time.time() - t0
  mem = compiled.memory_analysis()
  args, temps = mem.argument_size_in_bytes, mem.temp_size_in_bytes
  outs, alias, code = (mem.output_size_in_bytes, mem.alias_size_in_bytes,
                       mem.generated_code_size_in_bytes)
  total = args + temps + outs - alias + code  # donated outputs reuse argument buffers
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
  model_flops = flops_lib.step_flops(setup.model_cfg, cfg.train.global_batch,
                                     cfg.train.seq_len, n_img, n_img,
                                     flops_lib.Training.of(setup))
  chips = len(devices)
  peak = flops_lib.peak_flops(devices[0].device_kind)
  hbm = topo_args["hbm_bytes"]
  log(f"compiled in {compile_s:.0f} s")
  log(f"per chip: arguments {args / GiB:.2f} GiB, temporaries {temps / GiB:.2f} GiB, "
      f"outputs {outs / GiB:.2f} GiB (aliased {alias / GiB:.2f} GiB), code "
      f"{code / GiB:.3f} GiB -> total {total / GiB:.2f} GiB of {hbm / GiB:.0f} GiB HBM")
  log(f"model FLOPs per step {model_flops['total']:.3e} (vision {model_flops['vision']:.2e}, "
      f"resampler {model_flops['resampler']:.2e}, lm {model_flops['lm']:.2e}); "
      f"compiler-counted FLOPs per chip {cost.get('flops', float('nan')):.3e}")
  step_at_peak = model_flops["total"] / (chips * peak) if peak else None
  return {
      "topology": topology, "num_slices": num_slices, "devices": chips,
      "mesh": dict(mesh.shape), "fits": bool(total < hbm),
      "per_chip_bytes": {"arguments": args, "temporaries": temps, "outputs": outs,
                         "aliased": alias, "code": code, "total": total, "hbm": hbm},
      "model_flops_per_step": model_flops["total"],
      "compiler_flops_per_chip": cost.get("flops"),
      "step_seconds_at_peak": step_at_peak,
      "compile_seconds": compile_s, "data": data_kind, "init": init,
      # Raw, for reference only: XLA counts a scanned layer body once, so its time
      # estimate (and any MFU derived from it) is far too optimistic for scanned models.
      "compiler_optimal_seconds": cost.get("optimal_seconds"),
  }


def cli_main() -> None:
  """The command line of the module docstring (this module and tools/aot_compile.py)."""
  set_compile_only_environment()
  # pylint: disable=g-import-not-at-top
  from absl import flags, logging
  from ml_collections import config_flags
  from bliperax import cli

  config = config_flags.DEFINE_config_file("config", None, "Experiment config to compile; "
                                           "override fields with --config.a.b=value.",
                                           lock_config=True)
  topology = flags.DEFINE_string("topology", "v5e-256",
                                 "TPU slice: v4-N, v5e-N, v5p-N, v6e-N.")
  num_slices = flags.DEFINE_integer("num_slices", 1, "Slices joined over DCN "
                                    "(multi-slice); the config's mesh.dcn_* factors must "
                                    "multiply to this.", lower_bound=1)
  flags.mark_flags_as_required(["config"])

  def main(argv):
    if len(argv) > 1:
      cli.fail(f"unexpected arguments: {argv[1:]}")
    try:
      result = compile_train_step(config.value, topology.value, num_slices.value,
                                  log=lambda s: print(s, flush=True))
    except AotError as e:
      print(f"error: {e}", file=sys.stderr)
      return BAD_INPUT
    print(json.dumps(result))
    return 0

  logging.set_verbosity(logging.WARNING)
  cli.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
  cli_main()
