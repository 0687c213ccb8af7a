r"""Time the trainer's compiled step on real batches of a config; prints one JSON line.

  python tools/bench_train_step.py --config=experiments/digits/sft.py:root=/tmp/digits \
      [--steps=20] [--config.train.loss_tokens_per_row=24]
  python tools/bench_train_step.py \
      --config=experiments/xgenmm_4b/sft.py:synthetic=1,init=random,preset=tiny --steps=5

Builds the trainer's state, data source and jitted step exactly as
`python -m bliperax.train` does, draws steps+1 batches up front (so data loading
is not timed), runs one warm-up step, then times `--steps` steps, each waited
for. Besides wall time per step it reports the process's user and system CPU
time and minor page faults per step, and XLA's temporary-buffer size: on CPU a
large `sys_ms_per_step` with ~temp_bytes/4096 faults per step means the
allocator hands the temporaries back to the kernel after every step (see
bliperax/host_memory.py). It also reports the model FLOPs of a step (analytic,
bliperax/train/flops.py, at the valid crops and groups of the batches that ran) and
MFU where the device's peak is known (GPUs, TPUs). Compare runs on one machine only.

The state is always freshly initialised (a step's cost does not depend on the
weights), so the paper configs, which refuse to load without root= and init=, are
benchmarked with the explicit `init=random`, and with `synthetic=1` where no shards
are at hand (synthetic rows hold one crop each; the rows of real shards, e.g. of
`python -m bliperax.data.example_shards --layout=paper`, hold the config's
data.max_crops); the JSON line says which data and init it ran.
"""
import functools
import json
import os
import resource
import time

from absl import app, flags
from ml_collections import config_flags

from bliperax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file, as for "
                                          "python -m bliperax.train.", lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps (after one warm-up step).")
flags.mark_flags_as_required(["config"])


def _usage() -> resource.struct_rusage:
  return resource.getrusage(resource.RUSAGE_SELF)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax  # pylint: disable=g-import-not-at-top
  from bliperax import sharding  # pylint: disable=g-import-not-at-top
  from bliperax.train import trainer  # pylint: disable=g-import-not-at-top
  from bliperax.train.setup import TrainSetup  # pylint: disable=g-import-not-at-top

  cfg = _CONFIG.value
  steps = _STEPS.value
  if steps < 1:
    raise app.UsageError(f"--steps must be at least 1, got {steps}")
  setup = TrainSetup.build(cfg, sharding.make_mesh(cfg.mesh))
  source = trainer.make_source(cfg, setup.model_cfg)
  try:
    batches = [next(source) for _ in range(steps + 1)]
  finally:
    if hasattr(source, "close"):  # Grain: stop its prefetch threads and workers now
      source.close()
  with setup.context():
    state = setup.init_state(cfg.seed)
    device_batches = [setup.global_batch(b) for b in batches]
    t0 = time.perf_counter()
    step = setup.compile_step(device_batches[0])
    compile_s = time.perf_counter() - t0
    state, _ = step(state, device_batches[0])
    jax.block_until_ready(state)
    before, t0 = _usage(), time.perf_counter()
    for batch in device_batches[1:]:
      state, _ = step(state, batch)
      jax.block_until_ready(state)
    seconds, after = time.perf_counter() - t0, _usage()
  memory = step.memory_analysis()
  from bliperax.train import flops as flops_lib  # pylint: disable=g-import-not-at-top
  # Analytic FLOPs of the batches that ran (their real crops, groups and tokens), as
  # the trainer counts them for its MFU.
  count = functools.partial(flops_lib.batch_flops, setup.model_cfg,
                            training=flops_lib.Training.of(setup),
                            head_at_loss_only=bool(cfg.train.get("loss_tokens_per_row")))
  model_flops = sum(count(b)["total"] for b in batches[1:]) / steps
  peak = flops_lib.peak_flops(jax.devices()[0].device_kind)
  achieved = model_flops / (seconds / steps) / jax.device_count()
  print(json.dumps(dict(
      preset=cfg.model.preset,
      data=cfg.data.get("kind", "synthetic"), init="random",
      global_batch=cfg.train.global_batch, seq_len=cfg.train.seq_len,
      loss_tokens_per_row=cfg.train.get("loss_tokens_per_row", 0), steps=steps,
      compile_s=round(compile_s, 2), ms_per_step=round(1000 * seconds / steps, 1),
      user_ms_per_step=round(1000 * (after.ru_utime - before.ru_utime) / steps, 1),
      sys_ms_per_step=round(1000 * (after.ru_stime - before.ru_stime) / steps, 1),
      minor_faults_per_step=round((after.ru_minflt - before.ru_minflt) / steps),
      temp_bytes=getattr(memory, "temp_size_in_bytes", None),
      model_tflops_per_step=round(model_flops / 1e12, 3),
      tflops_per_s_per_device=round(achieved / 1e12, 3),
      mfu=round(achieved / peak, 4) if peak else None,
      device_kind=jax.devices()[0].device_kind,
      backend=jax.default_backend(), cpus=os.cpu_count(),
      malloc_env={k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
      load_avg_1m=round(os.getloadavg()[0], 1))))


if __name__ == "__main__":
  cli.run(main)
