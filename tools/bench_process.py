r"""bliperax's side of the side-by-side benchmark: one process, one JSON line.

  python tools/bench_process.py [--loss_tokens_per_row=95]

Runs the workload and protocol of `tools/bench_workload.py` (the same model shapes,
inputs and steps as `tools/bench_reference.py` runs through the PyTorch reference)
through bliperax's real paths: the trainer's `TrainSetup` (sharded init, the jitted
step with AdamW, clipping and the frozen ViT) and `bliperax.infer.generate.generate`.
`tools/bench_side_by_side.py` runs both alternately and compares them.

Fields of the JSON line (seconds unless named otherwise):
  import_s             importing JAX, Flax and bliperax
  build_s              config -> model, optimizer and random parameters (init compile
                       included; the persistent compilation cache applies as for any
                       entry point: run twice to see a warm start) = setup_s + init_s
  setup_s              the config, the workload's batches (~0.03 s) and
                       `TrainSetup.build`: model, optimizer, the state's shapes and
                       shardings (traces the model's init once)
  init_s               `init_state`: lowering the init, compiling it or loading it from
                       the cache, and running it
  first_step_s         the first training step, its compile included
  step_compile_s       of which lowering the step and compiling it or loading it from
                       the cache (`TrainSetup.compile_step`, as the trainer does)
  time_to_first_step_s from this script's first line to the first step's loss (Python
                       start-up itself not included: the driver's whole_process_s has it)
  step_median_s        median of steps 2..TRAIN_STEPS; step_s lists them all
  first_generate_s     the first generate call (compiles prefill and the decode loop)
  process_done_unix    time.time() after the first generate (the whole process ends
                       here; the driver subtracts its own start time)
  time_to_first_token_s  warm: a generate call of one token (prefill + first token)
  decode_tokens_per_s  warm, streamed: tokens 2..N from the host times each token
                       arrived (best of 2)
  device_loop_tokens_per_s   warm, without a callback: (N - 1) / (the call less the
                       one-token call)
"""
import json
import os
import sys
import time

_T_START = time.perf_counter()

from absl import flags  # pylint: disable=g-import-not-at-top

from bliperax import cli  # pylint: disable=g-import-not-at-top

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_workload as wl  # pylint: disable=g-import-not-at-top,wrong-import-position

_REPEATS = flags.DEFINE_integer("repeats", 2, "Warm generations; the fastest is reported.",
                                lower_bound=1)
_LOSS_TOKENS = flags.DEFINE_integer(
    "loss_tokens_per_row", 0, "The trainer's train.loss_tokens_per_row: > 0 runs the head "
    "only at that many loss positions per row (the workload has TRAIN_TEXT_TOKENS - 1); "
    "0, the default, runs it at every position, as the reference does.", lower_bound=0)


def _config():
  """The trainer's config for the workload: `small` preset, float32, AdamW + clipping."""
  from bliperax import configs  # pylint: disable=g-import-not-at-top
  c = configs.base("small")
  c.total_steps = wl.TRAIN_STEPS
  c.optim.update(lr=wl.LR, warmup_steps=0, final_lr_ratio=1.0, b1=wl.BETAS[0],
                 b2=wl.BETAS[1], eps=wl.EPS, weight_decay=wl.WEIGHT_DECAY,
                 grad_clip=wl.GRAD_CLIP, freeze=("^vision/",))
  c.mesh.update(data=1, fsdp=1, tensor=1)
  c.train.update(global_batch=wl.TRAIN_BATCH,  # seq_len: set from the batches
                 loss_tokens_per_row=_LOSS_TOKENS.value)
  return c


def _examples(rows, model_cfg):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from bliperax.data import batch as batch_lib  # pylint: disable=g-import-not-at-top
  from bliperax.data import batch_spec  # pylint: disable=g-import-not-at-top
  dims = batch_spec.VisionDims.of(model_cfg)
  return [batch_lib.expand(r.ids, r.labels,
                           [batch_lib.prepare_image(Image.fromarray(r.image), model_cfg)],
                           dims) for r in rows]


