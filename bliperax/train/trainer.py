"""The training loop: setup (bliperax.train.setup) -> init or restore -> compile -> loop.

Running again on the same workdir resumes from the latest checkpoint (train state and
data position), so an interrupted run continues exactly. SIGTERM (preemption) saves
a checkpoint at the current step and returns cleanly; on a pod SIGTERM to any one
process stops all of them at one agreed step, all save it and return
(bliperax/train/preemption.py).
"""
from __future__ import annotations

import functools
import logging
import os
import tempfile
import time
from typing import Any, Dict

import jax
import ml_collections
import numpy as np
from etils import epath

from bliperax import paths
from bliperax import run_record
from bliperax import sharding
from bliperax.lora import config as lora_config
from bliperax.data.synthetic import SyntheticSource
from bliperax.models.config import XGenMMConfig
from bliperax.train import checkpoint as ckpt_lib
from bliperax.train import dpo_config
from bliperax.train import evals as evals_lib
from bliperax.train import flops as flops_lib
from bliperax.train import inputs as inputs_lib
from bliperax.train import metrics as metrics_lib
from bliperax.train import preemption
from bliperax.train.setup import TrainSetup


DATA_KINDS = ("synthetic", "grain")


def make_source(cfg: ml_collections.ConfigDict, model_cfg: XGenMMConfig):
  """The batch iterator named by cfg.data.kind (pluggable; must have get/set_state)."""
  kind = cfg.data.get("kind", "synthetic")
  if kind == "synthetic":
    return SyntheticSource(model_cfg, cfg.train.global_batch, cfg.train.seq_len,
                           seed=cfg.data.get("seed", cfg.seed),
                           process_index=jax.process_index(),
                           process_count=jax.process_count(),
                           pairs=dpo_config.enabled(cfg))
  if kind == "grain":
    from bliperax.data import pipeline  # pylint: disable=g-import-not-at-top
    return pipeline.make_source(cfg, model_cfg, process_index=jax.process_index(),
                                process_count=jax.process_count())
  raise ValueError(f"unknown data kind {kind!r}")


def _read_init_params(path: str, abstract_params: Any) -> Any:
  """A converted checkpoint's parameters (bliperax.convert.params_io) as host arrays
  in the tree of `abstract_params` (the state's parameters: ShapeDtypeStructs),
  stacked or unstacked to its layer layout; InvalidRun if they do not fit it."""
  from bliperax.convert import params_io
  from bliperax.convert import layout
  params, _, _ = params_io.load_params(path)
  flat_new = layout.flatten(params)
  flat_old = layout.flatten(abstract_params)
  if layout.is_scanned(flat_old) != layout.is_scanned(flat_new):
    flat_new = (layout.stack_layers(flat_new) if layout.is_scanned(flat_old)
                else layout.unstack_layers(flat_new))
  if set(flat_new) != set(flat_old):
    raise InvalidRun(f"{path}: parameters do not match the model config "
                     f"(differ in {sorted(set(flat_new) ^ set(flat_old))[:5]})")
  for key in sorted(flat_new):  # e.g. a 14B checkpoint given to a 4B config
    if tuple(np.shape(flat_new[key])) != tuple(flat_old[key].shape):
      raise InvalidRun(f"model.init_from {path}: parameter {key} has shape "
                       f"{tuple(np.shape(flat_new[key]))}, the model config's is "
                       f"{tuple(flat_old[key].shape)}")
  return layout.unflatten({k: np.asarray(v) for k, v in flat_new.items()})


