"""In-process checks of the train step on 8 CPU devices, for tests/test_train.py.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
      python tests/train_worker.py OUT.pkl '{"train.seq_len": 24, ...}'

The pytest process has (and keeps) one CPU device, so this script does the work
that needs a multi-device mesh and pickles plain results (numpy arrays by
'/'-joined path, metric floats, sharding specs as tuples); the assertions live in
test_train.py. The argument holds dotted config overrides of experiments/tiny.py.

From one sharded initial state and the run's synthetic batches it runs the trainer's
own jitted step (`TrainSetup`, as the trainer builds it):
  - every step of the run (total_steps) on one device, and again on the batches with
    their rows permuted (the round-off reference: only the float32 summation order
    changes), keeping the state after step 3 and after the last step; and once
    more with step 3 losing the loss of half its rows, as a data-parallel shard
    whose gradient never arrives would (a bug the round-off bound must catch);
  - steps 1-3 on a data=2 x fsdp=2 x tensor=2 mesh;
  - from the one-device state after step 1 (where the learning rate is no longer
    0), one step on that mesh: with 2-step accumulation, and without it on the
    batch, the permuted batch, an all-masked batch and a batch with NaN crops
    (float32 crops: the data's uint8 pixels cannot be NaN).
That is four compiled train steps (one device; sharded with and without
accumulation, and sharded for float32 crops): compile time dominates on 2 CPU cores.
"""
from __future__ import annotations

import json
import pathlib
import pickle
import sys
import time
from typing import Any, Dict

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from bliperax import cli
from bliperax import sharding
from bliperax.data import pixels
from bliperax.train import trainer
from bliperax.train.setup import TrainSetup

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(overrides: Dict[str, Any]) -> ml_collections.ConfigDict:
  """experiments/tiny.py's config with dotted-path overrides (as on the command line)."""
  cfg = cli.load_config(str(ROOT / "experiments" / "tiny.py"))
  cfg.update_from_flattened_dict(overrides)
  return cfg


def path_str(path) -> str:
  """'/'-joined key path: dict keys, attribute names and sequence indices."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
  return "/".join(parts)


def flat(tree: Any) -> Dict[str, np.ndarray]:
  """{path: host numpy copy} of every array leaf (copies survive buffer donation)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {path_str(p): np.array(jax.device_get(x)) for p, x in leaves}


def host_metrics(metrics: Dict[str, jax.Array]) -> Dict[str, float]:
  return {k: np.asarray(jax.device_get(v)).item() for k, v in metrics.items()}


def device0_bytes(tree: Any, device) -> int:
  """Bytes of `tree` that live on `device` (its addressable shards there)."""
  return sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards
             if s.device == device)


_START = time.time()


def log(message: str) -> None:
  """Progress with elapsed seconds, to stderr (the test shows it when this fails)."""
  print(f"[{time.time() - _START:6.1f} s] {message}", file=sys.stderr, flush=True)


