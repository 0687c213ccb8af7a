"""Training on CPU: sharding, freezing, accumulation, the non-finite guard, restarts.

The pytest process keeps its one CPU device, so the work runs in subprocesses with
8 (or 2 x 4) fake CPU devices:
  - tests/train_worker.py drives the trainer's jitted step in-process on a
    data=2 x fsdp=2 x tensor=2 mesh and on one device, and pickles the results;
  - `python -m bliperax.train` runs end to end on a data=1 x fsdp=4 x tensor=2 mesh
    (no replication over `data`, so Orbax compiles few replica slices on save):
    uninterrupted; SIGTERMed, resumed, SIGKILLed, resumed; as 2 processes x 4 devices.
The worker starts in the background with the first test and overlaps the trainer
runs. All subprocesses share one persistent compilation cache, so what one of them
compiled (init, train step, Orbax's slicing) the next loads: XLA compile time
dominates on 2 CPU cores.

Float comparisons between computations that only sum in a different order
(sharded vs one device, accumulated vs one batch, 2 x 4 vs 1 x 8 devices) take their
bound from round-off itself, measured on this host over the same number of steps:
how far the one-device run moves when the batch rows are permuted (a pure change of
float32 summation order). No fixed tolerance would be honest: Adam turns gradient
round-off into parameter differences of up to a learning rate wherever a gradient
is near zero, so the worst single element depends on the CPU's kernels (its max
grew 10x from 3 to 6 steps, and by 3x more between two runs that sum in different
orders). Parameters are therefore compared per tensor in L2 norm, a statistic over
thousands of elements that does not swing with one element:

  ||got - want|| <= PARAM_FACTOR * ||permuted - one device|| + 2 * ||ulp||

(the factors and helpers live in tests/roundoff.py, shared with test_uint8_crops.py)

Sharding reorders several reductions where a permutation reorders one (batch, fsdp
and tensor partial sums, cross-process collectives), hence the factor; measured,
the ratio was at most 1.5 for every tensor. A real bug is five orders of magnitude
above the bound: `test_round_off_bound_catches_a_lost_shard` checks that a run whose
step 3 lost half its rows' loss (as a dropped data-parallel shard would) fails it.
Loss and gradient norm, single sums, are compared against their permutation
round-off over all steps times SCALAR_FACTOR.
"""
from __future__ import annotations

import json
import os
import pathlib
import pickle
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List

import numpy as np
import pytest

import roundoff

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT_S = 600
# The tiny experiment, shortened for the trainer runs: 6 steps, a checkpoint every 4,
# an 8-row batch of 24 tokens on 8 devices. (The worker builds its own meshes.)
OVERRIDES = {"total_steps": 6, "checkpoint_every": 4, "train.seq_len": 24,
             "mesh.data": 1, "mesh.fsdp": 4, "mesh.tensor": 2}
# Metrics that are functions of the computation (not of wall time).
EXACT_KEYS = ("loss", "grad_norm", "learning_rate", "loss_tokens", "skipped_updates")


# ----------------------------------------------------------------------------- helpers


def _env(devices: int, cache_dir: pathlib.Path) -> Dict[str, str]:
  """Subprocess environment: `devices` CPU devices and the shared compilation cache."""
  env = dict(os.environ)  # conftest's XLA_FLAGS (cheap compiles) included
  env["XLA_FLAGS"] = " ".join([env.get("XLA_FLAGS", ""),
                               f"--xla_force_host_platform_device_count={devices}"]).strip()
  env["JAX_PLATFORMS"] = "cpu"
  env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
  return env


def _trainer_cmd(workdir: pathlib.Path, **extra) -> List[str]:
  flags = {**OVERRIDES, **extra}
  return ([sys.executable, "-m", "bliperax.train", "--config=experiments/tiny.py",
           f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in flags.items()])


