r"""The main job on one CPU: digits data -> pre-train -> fine-tune -> evaluate -> chat.

  python tools/main_job.py --workdir=/tmp/digits_run [--pretrain_steps=N] [--sft_steps=N] [--fresh]

Stages (each the real entry point, run as a subprocess so its output streams):
  1. tools/make_digits.py             shard sets under WORKDIR/data
  2. python -m bliperax.train         caption pre-training  -> WORKDIR/pretrain
  3. python -m bliperax.export        its params -> WORKDIR/pretrain_params (the SFT's init_from)
  4. python -m bliperax.train         chat fine-tuning      -> WORKDIR/sft
  5. python -m bliperax.evaluate      every task (reading with anyres) -> eval.json
  6. python -m bliperax.evaluate      reading, base crop only          -> eval_base.json
Then a few held-out answers next to their true labels, the held-out accuracy during
fine-tuning (the SFT config's in-training evaluators, WORKDIR/sft/metrics.jsonl), the
accuracy table, and as the last line a JSON object with accuracies and stage times.

Each stage records under WORKDIR/stages/ what it is run with (bliperax/run_record.py:
code, resolved config, flags, the upstream stage's record) and when it finished. A
rerun on the same WORKDIR resumes the same run only: a finished stage is reused and
says so, an interrupted one runs again (training continues from its checkpoint), and
a stage recorded with other code, config or flags stops the job with one line saying
what differs. --fresh removes WORKDIR first.
"""
import json
import pathlib
import shutil
import subprocess
import sys
import time
from typing import Callable, Dict, Iterable

from absl import app, flags

from bliperax import cli
from bliperax import run_record

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/digits_run", "Where data, runs and results go.")
_PRETRAIN_STEPS = flags.DEFINE_integer("pretrain_steps", None, "Pre-training steps "
                                       "(default: the config's).", lower_bound=1)
_SFT_STEPS = flags.DEFINE_integer("sft_steps", None, "Fine-tuning steps (default: config's).",
                                  lower_bound=1)
_NUM_TRAIN = flags.DEFINE_integer("num_train", 6000, "Training samples of sum and read.",
                                  lower_bound=1)
_LIMIT = flags.DEFINE_integer("eval_limit", 0, "Held-out questions per task (0 = all).",
                              lower_bound=0)
_SHOW = flags.DEFINE_integer("show", 4, "Held-out answers to print per task.", lower_bound=0)
_FRESH = flags.DEFINE_bool("fresh", False, "Remove WORKDIR first and start over. Without "
                           "it a rerun resumes the run in WORKDIR (finished stages are "
                           "reused) and stops if code, config or flags differ from it.")

_ROOT = pathlib.Path(__file__).resolve().parent.parent

def _run(title: str, argv: list) -> None:
  # The stages are entry points: each keeps its freed memory mapped itself
  # (bliperax.host_memory), no environment needed.
  print(f"\n=== {title}\n$ {' '.join(argv)}", flush=True)
  result = subprocess.run(argv, cwd=_ROOT, check=False)
  if result.returncode:
    raise SystemExit(f"main job: {title} failed (exit {result.returncode})")


def _train(stage: str, config: str, workdir: pathlib.Path, steps, extra=()) -> None:
  argv = [sys.executable, "-m", "bliperax.train", f"--config={config}",
          f"--workdir={workdir}", *extra]
  _run(f"{stage}", argv)


def _config(name: str, knobs: str):
  """experiments/digits/<name>.py:knobs, resolved as the trainer resolves --config."""
  return cli.load_config(f"{_ROOT / 'experiments' / 'digits' / name}.py:{knobs}")