def main(out_path: str, overrides_json: str) -> None:
  cfg = load_config(json.loads(overrides_json))
  cfg_accum = load_config({**json.loads(overrides_json), "train.accum_steps": 2})
  assert cfg.train.accum_steps == 1, "the reference step is without accumulation"
  devices = jax.devices()
  assert len(devices) == 8, f"needs 8 CPU devices, got {len(devices)}"

  mesh8 = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  mesh1 = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), devices=devices[:1])
  parts8 = TrainSetup.build(cfg, mesh8)
  parts1 = TrainSetup.build(cfg, mesh1)
  parts8a = TrainSetup.build(cfg_accum, mesh8)
  out: Dict[str, Any] = {"rules": parts8.rules}

  source = trainer.make_source(cfg, parts8.model_cfg)
  batches = [next(source) for _ in range(cfg.total_steps)]
  assert len(batches) >= 3, "the sharded checks take 3 steps"
  masked = {**batches[1], "labels": np.full_like(batches[1]["labels"], -100)}
  # uint8 pixel crops cannot hold a NaN: this batch carries float32 crops (the model takes
  # those too, already normalised), NaN in its first row.
  poisoned = {**batches[1], "crops": pixels.normalize(batches[1]["crops"])}
  poisoned["crops"][0] = np.nan

  # Logical names of every parameter, for checking shardings against the rules.
  boxed = jax.eval_shape(parts8.init_fn, jax.random.PRNGKey(cfg.seed))
  out["logical_axes"] = {path_str(p): tuple(spec) for p, spec in
                         jax.tree_util.tree_flatten_with_path(
                             nn.get_partition_spec(boxed.params),
                             is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))[0]}

  def compile_step(parts, batch=None):
    """The trainer's jitted step, compiled for its mesh (lowered from abstract shapes)."""
    with parts.context():
      return parts.compile_step(parts.global_batch(batches[0] if batch is None else batch))

  def run(step_fn, parts, host_state, batch_list):
    """Steps from a host state; returns the host state and metrics after each step."""
    hosts, metrics = [], []
    with parts.context():
      state = jax.device_put(host_state, parts.state_shardings)
      for batch in batch_list:
        state, m = step_fn(state, parts.global_batch(batch))
        hosts.append(jax.device_get(state))
        metrics.append(host_metrics(m))
    return hosts, metrics

  # The initial state, created sharded exactly as the trainer does.
  with parts8.context():
    state0 = parts8.init_state(cfg.seed)
  out["param_specs"] = {path_str(p): tuple(x.sharding.spec) for p, x in
                        jax.tree_util.tree_flatten_with_path(state0.params)[0]}
  out["opt_specs"] = {path_str(p): tuple(x.sharding.spec) for p, x in
                      jax.tree_util.tree_flatten_with_path(state0.opt_state)[0]}
  out["state_bytes_total"] = sum(x.nbytes for x in jax.tree.leaves(state0))
  out["state_bytes_device0"] = device0_bytes(state0, devices[0])
  host0 = jax.device_get(state0)
  out["init_params"] = flat(host0.params)
  del state0
  log("initialised")

  # One device: every step of the run.
  step1 = compile_step(parts1)
  hosts1, metrics1 = run(step1, parts1, host0, batches)
  out["single"] = {"metrics": metrics1[:3], "params": flat(hosts1[2].params)}
  out["single_all_steps"] = {"metrics": metrics1, "params": flat(hosts1[-1].params)}
  log("single device")
  # Round-off reference: the same steps on the batches with their rows permuted, a
  # pure change of float32 summation order.
  perm = np.random.default_rng(0).permutation(cfg.train.global_batch)
  permuted = [{k: v[perm] for k, v in b.items()} for b in batches]
  hosts_p, metrics_p = run(step1, parts1, host0, permuted)
  out["single_permuted"] = {"metrics": metrics_p[:3], "params": flat(hosts_p[2].params)}
  out["single_permuted_all_steps"] = {"metrics": metrics_p, "params": flat(hosts_p[-1].params)}
  # The bug: step 3 without half its rows' loss (a lost data-parallel shard).
  lost = [dict(b) for b in batches]
  half = np.arange(cfg.train.global_batch)[:, None] < cfg.train.global_batch // 2
  lost[2]["labels"] = np.where(half, batches[2]["labels"], -100)
  hosts_l, _ = run(step1, parts1, host0, lost)
  out["single_lost_shard_all_steps"] = {"params": flat(hosts_l[-1].params)}
  # The one-step variants of step 2 below all start from this state (lr > 0 there).
  host1 = hosts1[0]
  out["step1"] = {"params": flat(host1.params), "opt_state": flat(host1.opt_state)}
  del hosts1, hosts_p, hosts_l
  log("permuted")

  # Step 2 with two accumulated micro-batches.
  step_a = compile_step(parts8a)
  hosts_a, metrics_a = run(step_a, parts8a, host1, batches[1:2])
  out["accum"] = {"metrics": metrics_a[0], "params": flat(hosts_a[0].params)}
  log("accumulation")

  # Sharded: steps 1-3 from the initial state, then the one-step variants.
  step8 = compile_step(parts8)
  hosts8, metrics8 = run(step8, parts8, host0, batches[:3])
  out["sharded"] = {"metrics": metrics8, "params": flat(hosts8[-1].params)}
  out["arg_bytes_device0"] = step8.memory_analysis().argument_size_in_bytes
  out["batch_bytes_device0"] = device0_bytes(parts8.global_batch(batches[0]), devices[0])
  log("sharded")
  variants = {"step2": batches[1], "step2_permuted": permuted[1], "masked": masked,
              "poisoned": poisoned}
  for name, batch in variants.items():
    step = step8 if name != "poisoned" else compile_step(parts8, poisoned)  # float32 crops
    hosts, metrics = run(step, parts8, host1, [batch])
    out[name] = {"metrics": metrics[0], "params": flat(hosts[0].params)}
    if name == "poisoned":  # a skipped update must leave Adam's state alone too
      out[name]["opt_state"] = flat(hosts[0].opt_state)
  out["masked"]["params_finite"] = {k: bool(np.isfinite(v).all())
                                    for k, v in out["masked"].pop("params").items()}
  log("variants")

  with open(out_path, "wb") as f:
    pickle.dump(out, f)


if __name__ == "__main__":
  main(*sys.argv[1:])
