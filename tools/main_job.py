r"""The main job on one CPU: digits data -> pre-train -> fine-tune -> evaluate -> chat.

  python tools/main_job.py --workdir=/tmp/digits_run [--pretrain_steps=N] [--sft_steps=N]

Stages (each the real entry point, run as a subprocess so its output streams):
  1. tools/make_digits.py             shard sets under WORKDIR/data
  2. python -m bliperax.train         caption pre-training  -> WORKDIR/pretrain
  3. export of its params             -> WORKDIR/pretrain_params (the SFT's init_from)
  4. python -m bliperax.train         chat fine-tuning      -> WORKDIR/sft
  5. python -m bliperax.evaluate      every task (reading with anyres) -> eval.json
  6. python -m bliperax.evaluate      reading, base crop only          -> eval_base.json
Then a few held-out answers next to their true labels, the accuracy table, and
as the last line a JSON object with accuracies and stage times. Stages whose
output already exists are skipped (delete WORKDIR to start over).
"""
import json
import os
import pathlib
import subprocess
import sys
import time

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/digits_run", "Where data, runs and results go.")
_PRETRAIN_STEPS = flags.DEFINE_integer("pretrain_steps", None, "Pre-training steps "
                                       "(default: the config's).")
_SFT_STEPS = flags.DEFINE_integer("sft_steps", None, "Fine-tuning steps (default: config's).")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 6000, "Training samples of sum and read.")
_LIMIT = flags.DEFINE_integer("eval_limit", 0, "Held-out questions per task (0 = all).")
_SHOW = flags.DEFINE_integer("show", 4, "Held-out answers to print per task.")

_ROOT = pathlib.Path(__file__).resolve().parent.parent

# glibc malloc settings for the stages (values already in the environment win).
# XLA on CPU allocates each step's temporaries as one block (205 MB for the SFT
# step, 315 MB for pre-training); glibc serves blocks that large with mmap and
# unmaps them on free, so every step page-faults them in again: ~30% of the CPU
# time went to the kernel. One arena, no mmap and no trimming keep the block
# mapped between steps: pre-training 585 -> 322 ms/step, minor faults
# 117k -> 14 per step (tools/bench_train_step.py, 2 cores).
CPU_MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0",
                  "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}


def _run(title: str, argv: list) -> None:
  env = {**CPU_MALLOC_ENV, **os.environ}
  shown = " ".join(f"{k}={env[k]}" for k in CPU_MALLOC_ENV)
  print(f"\n=== {title}\n$ {shown} {' '.join(argv)}", flush=True)
  result = subprocess.run(argv, cwd=_ROOT, env=env, check=False)
  if result.returncode:
    raise SystemExit(f"main job: {title} failed (exit {result.returncode})")


def _train(stage: str, config: str, workdir: pathlib.Path, steps, extra=()) -> None:
  argv = [sys.executable, "-m", "bliperax.train", f"--config={config}",
          f"--workdir={workdir}", *extra]
  _run(f"{stage}", argv)


