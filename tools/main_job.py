r"""The main job on one CPU: digits data -> pre-train -> fine-tune -> evaluate -> DPO -> chat.

  python tools/main_job.py --workdir=/tmp/digits_run [--pretrain_steps=N] [--sft_steps=N]
      [--dpo_steps=N] [--pair_chats=N] [--fresh]

Stages (each the real entry point, run as a subprocess so its output streams):
  1. tools/make_digits.py             shard sets under WORKDIR/data
  2. python -m bliperax.train         caption pre-training  -> WORKDIR/pretrain
  3. python -m bliperax.export        its params -> WORKDIR/pretrain_params (the SFT's init_from)
  4. python -m bliperax.train         chat fine-tuning      -> WORKDIR/sft
  5. python -m bliperax.evaluate      every task (reading with anyres) -> eval.json
  6. python -m bliperax.evaluate      reading, base crop only          -> eval_base.json
  7. python -m bliperax.export        the SFT's params -> WORKDIR/sft_params (DPO's init_from)
  8. tools/make_preferences.py        the SFT model's wrong answers on training sums of
                                      moved digits (sampled, and on noised images)
                                                                       -> WORKDIR/preferences
  9. python -m bliperax.train         DPO with LoRA on those pairs     -> WORKDIR/dpo
 10. python -m bliperax.train         the control: SFT chats and DPO's prompts with
                                      their answers; same steps, LoRA and lr
                                                                       -> WORKDIR/sft_control
 11. python -m bliperax.evaluate      both, every task -> eval_dpo.json, eval_control.json
(experiments/digits/dpo.py and sft_control.py say why these settings.)
Then a few held-out answers next to their true labels, the held-out accuracy during
fine-tuning (the SFT config's in-training evaluators, WORKDIR/sft/metrics.jsonl), the
accuracy table with SFT, DPO and the control side by side (and DPO's gain over the SFT
per task with its paired standard error), and as the last line a JSON object with
accuracies and stage times.

Each stage records under WORKDIR/stages/ what it is run with (bliperax/run_record.py:
code, resolved config, flags, the upstream stage's record) and when it finished. A
rerun on the same WORKDIR resumes the same run only: a finished stage is reused and
says so, an interrupted one runs again (training continues from its checkpoint), and
a stage recorded with other code, config or flags stops the job with one line saying
what differs. --fresh removes WORKDIR first.
"""
import importlib.util
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
_NUM_HELDOUT = flags.DEFINE_integer(
    "num_heldout", 1000, "Held-out questions of sum and read (tools/make_digits.py): at "
    "1000 the standard error of an accuracy near 90% is ~1 point, of DPO's paired "
    "difference from the SFT less.", lower_bound=1)
_LIMIT = flags.DEFINE_integer("eval_limit", 0, "Held-out questions per task (0 = all).",
                              lower_bound=0)
_DPO_STEPS = flags.DEFINE_integer("dpo_steps", None, "DPO steps, and the control's "
                                  "(default: experiments/digits/dpo.py's).", lower_bound=1)
_PAIR_CHATS = flags.DEFINE_integer("pair_chats", None, "Prompt chats per pair source that "
                                   "tools/make_preferences.py answers (default: "
                                   "experiments/digits/dpo.py's).", lower_bound=1)
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


def _export(title: str, checkpoint: pathlib.Path, output: pathlib.Path) -> None:
  """A training workdir's parameters -> a parameter checkpoint (the next stage's init)."""
  _run(title, [sys.executable, "-m", "bliperax.export", f"--checkpoint={checkpoint}",
               f"--output={output}"])


def _config(name: str, knobs: str):
  """experiments/digits/<name>.py:knobs, resolved as the trainer resolves --config."""
  return cli.load_config(f"{_ROOT / 'experiments' / 'digits' / name}.py:{knobs}")