class Proc:
  """A subprocess with its output in a log file, waited on with a timeout."""

  def __init__(self, cmd: List[str], env: Dict[str, str], log: pathlib.Path):
    self.log = log
    self._file = open(log, "wb")
    self.popen = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._file,
                                  stderr=subprocess.STDOUT)

  def output(self) -> str:
    return self.log.read_text(errors="replace")

  def tail(self, n: int = 40) -> str:
    return f"--- {self.log} (last {n} lines) ---\n" + "\n".join(
        self.output().splitlines()[-n:])

  def wait(self, timeout: float = TIMEOUT_S) -> int:
    try:
      rc = self.popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      self.popen.kill()
      self.popen.wait()
      pytest.fail(f"timed out after {timeout} s\n{self.tail()}")
    self._file.close()
    return rc

  def signal_when(self, ready: Callable[[], bool], sig: int, timeout: float = TIMEOUT_S):
    """Sends `sig` as soon as `ready()` holds (polled every 20 ms); fails if it exits first."""
    deadline = time.time() + timeout
    while not ready():
      if self.popen.poll() is not None:
        pytest.fail(f"exited ({self.popen.returncode}) before it could be signalled\n"
                    f"{self.tail()}")
      if time.time() > deadline:
        self.popen.kill()
        pytest.fail(f"not ready to be signalled after {timeout} s\n{self.tail()}")
      time.sleep(0.02)
    self.popen.send_signal(sig)


def _run_ok(cmd, env, log) -> Proc:
  proc = Proc(cmd, env, log)
  rc = proc.wait()
  assert rc == 0, f"exit code {rc}\n{proc.tail()}"
  return proc


def _metrics(workdir: pathlib.Path) -> List[dict]:
  """Complete lines of metrics.jsonl (a line being written may be cut short)."""
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  out = []
  for line in path.read_text().splitlines():
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError:
      pass
  return out


def _checkpoints(workdir: pathlib.Path) -> List[int]:
  """Steps of finished checkpoints (Orbax writes into a temporary name, then renames)."""
  root = workdir / "checkpoints"
  return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()) \
      if root.exists() else []