def _example_commands(heldout: pathlib.Path, out: pathlib.Path, checkpoint: pathlib.Path,
                      tasks: dict) -> list:
  """Saves each task's first held-out question's images as PNG files; returns a
  `python -m bliperax.generate` command per task that asks it, with the true answer.
  `tasks` maps each task to whether it was evaluated with anyres crops."""
  from bliperax.data import records  # pylint: disable=g-import-not-at-top
  out.mkdir(parents=True, exist_ok=True)
  commands = []
  for task, anyres in tasks.items():
    sample = next(records.read_samples(str(heldout / task)))
    argv = ["python -m bliperax.generate", f"--checkpoint={checkpoint}",
            f"--anyres={str(anyres).lower()}"]
    for i, image in enumerate(sample.images):
      path = out / f"{task}-{i}.png"
      path.write_bytes(image)
      argv.append(f"--image={path}")
    question = sample.turns[0].splitlines()[-1]
    argv.append(f'--prompt="{question}"')
    commands.append(f"{' '.join(argv)}   # true answer: {sample.turns[1]}")
  return commands


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  work = pathlib.Path(_WORKDIR.value).absolute()
  data = work / "data"
  times = {}
  t_all = time.time()

  def stage(name):
    times[name] = round(time.time() - stage.t0, 1)
    stage.t0 = time.time()
  stage.t0 = time.time()

  if not (data / "digits.json").exists():
    _run("1/6 make the digits data", [sys.executable, "tools/make_digits.py",
                                      f"--output={data}", f"--num_sum={_NUM_TRAIN.value}",
                                      f"--num_read={_NUM_TRAIN.value}"])
  stage("data")
  knobs = f"root={data}"
  pre_knobs = knobs + (f",steps={_PRETRAIN_STEPS.value}" if _PRETRAIN_STEPS.value else "")
  sft_knobs = knobs + (f",steps={_SFT_STEPS.value}" if _SFT_STEPS.value else "")
  _train("2/6 pre-train on captions", f"experiments/digits/pretrain.py:{pre_knobs}",
         work / "pretrain", _PRETRAIN_STEPS.value)
  stage("pretrain")
  init = work / "pretrain_params"
  print(f"\n=== 3/6 export the pre-trained params -> {init}", flush=True)
  from bliperax.infer import checkpoints  # pylint: disable=g-import-not-at-top
  checkpoints.export(work / "pretrain", init)
  stage("export")
  sft_config = f"experiments/digits/sft.py:{sft_knobs}"
  _train("4/6 fine-tune on chats (vqa, sum, read)", sft_config, work / "sft",
         _SFT_STEPS.value, [f"--config.model.init_from={init}"])
  stage("sft")
  evaluate = [sys.executable, "-m", "bliperax.evaluate", f"--config={sft_config}",
              f"--checkpoint={work / 'sft'}", f"--limit={_LIMIT.value}"]
  _run("5/6 evaluate (held-out, reading with anyres)",
       evaluate + [f"--output={work / 'eval.json'}"])
  _run("6/6 evaluate reading with the base crop only",
       evaluate + ["--tasks=read", "--anyres=off", f"--output={work / 'eval_base.json'}"])
  stage("evaluate")

  full = json.loads((work / "eval.json").read_text())["tasks"]
  base = json.loads((work / "eval_base.json").read_text())["tasks"]["read"]
  print("\n=== held-out answers (model vs. true label)")
  for task, result in full.items():
    for p in result["predictions"][:_SHOW.value]:
      mark = "ok " if p["prediction"] == p["answer"] else "BAD"
      print(f"  {mark} {task:<5} {p['id']:<9} true={p['answer']!r:<8} model={p['prediction']!r}")
  print("\n=== ask it yourself (held-out images saved under examples/):")
  anyres = {task: r["anyres"] for task, r in full.items()}
  for command in _example_commands(data / "heldout", work / "examples", work / "sft", anyres):
    print(f"  {command}")
  rows = [(task, "anyres" if r["anyres"] else "base", r) for task, r in full.items()]
  rows.append(("read", "base", base))
  print("\n=== accuracy on the held-out split (exact match)")
  print(f"{'task':<6} {'crops':<7} {'accuracy':>9} {'correct':>8}")
  for task, crops, r in rows:
    print(f"{task:<6} {crops:<7} {100 * r['accuracy']:>8.1f}% {r['correct']:>4}/{r['total']}")
  times["total"] = round(time.time() - t_all, 1)
  print(f"wall-clock: {times}")
  print(json.dumps({"accuracy": {**{t: r["accuracy"] for t, r in full.items()},
                                 "read_base_crop": base["accuracy"]},
                    "seconds": times, "workdir": str(work)}))
  return 0


if __name__ == "__main__":
  app.run(main)