def run_stage(work: pathlib.Path, name: str, title: str, record: Dict,
              outputs: Iterable[pathlib.Path], run: Callable[[], None]) -> bool:
  """Runs stage `name` unless WORKDIR holds it finished with the same record.

  The stage's record (what it is run with) goes to WORKDIR/stages/<name>/ before it
  runs, a `finished` file after. On a rerun the stage is
  - reused, and says so, when it finished earlier with the same record: the job
    continues from its outputs;
  - run again when it started with the same record but did not finish (training
    resumes from its checkpoint; the other stages redo their work);
  - refused (run_record.RunMismatch) when recorded with something else, or when
    its `outputs` exist without a record (an older main job's): reusing them would
    report results of a run other than this one.
  Returns whether the stage ran.
  """
  directory = work / "stages" / name
  fresh = f"rerun with --fresh (removes {work}) or pass another --workdir"
  if not (directory / run_record.FILENAME).exists():
    made = [str(p) for p in outputs if p.exists()]
    if made:
      raise run_record.RunMismatch(
          f"stage {name!r} in {work}: {made[0]} exists without a record of what "
          f"made it (an older main job?), so it can be neither reused nor resumed as "
          f"this run; to start fresh, {fresh}.")
  same = run_record.check_or_write(directory, record, f"stage {name!r}", fresh=fresh)
  if (directory / "finished").exists():
    print(f"\n=== {title}: reused, finished earlier with the same code, config and "
          f"inputs ({directory})", flush=True)
    return False
  if same:
    print(f"\n=== {title}: resuming, started earlier with the same code, config and "
          "inputs but not finished", flush=True)
  run()
  (directory / "finished").touch()
  return True


def _is_main_job_workdir(work: pathlib.Path) -> bool:
  """Whether --fresh may remove `work`: a main job's (this or an older one's) or empty."""
  return ((work / "stages").is_dir() or (work / "data" / "digits.json").exists()
          or not any(work.iterdir()))


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
  if _FRESH.value and work.exists():
    if not _is_main_job_workdir(work):  # a mistyped --workdir must not cost a home folder
      raise SystemExit(f"main job: --fresh: {work} does not look like a main job workdir "
                       "(no stages/ or data/digits.json); not removing it")
    print(f"=== --fresh: removing {work}", flush=True)
    shutil.rmtree(work)
  try:
    times, reused = _stages(work)
  except run_record.RunMismatch as e:
    raise SystemExit(f"main job: {e}") from None
  _report(work, times, reused)
  return 0


def _stages(work: pathlib.Path):
  """Runs (or reuses) the five stages; returns their times and the reused ones."""
  data = work / "data"
  times, reused = {}, []
  t_all = time.time()
  # Code outside the package that decides a stage's result: this orchestration
  # (how stages are called) and, for the data, the script that writes it.
  job = [str(_ROOT / "tools" / "main_job.py")]

  def stage(name, title, record, outputs, run):
    t0 = time.time()
    if not run_stage(work, name, title, record, outputs, run):
      reused.append(name)
    times[name] = round(time.time() - t0, 1)
    return record

  def make_data():
    shutil.rmtree(data, ignore_errors=True)  # an interrupted run's partial shards
    _run("1/6 make the digits data", [sys.executable, "tools/make_digits.py",
                                      f"--output={data}", f"--num_sum={_NUM_TRAIN.value}",
                                      f"--num_read={_NUM_TRAIN.value}"])
  data_rec = stage("data", "1/6 make the digits data", run_record.make(
      extra_code=job + [str(_ROOT / "tools" / "make_digits.py")],
      make_digits={"num_sum": _NUM_TRAIN.value, "num_read": _NUM_TRAIN.value}),
      [data], make_data)

  knobs = f"root={data}"
  pre_knobs = knobs + (f",steps={_PRETRAIN_STEPS.value}" if _PRETRAIN_STEPS.value else "")
  sft_knobs = knobs + (f",steps={_SFT_STEPS.value}" if _SFT_STEPS.value else "")
  pre_title = "2/6 pre-train on captions"
  pre_rec = stage("pretrain", pre_title, run_record.make(
      _config("pretrain", pre_knobs), extra_code=job, data=run_record.digest(data_rec)),
      [work / "pretrain"],
      lambda: _train(pre_title, f"experiments/digits/pretrain.py:{pre_knobs}",
                     work / "pretrain", _PRETRAIN_STEPS.value))

  init = work / "pretrain_params"
  def export():
    _run("3/6 export the pre-trained params", [
        sys.executable, "-m", "bliperax.export", f"--checkpoint={work / 'pretrain'}",
        f"--output={init}"])
  export_rec = stage("export", "3/6 export the pre-trained params", run_record.make(
      extra_code=job, pretrain=run_record.digest(pre_rec)), [init], export)

  sft_config = f"experiments/digits/sft.py:{sft_knobs}"
  sft_cfg = _config("sft", sft_knobs)
  sft_cfg.model.init_from = str(init)
  sft_title = "4/6 fine-tune on chats (vqa, sum, read)"
  sft_rec = stage("sft", sft_title, run_record.make(
      sft_cfg, extra_code=job, export=run_record.digest(export_rec)), [work / "sft"],
      lambda: _train(sft_title, sft_config, work / "sft", _SFT_STEPS.value,
                     [f"--config.model.init_from={init}"]))

  evaluate = [sys.executable, "-m", "bliperax.evaluate", f"--config={sft_config}",
              f"--checkpoint={work / 'sft'}", f"--limit={_LIMIT.value}"]
  def evaluate_both():
    _run("5/6 evaluate (held-out, reading with anyres)",
         evaluate + [f"--output={work / 'eval.json'}"])
    _run("6/6 evaluate reading with the base crop only",
         evaluate + ["--tasks=read", "--anyres=off", f"--output={work / 'eval_base.json'}"])
  stage("evaluate", "5-6/6 evaluate", run_record.make(
      sft_cfg, extra_code=job, sft=run_record.digest(sft_rec), limit=_LIMIT.value),
      [work / "eval.json", work / "eval_base.json"], evaluate_both)
  times["total"] = round(time.time() - t_all, 1)
  return times, reused