def _sum_over_processes(value: float) -> float:
  """`value` summed over the run's processes (each counted its own rows)."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return float(np.sum(multihost_utils.process_allgather(np.float64(value))))


class InvalidRun(ValueError):
  """A config or workdir the trainer refuses before creating anything."""


_POSITIVE = ("total_steps", "log_every", "checkpoint_every", "keep_checkpoints",
             "train.global_batch", "train.seq_len", "train.accum_steps")


def check_config(cfg: ml_collections.ConfigDict) -> None:
  """Raises InvalidRun on values no run can use (counts below 1, indivisible batches)."""
  for path in _POSITIVE:
    value = cfg
    for key in path.split("."):
      value = value.get(key) if value is not None else None
    if value is not None and int(value) < 1:
      raise InvalidRun(f"config {path} = {value}: must be at least 1")
  kind = cfg.data.get("kind", "synthetic")
  if kind not in DATA_KINDS:
    raise InvalidRun(f"config data.kind = {kind!r}: must be one of {', '.join(DATA_KINDS)}")
  if lora_config.enabled(cfg):
    try:
      lora_config.check(cfg.lora)
    except ValueError as e:
      raise InvalidRun(f"config {e}") from e
  if dpo_config.enabled(cfg):
    try:
      dpo_config.check(cfg)
    except ValueError as e:
      raise InvalidRun(f"config {e}") from e
  accum = cfg.train.get("accum_steps", 1)
  if cfg.train.global_batch % accum:
    raise InvalidRun(f"config train.global_batch = {cfg.train.global_batch} is not "
                     f"divisible by train.accum_steps = {accum}")


def prepare_workdir(workdir: epath.Path) -> None:
  """Creates the workdir (parents too) and proves it writable, or raises InvalidRun."""
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    if paths.is_remote(workdir):  # a bucket: write an object and remove it
      probe = workdir / f".write_check.{os.getpid()}"
      probe.write_text("")
      probe.unlink()
    else:
      with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_check."):
        pass
  except OSError as e:
    raise InvalidRun(f"workdir {workdir} is not writable: "
                     f"{getattr(e, 'strerror', None) or e} ({type(e).__name__})") from e


def train(cfg: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Trains for cfg.total_steps (resuming from workdir); returns the last metrics.

  Raises InvalidRun (config values, an unwritable workdir) and run_record.RunMismatch
  (the workdir holds another run) before anything is created or compiled.
  """
  check_config(cfg)
  try:  # which init and data the run reads, recorded with the config (train/inputs.py)
    inputs = inputs_lib.describe(cfg)
    evaluators = evals_lib.build(cfg)  # config.evals: read their inputs now (train/evals.py)
  except ValueError as e:
    raise InvalidRun(str(e)) from e
  workdir_path = paths.resolve(workdir)  # local, or gs:// shared by a pod's hosts
  prepare_workdir(workdir_path)
  # Resume only the run this workdir was made with (same config, code, init and data);
  # where it runs (mesh, processes) may change: checkpoints reshard on restore. A run
  # that stopped before its first checkpoint left nothing to resume: its record yields.
  # Evaluators only read the parameters: adding one to a run may resume it.
  run_record.check_or_write(workdir_path, run_record.make(cfg, **inputs), "training run",
                            ignore=("config.mesh", "config.distributed", "config.evals"),
                            resumable=ckpt_lib.has_checkpoint(workdir_path / "checkpoints"))
  dist = cfg.get("distributed", ml_collections.ConfigDict())
  sharding.maybe_initialize_distributed(dist.get("coordinator") or None,
                                        dist.get("num_processes"), dist.get("process_id"))
  is_main = jax.process_index() == 0
  setup = TrainSetup.build(cfg, sharding.make_mesh(cfg.mesh))
  ckpt = ckpt_lib.Checkpointer(workdir_path / "checkpoints", keep=cfg.get("keep_checkpoints", 3))
  if is_main:
    (workdir_path / "checkpoints" / "config.json").write_text(cfg.to_json_best_effort(indent=1))
  source = make_source(cfg, setup.model_cfg)

  start = ckpt.latest_step()
  preempt = preemption.Preemption(start or 0)  # a notice from here on stops every process
  with setup.context():
    if start is not None:
      state, data_state = ckpt.restore(start, setup.abstract_state)
      source.set_state(data_state)
      logging.info("restored step %d from %s", start, ckpt.directory)
    else:
      start = 0
      if cfg.model.get("init_from"):  # never draws (nor compiles) the random init
        state = setup.state_from_params(
            _read_init_params(cfg.model.init_from, setup.abstract_state.params), cfg.seed)
      else:
        state = setup.init_state(cfg.seed)
  writer = metrics_lib.MetricWriter(workdir_path, enabled=is_main, resume_step=start)

  # Model FLOPs counted from each batch that ran (every packed crop, group, token
  # and attended key), summed over the processes at each log: MFU of what ran.
  count_flops = functools.partial(
      flops_lib.batch_flops, setup.model_cfg, training=flops_lib.Training.of(setup),
      head_at_loss_only=bool(cfg.train.get("loss_tokens_per_row")))
  peak = flops_lib.peak_flops(jax.devices()[0].device_kind)
  step_fn = None
  last: Dict[str, Any] = {}
  window_start, window_wait, window_steps, window_flops = time.time(), 0.0, 0, 0.0
  with preempt, setup.context():
    step = start
    while step < cfg.total_steps:
      t0 = time.time()
      local = next(source)
      window_wait += time.time() - t0
      window_flops += count_flops(local)["total"]
      batch = setup.global_batch(local)
      if step_fn is None:  # compile once, outside the timed window
        t_compile = time.time()
        step_fn = setup.compile_step(batch)
        logging.info("compiled the train step in %.1f s", time.time() - t_compile)
        if is_main:
          print(f"compiled the train step in {time.time() - t_compile:.1f} s", flush=True)
        window_start = time.time()
      state, metrics = step_fn(state, batch)
      step += 1
      window_steps += 1
      evaluating = any(e.due(step) for e in evaluators)
      if step % cfg.log_every == 0 or step == cfg.total_steps or evaluating:
        metrics = jax.device_get(metrics)
        elapsed = time.time() - window_start
        step_time = elapsed / window_steps
        tokens = cfg.train.global_batch * cfg.train.seq_len
        step_model_flops = _sum_over_processes(window_flops) / window_steps
        tflops = step_model_flops / step_time / jax.device_count() / 1e12
        last = {**{k: np.asarray(v).item() for k, v in metrics.items()},
                "step_time_s": step_time, "data_wait_s": window_wait / window_steps,
                "tokens_per_s": tokens / step_time,
                "model_tflops_per_step": step_model_flops / 1e12,
                "tflops_per_device": tflops}
        if peak:
          last["mfu"] = tflops * 1e12 / peak
        if last.get("dropped_loss_tokens") and is_main:
          print(f"warning: step {step} left {last['dropped_loss_tokens']} loss tokens out "
                f"(more than train.loss_tokens_per_row={cfg.train.loss_tokens_per_row} in a "
                "row); raise it", flush=True)
        if evaluating:  # after the step time was taken: evaluation is not training time
          last.update(evals_lib.run(evaluators, step, setup.inference_params(state),
                                    setup.model_cfg))
        writer.write(step, last)
        window_start, window_wait, window_steps, window_flops = time.time(), 0.0, 0, 0.0
      saved = step % cfg.checkpoint_every == 0 or step == cfg.total_steps
      if saved:
        ckpt.save(step, state, source.get_state())
      if preempt.reached(step):  # every step, every process: the same step on all
        if not saved:  # Orbax refuses a second save of one step (StepAlreadyExistsError)
          ckpt.save(step, state, source.get_state(), force=True)
        logging.warning("preempted: stopping at step %d (its checkpoint is finished "
                        "before exit)", step)
        break
  ckpt.close()
  writer.close()
  if hasattr(source, "close"):  # stop prefetch threads/workers now, not at interpreter exit
    source.close()
  return {"step": step, **last}