def _flat(tree: Any) -> Dict[str, np.ndarray]:
  """{'/'-joined path: array} of a nested structure (empty nodes have no leaves)."""
  import jax
  def key(k):
    return str(next(getattr(k, a) for a in ("key", "name", "idx") if hasattr(k, a)))
  return {"/".join(key(k) for k in path): np.asarray(x)
          for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _load_state(workdir: pathlib.Path, step: int) -> Dict[str, np.ndarray]:
  """A saved TrainState as host arrays by path, whatever mesh it was saved from."""
  import jax
  import orbax.checkpoint as ocp
  path = workdir / "checkpoints" / str(step) / "state"
  checkpointer = ocp.PyTreeCheckpointer()
  meta = checkpointer.metadata(path).item_metadata.tree
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
  return _flat(checkpointer.restore(
      path, args=ocp.args.PyTreeRestore(restore_args=restore_args)))


def _assert_scalars_close(got: dict, want: dict, allowance: Dict[str, float],
                          what: str) -> None:
  """Loss and gradient norm within the round-off allowance; the rest exactly."""
  for key in ("loss", "grad_norm"):
    roundoff.assert_scalar_close(got[key], want[key], allowance[key], f"{what}: {key}")
  for key in ("learning_rate", "loss_tokens", "skipped_updates"):
    assert got[key] == want[key], f"{what}: {key} {got[key]!r} vs {want[key]!r}"


def _scalar_roundoff(r: dict) -> Dict[str, float]:
  """How far a row permutation moves loss and gradient norm, over all permuted steps."""
  pairs = list(zip(r["single_permuted_all_steps"]["metrics"],
                   r["single_all_steps"]["metrics"]))
  pairs.append((r["step2_permuted"]["metrics"], r["step2"]["metrics"]))
  return {k: max(abs(a[k] - b[k]) for a, b in pairs) for k in ("loss", "grad_norm")}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> pathlib.Path:
  return tmp_path_factory.mktemp("jax_cache")


class _Worker:
  """tests/train_worker.py on 8 devices, started now; `result()` waits for its pickle."""

  def __init__(self, tmp: pathlib.Path, cache: pathlib.Path):
    self.out = tmp / "worker.pkl"
    self.proc = Proc([sys.executable, str(ROOT / "tests" / "train_worker.py"), str(self.out),
                      json.dumps(OVERRIDES)], _env(8, cache), tmp / "worker.log")
    self._result = None

  def result(self) -> dict:
    if self._result is None:
      rc = self.proc.wait()
      assert rc == 0, f"train_worker.py failed ({rc})\n{self.proc.tail()}"
      with open(self.out, "rb") as f:
        self._result = pickle.load(f)
      self.out.unlink()  # a few hundred MB of parameter copies
    return self._result


class _TwoProcessRun:
  """The trainer as 2 processes x 4 devices (jax.distributed on localhost), started now.

  `result()` waits for both and returns the shared workdir (metrics from process 0).
  """

  def __init__(self, tmp: pathlib.Path, cache: pathlib.Path):
    self.workdir = tmp / "run"
    coordinator = f"127.0.0.1:{_free_port()}"
    self.procs = [Proc(_trainer_cmd(self.workdir, **{"distributed.coordinator": coordinator,
                                                     "distributed.num_processes": 2,
                                                     "distributed.process_id": i}),
                       _env(4, cache), tmp / f"process{i}.txt") for i in range(2)]

  def result(self) -> pathlib.Path:
    codes = wait_for_all(self.procs)
    assert codes == [0, 0], f"exit codes {codes}\n" + "\n".join(p.tail() for p in self.procs)
    return self.workdir


def wait_for_all(procs) -> list:
  """The processes' exit codes. A process whose peer died waits for it in a collective:
  on the first failure (or at the timeout) the others are stopped."""
  deadline = time.time() + TIMEOUT_S
  while any(p.popen.poll() is None for p in procs) and time.time() < deadline:
    if any(p.popen.poll() not in (None, 0) for p in procs):
      break
    time.sleep(0.2)
  for p in procs:
    if p.popen.poll() is None:
      p.popen.kill()
  return [p.wait() for p in procs]


@pytest.fixture(scope="module", autouse=True)
def worker(tmp_path_factory, cache_dir) -> _Worker:
  """Started with the first test: it runs beside the restart tests' trainer runs.

  (At most two busy processes at a time: more only oversubscribe the 2 cores.)
  """
  w = _Worker(tmp_path_factory.mktemp("worker"), cache_dir)
  yield w
  if w.proc.popen.poll() is None:  # a test failed before it waited for the worker
    w.proc.popen.kill()
    w.proc.popen.wait()


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, cache_dir) -> pathlib.Path:
  """An uninterrupted run of the shortened tiny experiment on 8 devices."""
  workdir = tmp_path_factory.mktemp("full") / "run"
  _run_ok(_trainer_cmd(workdir), _env(8, cache_dir), workdir.parent / "log.txt")
  assert [m["step"] for m in _metrics(workdir)] == list(range(1, OVERRIDES["total_steps"] + 1))
  return workdir


# ------------------------------------------------------------------- restarts (trainer)


def _first_step(proc: Proc) -> int:
  """The first step a run logged to the console (restore step + 1 when it resumed)."""
  first = next(l for l in proc.output().splitlines() if l.startswith("step "))
  return int(first.split()[1])