def _report(work: pathlib.Path, times: Dict, reused: list) -> None:
  """Held-out answers, generate commands, the accuracy table, the final JSON line."""
  data = work / "data"

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
  curve = _in_training_curve(work / "sft" / "metrics.jsonl", list(full))
  rows = [(task, "anyres" if r["anyres"] else "base", r) for task, r in full.items()]
  rows.append(("read", "base", base))
  print("\n=== accuracy on the held-out split (exact match)")
  print(f"{'task':<6} {'crops':<7} {'accuracy':>9} {'correct':>8}")
  for task, crops, r in rows:
    print(f"{task:<6} {crops:<7} {100 * r['accuracy']:>8.1f}% {r['correct']:>4}/{r['total']}")
  print(f"wall-clock: {times}" + (f" (reused, finished earlier: {', '.join(reused)})"
                                    if reused else ""))
  print(json.dumps({"accuracy": {**{t: r["accuracy"] for t, r in full.items()},
                                 "read_base_crop": base["accuracy"]},
                    "in_training": curve, "seconds": times, "reused": reused,
                    "workdir": str(work)}))


def _in_training_curve(path: pathlib.Path, tasks: list) -> dict:
  """Prints the SFT's in-training evaluations (bliperax/train/evals.py) as a table and
  returns {task: [[step, accuracy], ...]} (plus the sums' perplexity)."""
  records = [json.loads(line) for line in path.read_text().splitlines()] \
      if path.exists() else []
  records = [r for r in records if any(k.startswith("eval/") for k in r)]
  curve = {t: [[r["step"], r[f"eval/{t}/accuracy"]] for r in records
               if f"eval/{t}/accuracy" in r] for t in tasks}
  curve["sum_perplexity"] = [[r["step"], r["eval/sum_nll/perplexity"]] for r in records
                             if "eval/sum_nll/perplexity" in r]
  if records:
    print("\n=== held-out accuracy during fine-tuning (in-training evaluators, first "
          f"{records[-1].get(f'eval/{tasks[0]}/total', '?')} questions per task)")
    print(f"{'step':>6} " + " ".join(f"{t:>7}" for t in tasks) + f" {'sum ppl':>8}")
    for r in records:
      cells = [f"{100 * r[f'eval/{t}/accuracy']:>6.1f}%" if f"eval/{t}/accuracy" in r
               else f"{'-':>7}" for t in tasks]
      ppl = r.get("eval/sum_nll/perplexity")
      print(f"{r['step']:>6} " + " ".join(cells) + (f" {ppl:>8.3f}" if ppl else ""))
  return curve


if __name__ == "__main__":
  cli.run(main)