def _train_batch(step: int, model_cfg) -> dict:
  from bliperax.data import batch as batch_lib  # pylint: disable=g-import-not-at-top
  from bliperax.data import batch_spec  # pylint: disable=g-import-not-at-top
  out = batch_lib.collate(_examples(wl.train_rows(step), model_cfg), model_cfg,
                          wl.PAD_ID, "right")
  return {k: out[k] for k in batch_spec.TRAIN_KEYS}


def main(argv):
  del argv
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from bliperax import configs, sharding  # pylint: disable=g-import-not-at-top
  from bliperax.data import batch as batch_lib  # pylint: disable=g-import-not-at-top
  from bliperax.infer import generate as generate_lib  # pylint: disable=g-import-not-at-top
  from bliperax.train.setup import TrainSetup  # pylint: disable=g-import-not-at-top
  import_s = time.perf_counter() - _T_START

  t0 = time.perf_counter()
  cfg = _config()
  model_cfg = configs.model_config(cfg)
  batches = [_train_batch(i, model_cfg) for i in range(wl.TRAIN_STEPS)]
  cfg.train.seq_len = int(batches[0]["tokens"].shape[1])
  setup = TrainSetup.build(cfg, sharding.make_mesh(cfg.mesh))
  setup_s = time.perf_counter() - t0
  with setup.context():
    t1 = time.perf_counter()
    state = setup.init_state(cfg.seed)
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t1
    build_s = time.perf_counter() - t0

    step_s, losses = [], []
    step = None
    for i, batch in enumerate(batches):
      t0 = time.perf_counter()
      device_batch = setup.global_batch(batch)
      if step is None:  # as the trainer: lowered and compiled before the first call
        step = setup.compile_step(device_batch)
        step_compile_s = time.perf_counter() - t0
      state, metrics = step(state, device_batch)
      losses.append(float(metrics["loss"]))  # waits for the step
      step_s.append(time.perf_counter() - t0)
      if i == 0:
        time_to_first_step = time.perf_counter() - _T_START
  params = nn.meta.unbox(state.params)

  prompt = batch_lib.collate(_examples([wl.prompt_row()], model_cfg), model_cfg, wl.PAD_ID,
                             "left")
  t0 = time.perf_counter()
  generate_lib.generate(params, model_cfg, prompt, wl.NEW_TOKENS, eos_ids=())
  first_generate_s = time.perf_counter() - t0
  process_done_unix = time.time()

  def timed(max_new, on_token=None):
    t0 = time.perf_counter()
    generate_lib.generate(params, model_cfg, prompt, max_new, eos_ids=(), on_token=on_token)
    return time.perf_counter() - t0

  timed(1)  # compiles the one-token loop
  ttft = min(timed(1) for _ in range(_REPEATS.value))  # prefill + the first token
  rate = 0.0
  for _ in range(_REPEATS.value + 1):  # the first streamed call may compile
    stamps = []
    timed(wl.NEW_TOKENS, lambda i, tok: stamps.append(time.perf_counter()))
    rate = max(rate, wl.decode_rate(stamps)[0])
  loop_s = min(timed(wl.NEW_TOKENS) for _ in range(_REPEATS.value))
  print(json.dumps(dict(
      impl="bliperax", import_s=round(import_s, 2), build_s=round(build_s, 2),
      setup_s=round(setup_s, 2), init_s=round(init_s, 2),
      first_step_s=round(step_s[0], 3), step_compile_s=round(step_compile_s, 2),
      time_to_first_step_s=round(time_to_first_step, 2),
      step_median_s=round(wl.median(step_s[1:]), 4),
      step_s=[round(s, 4) for s in step_s], final_loss=round(losses[-1], 4),
      first_generate_s=round(first_generate_s, 3), process_done_unix=process_done_unix,
      time_to_first_token_s=round(ttft, 4), decode_tokens_per_s=round(rate, 1),
      device_loop_tokens_per_s=round((wl.NEW_TOKENS - 1) / (loop_s - ttft), 1)
      if loop_s > ttft else None,
      seq_len=cfg.train.seq_len, loss_tokens_per_row=cfg.train.loss_tokens_per_row,
      jax_version=jax.__version__,
      backend=jax.default_backend(), cpus=os.cpu_count(),
      compilation_cache=jax.config.jax_compilation_cache_dir or None,
      workload=wl.summary())), flush=True)


if __name__ == "__main__":
  cli.run(main)