@pytest.fixture(scope="module")
def restarts(tmp_path_factory, cache_dir) -> dict:
  """One workdir taken through SIGTERM, resume, SIGKILL, resume, to the end.

  (a) SIGTERMed right after it compiled: checkpoints the step it is at and exits;
  (b) resumes from that checkpoint and is SIGKILLed as soon as step 5 is logged:
      past the checkpoint at step 4 (or, if its asynchronous write is still in
      flight, past (a)'s) and before the final one at step 6;
  (c) resumes from the latest complete checkpoint and finishes.
  """
  tmp = tmp_path_factory.mktemp("restarts")
  workdir = tmp / "run"
  env = _env(8, cache_dir)
  out = {"workdir": workdir}

  a = Proc(_trainer_cmd(workdir), env, tmp / "a_sigterm.txt")
  a.signal_when(lambda: "compiled the train step" in a.output(), signal.SIGTERM)
  out["a"] = dict(proc=a, rc=a.wait(), logged=[m["step"] for m in _metrics(workdir)],
                  checkpoints=_checkpoints(workdir))

  b = Proc(_trainer_cmd(workdir), env, tmp / "b_sigkill.txt")
  b.signal_when(lambda: any(m["step"] >= 5 for m in _metrics(workdir)), signal.SIGKILL)
  out["b"] = dict(proc=b, rc=b.wait(), logged=[m["step"] for m in _metrics(workdir)],
                  checkpoints=_checkpoints(workdir))

  c = Proc(_trainer_cmd(workdir), env, tmp / "c_resumed.txt")
  out["c"] = dict(proc=c, rc=c.wait())
  return out


def test_sigterm_checkpoints_the_current_step_and_exits_cleanly(restarts):
  a = restarts["a"]
  assert a["rc"] == 0, f"exit code {a['rc']}\n{a['proc'].tail()}"
  logged = a["logged"]
  assert logged and logged == list(range(1, len(logged) + 1))
  stopped = logged[-1]
  assert 1 <= stopped < OVERRIDES["total_steps"], f"did not stop early: {logged}"
  assert stopped % OVERRIDES["checkpoint_every"], "stopped at a regular checkpoint step"
  assert a["checkpoints"] == [stopped]
  assert json.loads(a["proc"].output().strip().splitlines()[-1])["step"] == stopped


def test_sigkill_between_checkpoints_then_resume_is_bitwise_identical(restarts, full_run):
  a, b, c = restarts["a"], restarts["b"], restarts["c"]
  assert _first_step(b["proc"]) == a["logged"][-1] + 1, "(b) did not resume from SIGTERM's"
  assert b["rc"] == -signal.SIGKILL, f"exit code {b['rc']}\n{b['proc'].tail()}"
  restart_step = max(b["checkpoints"])
  assert restart_step < max(b["logged"]), \
      f"nothing to redo: checkpoints {b['checkpoints']}, logged steps {b['logged']}"
  assert c["rc"] == 0, f"exit code {c['rc']}\n{c['proc'].tail()}"
  assert _first_step(c["proc"]) == restart_step + 1, "(c) did not resume"

  workdir = restarts["workdir"]
  got, want = _metrics(workdir), _metrics(full_run)
  steps = list(range(1, OVERRIDES["total_steps"] + 1))
  assert [m["step"] for m in got] == [m["step"] for m in want] == steps
  for g, w in zip(got, want):
    for key in EXACT_KEYS:
      assert g[key] == w[key], f"step {g['step']}: {key} {g[key]!r} != {w[key]!r}"
  final_got, final_want = _load_state(workdir, steps[-1]), _load_state(full_run, steps[-1])
  assert final_got.keys() == final_want.keys()
  for k in final_want:  # parameters and optimizer state, bit for bit
    assert final_got[k].tobytes() == final_want[k].tobytes(), k


# ------------------------------------------------------------- the step (in-process)


def test_sharded_step_matches_single_device(worker):
  r = worker.result()
  allowance = _scalar_roundoff(r)
  for step, (got, want) in enumerate(zip(r["sharded"]["metrics"], r["single"]["metrics"]), 1):
    _assert_scalars_close(got, want, allowance, f"step {step}")
  roundoff.assert_close(r["sharded"]["params"], r["single"]["params"],
                        r["single_permuted"]["params"], r["single"]["params"],
                        "params after 3 steps, data=2 fsdp=2 tensor=2 vs one device")
  # The steps really moved the (trainable) parameters.
  reference = roundoff.max_diff(r["single_permuted"]["params"], r["single"]["params"])
  assert roundoff.max_diff(r["single"]["params"], r["init_params"]) > 100 * reference