def _digits_module(name: str):
  """experiments/digits/<name>.py as a module (its constants: what a stage runs with)."""
  path = _ROOT / "experiments" / "digits" / f"{name}.py"
  spec = importlib.util.spec_from_file_location(f"digits_{name}_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


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
  """Runs (or reuses) the stages; returns their times and the reused ones."""
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
    _run("1/11 make the digits data", [sys.executable, "tools/make_digits.py",
                                      f"--output={data}", f"--num_sum={_NUM_TRAIN.value}",
                                      f"--num_read={_NUM_TRAIN.value}",
                                      f"--num_heldout={_NUM_HELDOUT.value}"])
  data_rec = stage("data", "1/11 make the digits data", run_record.make(
      extra_code=job + [str(_ROOT / "tools" / "make_digits.py")],
      make_digits={"num_sum": _NUM_TRAIN.value, "num_read": _NUM_TRAIN.value,
                   "num_heldout": _NUM_HELDOUT.value}),
      [data], make_data)

  knobs = f"root={data}"
  pre_knobs = knobs + (f",steps={_PRETRAIN_STEPS.value}" if _PRETRAIN_STEPS.value else "")
  sft_knobs = knobs + (f",steps={_SFT_STEPS.value}" if _SFT_STEPS.value else "")
  pre_title = "2/11 pre-train on captions"
  pre_rec = stage("pretrain", pre_title, run_record.make(
      _config("pretrain", pre_knobs), extra_code=job, data=run_record.digest(data_rec)),
      [work / "pretrain"],
      lambda: _train(pre_title, f"experiments/digits/pretrain.py:{pre_knobs}",
                     work / "pretrain", _PRETRAIN_STEPS.value))

  init = work / "pretrain_params"
  export_title = "3/11 export the pre-trained params"
  export_rec = stage("export", export_title, run_record.make(
      extra_code=job, pretrain=run_record.digest(pre_rec)), [init],
      lambda: _export(export_title, work / "pretrain", init))

  sft_config = f"experiments/digits/sft.py:{sft_knobs}"
  sft_cfg = _config("sft", sft_knobs)
  sft_cfg.model.init_from = str(init)
  sft_title = "4/11 fine-tune on chats (vqa, sum, read)"
  sft_rec = stage("sft", sft_title, run_record.make(
      sft_cfg, extra_code=job, export=run_record.digest(export_rec)), [work / "sft"],
      lambda: _train(sft_title, sft_config, work / "sft", _SFT_STEPS.value,
                     [f"--config.model.init_from={init}"]))

  evaluate = [sys.executable, "-m", "bliperax.evaluate", f"--config={sft_config}",
              f"--checkpoint={work / 'sft'}", f"--limit={_LIMIT.value}"]
  def evaluate_both():
    _run("5/11 evaluate (held-out, reading with anyres)",
         evaluate + [f"--output={work / 'eval.json'}"])
    _run("6/11 evaluate reading with the base crop only",
         evaluate + ["--tasks=read", "--anyres=off", f"--output={work / 'eval_base.json'}"])
  stage("evaluate", "5-6/11 evaluate", run_record.make(
      sft_cfg, extra_code=job, sft=run_record.digest(sft_rec), limit=_LIMIT.value),
      [work / "eval.json", work / "eval_base.json"], evaluate_both)

  sft_params = work / "sft_params"
  sft_export_title = "7/11 export the fine-tuned params"
  sft_export_rec = stage("sft_export", sft_export_title, run_record.make(
      extra_code=job, sft=run_record.digest(sft_rec)), [sft_params],
      lambda: _export(sft_export_title, work / "sft", sft_params))

  dpo_module = _digits_module("dpo")
  pairs = work / "preferences"
  pair_flags = dict(dpo_module.PREFERENCES)
  if _PAIR_CHATS.value:
    pair_flags["limit"] = _PAIR_CHATS.value
  pairs_title = "8/11 preference pairs: the SFT model's wrong answers on moved training digits"
  def make_pairs():
    shutil.rmtree(pairs, ignore_errors=True)  # an interrupted run's shards
    for name, (prompts, _, anyres) in dpo_module.PAIR_SOURCES.items():
      _run(f"{pairs_title} ({name})", [
          sys.executable, "tools/make_preferences.py", f"--input={data / 'train' / prompts}",
          f"--checkpoint={sft_params}", f"--output={pairs / name}",
          f"--anyres={str(anyres).lower()}", "--progress=false",
          *(f"--{k}={v}" for k, v in pair_flags.items())])
  pairs_rec = stage("preferences", pairs_title, run_record.make(
      extra_code=job + [str(_ROOT / "tools" / "make_preferences.py")],
      sft_export=run_record.digest(sft_export_rec), sources=dpo_module.PAIR_SOURCES,
      make_preferences=pair_flags), [pairs], make_pairs)

  steps = f",steps={_DPO_STEPS.value}" if _DPO_STEPS.value else ""
  runs = {}  # name -> (title, config file, knobs)
  runs["dpo"] = ("9/11 DPO with LoRA on the preference pairs", "dpo",
                 f"{knobs},pairs={pairs}{steps}")
  runs["sft_control"] = ("10/11 the control: SFT continued on its chats and DPO's prompts, "
                         "with DPO's steps, LoRA and lr",
                         "sft_control", f"{knobs}{steps}")
  run_recs = {}
  for name, (title, config, run_knobs) in runs.items():
    cfg = _config(config, run_knobs)
    cfg.model.init_from = str(sft_params)
    upstream = {"sft_export": run_record.digest(sft_export_rec)}
    if name == "dpo":
      upstream["preferences"] = run_record.digest(pairs_rec)
    def train(t=title, c=config, k=run_knobs, n=name):  # this iteration's values
      _train(t, f"experiments/digits/{c}.py:{k}", work / n, None,
             [f"--config.model.init_from={sft_params}"])
    run_recs[name] = stage(name, title, run_record.make(cfg, extra_code=job, **upstream),
                           [work / name], train)

  def evaluate_runs():
    for name in runs:
      _run(f"11/11 evaluate {name} (held-out, as the SFT model)", [
          sys.executable, "-m", "bliperax.evaluate", f"--config={sft_config}",
          f"--checkpoint={work / name}", f"--limit={_LIMIT.value}",
          f"--output={work / f'eval_{name}.json'}"])
  stage("evaluate_dpo", "11/11 evaluate DPO and the control", run_record.make(
      sft_cfg, extra_code=job, limit=_LIMIT.value,
      **{name: run_record.digest(rec) for name, rec in run_recs.items()}),
      [work / f"eval_{name}.json" for name in runs], evaluate_runs)
  times["total"] = round(time.time() - t_all, 1)
  return times, reused


# The post-training runs evaluated beside the SFT model: name -> the table's column.
POST_RUNS = {"dpo": "DPO", "sft_control": "control"}


def paired_difference(base: dict, other: dict) -> tuple:
  """(other − base accuracy, its standard error), both in points, over the questions
  both answered (a task's results from bliperax.evaluate, matched by question id).

  Paired: each question's correctness difference d ∈ {−1, 0, 1}; the standard error
  is std(d) / sqrt(n), much smaller than the unpaired one when both models get most
  questions right or wrong together.
  """
  right = {p["id"]: p["prediction"] == p["answer"] for p in base["predictions"]}
  d = [float(p["prediction"] == p["answer"]) - float(right[p["id"]])
       for p in other["predictions"] if p["id"] in right]
  if not d:
    raise ValueError("no question answered by both models")
  n = len(d)
  mean = sum(d) / n
  var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
  return 100 * mean, 100 * (var / n) ** 0.5


def comparison_table(sft: dict, base_crop: dict, post: Dict[str, dict]) -> tuple:
  """The table's lines and its JSON: SFT and every post-training run per task.

  `sft`, `post[name]`: {task: bliperax.evaluate result}; `base_crop`: the SFT's
  reading with the base crop only (a row of its own, SFT only).
  """
  names = list(post)
  lines = [f"{'task':<6} {'crops':<7} {'questions':>9} {'SFT':>7} "
           + " ".join(f"{POST_RUNS.get(n, n):>11}" for n in names) + "   "
           + " ".join(f"{POST_RUNS.get(n, n) + ' - SFT (se)':>22}" for n in names)]
  diffs = {n: {} for n in names}
  for task, r in sft.items():
    crops = "anyres" if r["anyres"] else "base"
    cells = []
    for n in names:
      points, se = paired_difference(r, post[n][task])
      diffs[n][task] = {"points": round(points, 2), "se": round(se, 2)}
      cells.append(f"{points:>+14.1f} ({se:.1f})")
    lines.append(f"{task:<6} {crops:<7} {r['total']:>9} {100 * r['accuracy']:>6.1f}% "
                 + " ".join(f"{100 * post[n][task]['accuracy']:>10.1f}%" for n in names)
                 + "   " + " ".join(f"{c:>22}" for c in cells))
  lines.append(f"{'read':<6} {'base':<7} {base_crop['total']:>9} "
               f"{100 * base_crop['accuracy']:>6.1f}% " + " ".join(f"{'-':>11}" for _ in names))
  summary = {n: {t: post[n][t]["accuracy"] for t in sft} for n in names}
  summary["minus_sft"] = diffs
  summary["questions"] = {t: r["total"] for t, r in sft.items()}
  return lines, summary


def _report(work: pathlib.Path, times: Dict, reused: list) -> None:
  """Held-out answers, generate commands, the accuracy table, the final JSON line."""
  data = work / "data"

  def tasks(name):
    return json.loads((work / name).read_text())["tasks"]
  full = tasks("eval.json")
  base = tasks("eval_base.json")["read"]
  post = {name: tasks(f"eval_{name}.json") for name in POST_RUNS}
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
  lines, post_summary = comparison_table(full, base, post)
  print("\n=== accuracy on the held-out split (exact match): the SFT model, DPO from it, "
        "and the control\n(SFT continued on its chats and DPO's prompts for DPO's steps); "
        "'- SFT (se)': the difference in points, its paired standard error")
  print("\n".join(lines))
  print(f"wall-clock: {times}" + (f" (reused, finished earlier: {', '.join(reused)})"
                                    if reused else ""))
  print(json.dumps({"accuracy": {**{t: r["accuracy"] for t, r in full.items()},
                                 "read_base_crop": base["accuracy"]},
                    **post_summary,
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