def test_parameter_shardings_follow_the_rules(worker):
  r = worker.result()
  rules = dict(r["rules"])
  specs = r["param_specs"]
  assert specs.keys() == r["logical_axes"].keys()
  for path, names in r["logical_axes"].items():
    want = [rules.get(n) if n is not None else None for n in names]
    while want and want[-1] is None:
      want.pop()
    # The tiny model's dimensions all divide the mesh, so no rule is adapted.
    assert specs[path] == tuple(want), f"{path} {names}: {specs[path]} != {tuple(want)}"
  assert r["logical_axes"]["lm/decoder/layers_0/mlp/gate_proj/kernel"] == ("embed", "mlp")
  assert specs["lm/decoder/layers_0/mlp/gate_proj/kernel"] == ("fsdp", "tensor")
  assert specs["lm/decoder/layers_0/mlp/down_proj/kernel"] == ("tensor", "fsdp")
  assert specs["lm/embed/embedding"] == ("tensor", "fsdp")
  assert specs["lm/decoder/layers_0/input_layernorm/scale"] == ()
  # Adam's moments shard like their parameters (ZeRO), not replicated.
  for path, spec in r["opt_specs"].items():
    for moment in ("/mu/", "/nu/"):
      if moment in path:
        assert spec == specs[path.split(moment, 1)[1]], path


def test_sharded_state_bytes_per_device(worker):
  r = worker.result()
  total, dev0 = r["state_bytes_total"], r["state_bytes_device0"]
  # Parameters and moments split over fsdp x tensor = 4 devices (replicated over
  # data); only norms, biases and scalars are split less, a small remainder.
  n = 4
  assert total / n <= dev0 <= 1.02 * total / n, (dev0, total)
  # The compiled step agrees: its per-device arguments are this state shard plus the
  # batch shard (XLA drops the one-byte 'last_finite' flag the step never reads).
  args = r["arg_bytes_device0"] - r["batch_bytes_device0"]
  assert abs(args - dev0) <= 16, (args, dev0)


def test_frozen_tower_is_unchanged_and_has_no_optimizer_state(worker):
  r = worker.result()
  vision = [k for k in r["init_params"] if k.startswith("vision/")]
  assert vision
  for k in vision:
    assert r["sharded"]["params"][k].tobytes() == r["init_params"][k].tobytes(), k
  moved = [k for k in r["init_params"] if not k.startswith("vision/") and
           not np.array_equal(r["sharded"]["params"][k], r["init_params"][k])]
  assert len(moved) > 0.9 * (len(r["init_params"]) - len(vision))
  # No optimizer-state array sits under a vision parameter (set_to_zero has no
  # state; the masked Adam keeps empty MaskedNodes there, which have no leaves).
  opt_paths = list(r["step1"]["opt_state"])
  assert not [p for p in opt_paths if "vision" in p.split("/")]
  trainable = {k for k in r["init_params"] if not k.startswith("vision/")}
  for moment in ("mu", "nu"):
    held = {p.split(f"/{moment}/", 1)[1] for p in opt_paths if f"/{moment}/" in p}
    assert held == trainable, moment


def test_gradient_accumulation_matches_one_big_batch(worker):
  r = worker.result()
  _assert_scalars_close(r["accum"]["metrics"], r["step2"]["metrics"], _scalar_roundoff(r),
                        "2 micro-batches vs 1 batch")
  roundoff.assert_close(r["accum"]["params"], r["step2"]["params"],
                        r["step2_permuted"]["params"], r["step2"]["params"],
                        "params after an accumulated step vs one batch")


def test_round_off_bound_catches_a_lost_shard(worker):
  """The bound is tight: a run whose step 3 lost half its rows' loss fails it.

  That is what a data-parallel shard whose gradient never arrives does; the same
  runs without the loss pass (the one-device run against itself permuted).
  """
  r = worker.result()
  single, permuted = (r["single_all_steps"]["params"],
                      r["single_permuted_all_steps"]["params"])
  lost = r["single_lost_shard_all_steps"]["params"]
  # Every tensor the steps moved (the frozen ViT and the never-used added embedding
  # rows of the image tokens do not move).
  moved = {k for k in single if not np.array_equal(single[k], r["init_params"][k])}
  assert len(moved) > 40
  caught = {line.split(":")[0] for line in roundoff.violations(lost, single, permuted, single)}
  assert caught == moved, f"missed: {sorted(moved - caught)}; extra: {sorted(caught - moved)}"


def test_all_masked_batch_gives_zero_loss_and_finite_update(worker):
  r = worker.result()
  m = r["masked"]["metrics"]
  assert m["loss"] == 0.0 and m["loss_tokens"] == 0
  assert m["grad_norm"] == 0.0
  assert m["skipped_updates"] == 0
  assert r["masked"]["params_finite"] and all(r["masked"]["params_finite"].values())


def test_nonfinite_gradient_skips_the_update(worker):
  r = worker.result()
  m = r["poisoned"]["metrics"]
  assert not np.isfinite(m["loss"]) and not np.isfinite(m["grad_norm"])
  assert m["skipped_updates"] == r["step2"]["metrics"]["skipped_updates"] + 1 == 1
  before, after = r["step1"], r["poisoned"]
  for k in before["params"]:
    assert after["params"][k].tobytes() == before["params"][k].tobytes(), k
  counters = ("notfinite_count", "last_finite", "total_notfinite")
  for k in before["opt_state"]:  # Adam's moments and count untouched too
    if k not in counters:
      assert after["opt_state"][k].tobytes() == before["opt_state"][k].tobytes(), k


# -------------------------------------------------------- multi-process (trainer)


def test_two_processes_of_four_devices_match_one_of_eight(full_run, worker, tmp_path,
                                                          cache_dir):
  workdir = _TwoProcessRun(tmp_path, cache_dir).result()
  got, want = _metrics(workdir), _metrics(full_run)
  assert [m["step"] for m in got] == [m["step"] for m in want]
  r = worker.result()
  allowance = _scalar_roundoff(r)
  for g, w in zip(got, want):
    _assert_scalars_close(g, w, allowance, f"step {g['step']}")
  last = OVERRIDES["total_steps"]
  final_got, final_want = _load_state(workdir, last), _load_state(full_run, last)
  params = lambda state: {k: v for k, v in state.items() if k.startswith("params/")}
  # The reference: the same number of steps, permuted vs not, on one device.
  prefixed = lambda flat: {f"params/{k}": v for k, v in flat.items()}
  roundoff.assert_close(params(final_got), params(final_want),
                        prefixed(r["single_permuted_all_steps"]["params"]),
                        prefixed(r["single_all_steps"]["params"]),
                        f"params after {last} steps, 2 x 4 vs 1 x 8 devices")


def test_restore_onto_a_different_mesh(full_run):
  """The 8-device (fsdp=4 x tensor=2) checkpoint restores onto this process's 1 device.

  Uses the trainer's own restore path (abstract state with the new mesh's shardings);
  every array must equal the saved one exactly, and the data position comes back.
  """
  import ml_collections
  from bliperax import sharding
  from bliperax.train import checkpoint as ckpt_lib
  from bliperax.train.setup import TrainSetup
  cfg = ml_collections.ConfigDict(
      json.loads((full_run / "checkpoints" / "config.json").read_text()))
  cfg.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
  mesh = sharding.make_mesh(cfg.mesh)
  assert mesh.devices.size == 1
  setup = TrainSetup.build(cfg, mesh)
  ckpt = ckpt_lib.Checkpointer(full_run / "checkpoints")
  step = ckpt.latest_step()
  assert step == OVERRIDES["total_steps"]
  with setup.context():
    state, data_state = ckpt.restore(step, setup.abstract_state)
  ckpt.close()
  assert int(state.step) == step and data_state["index"] == step
  got, want = _flat(state), _load_state(full_run, step)
  assert set(got) == set(want)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
