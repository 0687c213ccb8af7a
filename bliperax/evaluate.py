r"""Evaluation: benchmark predictions scored with the official metrics, few-shot
evaluation of a checkpoint on a benchmark, or digits exact match.

Score a predictions file in a benchmark's official results format (no model):

  python -m bliperax.evaluate --benchmark=vqav2 --data_dir=/data/vqav2 \
      --predictions=vqav2_val_predictions.json [--output=scores.json]

--benchmark is one of vqav2, okvqa, textvqa, vizwiz (VQA accuracy as the official
VQA evaluation computes it; predictions `[{"question_id", "answer"}]`, VizWiz
`[{"image", "answer"}]`) or coco (Karpathy test), coco_val2014, nocaps, textcaps
(CIDEr and BLEU-4 as pycocoevalcap computes them; predictions `[{"image_id",
"caption"}]`). --data_dir holds the benchmark's annotation files under their
released names (bliperax/benchmarks/registry.py lists them). Every question or image
needs one prediction (--partial scores the predicted ones only). Prints a table and,
as the last line, one JSON object with the metric under its usual name ("accuracy"
in percent with "perAnswerType"; "CIDEr" and "Bleu_4" as pycocoevalcap reports
them, with the tokenizer that ran); --output also writes per-question scores.

Few-shot evaluation of a checkpoint on a benchmark, as the paper reports it:

  python -m bliperax.evaluate --checkpoint=CKPT --benchmark=vqav2 --data_dir=/data/vqav2 \
      --image_dir=/data/coco --shots=0,4,8 [--limit=N] [--batch_size=B] [--output=r.json] \
      [--dtype=auto|float32|bfloat16]

Each eval-split question (image) is prompted with `shots` demonstrations drawn from
the train split (--seed), `<image>{instruction} {answer}<|endofchunk|>` each, then
`<image>{instruction}` (bliperax/benchmarks/fewshot.py); answers are decoded greedily
in bucketed batches, cut at `<|endofchunk|>`, post-processed (first line, stripped)
and scored. Writes, per shot count, a predictions file in the official format
(`<output stem>_<k>shot_predictions.json`, re-scorable with --predictions) and the
results JSON (--output, default ./<benchmark>_fewshot.json); prints each table and
the paper-style row, and last one JSON summary line.

Per-task exact-match accuracy on held-out chats, with greedy KV-cache decoding:

  python -m bliperax.evaluate --config=experiments/digits/sft.py:root=/tmp/digits \
      --checkpoint=/tmp/digits_run/sft [--tasks=read] [--anyres=off] [--output=eval.json]

The config's `eval` section names the held-out shard sets (`root/<task>`), the
tasks, which of them use anyres crops, and decoding limits; `data.system` is
the system turn the model was fine-tuned with. --checkpoint takes a training
workdir (its latest step) or a parameter checkpoint. Prints a table, writes the
JSON (--output, default ./eval.json) and prints a summary of it (without
the per-question predictions) as the last line. Exits non-zero on bad input.
"""
import json
import pathlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from bliperax import cli
from bliperax.benchmarks import registry as benchmark_registry

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config with an `eval` section (e.g. "
    "experiments/digits/sft.py:root=DIR).", lock_config=False)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Training workdir, its checkpoints/ "
                                  "or a step folder, or a parameter checkpoint.")
_TASKS = flags.DEFINE_list("tasks", None, "Tasks to evaluate (default: config eval.tasks).")
_ANYRES = flags.DEFINE_enum("anyres", "config", ["config", "on", "off"],
                            "Crops: as the config's eval.anyres says (few-shot: the base "
                            "crop, as in pre-training), anyres for every task, or only "
                            "the squashed base crop.")
_LIMIT = flags.DEFINE_integer("limit", 0, "Questions per task, or a benchmark's first N "
                              "questions/images (0 = all).", lower_bound=0)
_OUTPUT = flags.DEFINE_string("output", None, "Where to write the JSON results.")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Prompts per batch (0 = config; few-shot: "
                              "16).", lower_bound=0)
_BENCHMARK = flags.DEFINE_enum("benchmark", None, list(benchmark_registry.BENCHMARKS),
                               "Benchmark: scores --predictions, or evaluates --checkpoint "
                               "few-shot.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Folder with the benchmark's official "
                                "annotation files, under their released names.")
_PREDICTIONS = flags.DEFINE_string("predictions", None, "Predictions file in the "
                                   "benchmark's official results format.")
_PARTIAL = flags.DEFINE_boolean("partial", False, "Score only the questions/images that "
                                "have a prediction (default: all must have one).")
_IMAGE_DIR = flags.DEFINE_string("image_dir", None, "Few-shot: the folder the benchmark's "
                                 "image paths are relative to (e.g. the COCO root holding "
                                 "val2014/ and train2014/).")
_SHOTS = flags.DEFINE_list("shots", ["0", "4", "8"], "Few-shot: demonstrations per prompt, "
                           "one evaluation per count.")
_SEED = flags.DEFINE_integer("seed", 0, "Few-shot: seed of the demonstrations' draw.")
_MAX_NEW_TOKENS = flags.DEFINE_integer(
    "max_new_tokens", 0, "Few-shot: tokens generated per answer (0 = 10 for VQA, 30 for "
    "captions).", lower_bound=0)
_DTYPE = flags.DEFINE_enum("dtype", "auto", ["auto", "float32", "bfloat16"],
                           "Few-shot: weights, compute and KV cache; auto = bfloat16 on "
                           "GPU/TPU, float32 on CPU.")
_TOKENIZER = flags.DEFINE_enum("tokenizer", "auto", ["auto", "ptb", "python"],
                               "Caption tokenizer: pycocoevalcap's PTB tokenizer (Java), "
                               "its Python stand-in, or PTB where java is on the PATH.")


def _score_predictions() -> int:
  """--benchmark/--data_dir/--predictions: official metrics of a predictions file."""
  from bliperax import benchmarks  # pylint: disable=g-import-not-at-top
  from bliperax.benchmarks import caption_metrics  # pylint: disable=g-import-not-at-top
  missing = [f"--{f.name}" for f in (_BENCHMARK, _DATA_DIR) if f.value is None]
  if missing:
    cli.fail(f"scoring predictions needs {' and '.join(missing)} too")
  if _CONFIG.value is not None or _CHECKPOINT.value is not None:
    cli.fail("--predictions is scored without a model: drop --config and --checkpoint")
  bench = benchmarks.get(_BENCHMARK.value)
  try:
    result = benchmarks.score_file(bench, _DATA_DIR.value, _PREDICTIONS.value,
                                   partial=_PARTIAL.value, tokenizer=_TOKENIZER.value)
  except (benchmarks.BenchmarkError, caption_metrics.CaptionMetricError) as e:
    cli.fail(str(e), status=2)
  print(benchmarks.table(result))
  summary = benchmarks.summary(result)
  if _OUTPUT.value:
    output = pathlib.Path(_OUTPUT.value)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1))
    summary["output"] = str(output)
  print(json.dumps(summary))
  return 0


def _shots() -> list:
  try:
    shots = [int(k) for k in _SHOTS.value]
  except ValueError:
    cli.fail(f"--shots takes counts like 0,4,8; got {','.join(_SHOTS.value)}")
  if not shots or min(shots) < 0 or len(set(shots)) != len(shots):
    cli.fail(f"--shots takes distinct counts of 0 or more; got {','.join(_SHOTS.value)}")
  return shots


def _fewshot() -> int:
  """--checkpoint/--benchmark: few-shot evaluation of a checkpoint (module docstring)."""
  from bliperax import benchmarks  # pylint: disable=g-import-not-at-top
  # pylint: disable=g-import-not-at-top
  from bliperax.benchmarks import caption_metrics, predictions
  if _CHECKPOINT.value is None:
    cli.fail("--benchmark needs --checkpoint, --data_dir and --image_dir (few-shot "
             "evaluation of a checkpoint) or --data_dir and --predictions (scoring a "
             "predictions file)")
  missing = [f"--{f.name}" for f in (_DATA_DIR, _IMAGE_DIR) if f.value is None]
  if missing:
    cli.fail(f"few-shot evaluation of --benchmark needs {' and '.join(missing)} too")
  if _CONFIG.value is not None:
    cli.fail("few-shot evaluation reads the model from --checkpoint: drop --config")
  if not pathlib.Path(_IMAGE_DIR.value).is_dir():
    cli.fail(f"--image_dir {_IMAGE_DIR.value} is not a folder", status=2)
  shots = _shots()
  from bliperax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from bliperax.infer import checkpoints, fewshot  # pylint: disable=g-import-not-at-top
  bench = benchmarks.get(_BENCHMARK.value)
  try:
    params, model_cfg = checkpoints.load(_CHECKPOINT.value)
  except (checkpoints.CheckpointNotFound, ValueError) as e:
    cli.fail(f"cannot load --checkpoint: {e}", status=2)
  import jax  # pylint: disable=g-import-not-at-top
  params, model_cfg = checkpoints.for_inference(
      params, model_cfg, checkpoints.inference_dtype(_DTYPE.value, jax.default_backend()))
  output = pathlib.Path(_OUTPUT.value or f"{bench.name}_fewshot.json")
  try:
    results = fewshot.evaluate(
        params, model_cfg, tokenizer_lib.Tokenizer(), bench, _DATA_DIR.value,
        _IMAGE_DIR.value, shots, seed=_SEED.value, limit=_LIMIT.value,
        batch_size=_BATCH.value or 16, max_new_tokens=_MAX_NEW_TOKENS.value,
        anyres=_ANYRES.value == "on", caption_tokenizer=_TOKENIZER.value,
        progress=lambda k, n, total: print(f"  {k}-shot: {n}/{total}", flush=True))
  except (benchmarks.BenchmarkError, caption_metrics.CaptionMetricError, ValueError) as e:
    cli.fail(str(e), status=2)  # a file, field or image; max_new_tokens past the model
  output.parent.mkdir(parents=True, exist_ok=True)
  doc = {"benchmark": bench.name, "title": bench.title, "metric": bench.metric,
         "checkpoint": str(_CHECKPOINT.value), "data_dir": str(_DATA_DIR.value),
         "image_dir": str(_IMAGE_DIR.value), "seed": _SEED.value, "limit": _LIMIT.value,
         "anyres": _ANYRES.value == "on", "shots": {}}
  for k, result in results.items():
    path = output.with_name(f"{output.stem}_{k}shot_predictions.json")
    path.write_text(json.dumps(predictions.records(bench, result["samples"],
                                                   result["texts"])))
    result = {key: v for key, v in result.items() if key not in ("samples", "texts")}
    print(f"\n{k} shots:\n{benchmarks.table(result)}")
    doc["shots"][str(k)] = dict(result, predictions=str(path))
  model = pathlib.Path(_CHECKPOINT.value).name
  doc["table_row"] = fewshot.table_row(model, bench, results)
  output.write_text(json.dumps(doc, indent=1))
  print(f"\n{doc['table_row']}")
  print(json.dumps({"benchmark": bench.name, "metric": bench.metric,
                    "headline": {k: fewshot.headline(r) for k, r in results.items()},
                    "output": str(output)}))
  return 0


def _table(results: dict) -> str:
  lines = [f"{'task':<8} {'crops':<7} {'accuracy':>9} {'correct':>8} {'total':>6}"]
  for task, r in results.items():
    crops = "anyres" if r["anyres"] else "base"
    lines.append(f"{task:<8} {crops:<7} {100 * r['accuracy']:>8.1f}% {r['correct']:>8} "
                 f"{r['total']:>6}")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _PREDICTIONS.value is not None:
    return _score_predictions()
  if _BENCHMARK.value is not None:
    return _fewshot()
  if _CONFIG.value is None or _CHECKPOINT.value is None:
    cli.fail("give --config and --checkpoint (exact match on held-out chats), "
             "--checkpoint, --benchmark, --data_dir and --image_dir (few-shot evaluation), "
             "or --benchmark, --data_dir and --predictions (score a predictions file)")
  from bliperax.data import chat as chat_lib  # after flags: keeps --help fast
  from bliperax.data import tokenizer as tokenizer_lib
  from bliperax.infer import checkpoints
  from bliperax.infer import evaluate as eval_lib

  cfg = _CONFIG.value
  if "eval" not in cfg:
    print("error: the config has no `eval` section", file=sys.stderr)
    return 2
  try:
    params, model_cfg = checkpoints.load(_CHECKPOINT.value)
  except (checkpoints.CheckpointNotFound, ValueError) as e:
    print(f"error: cannot load --checkpoint: {e}", file=sys.stderr)
    return 2
  tasks = _TASKS.value or [t for t in cfg.eval.tasks.split(",") if t]
  anyres_tasks = set(filter(None, cfg.eval.get("anyres", "").split(",")))
  tokenizer = tokenizer_lib.Tokenizer(cfg.data.get("tokenizer") or None)
  system = cfg.data.get("system", chat_lib.SYSTEM_PROMPT)
  results = {}
  for task in tasks:
    folder = pathlib.Path(cfg.eval.root) / task
    if not folder.is_dir():
      print(f"error: no held-out shards for task {task!r} at {folder}", file=sys.stderr)
      return 2
    anyres = {"on": True, "off": False}.get(_ANYRES.value, task in anyres_tasks)
    try:
      questions = eval_lib.questions_from_shards(str(folder), _LIMIT.value)
      print(f"evaluating {task}: {len(questions)} questions "
            f"({'anyres' if anyres else 'base crop'})", flush=True)
      results[task] = eval_lib.evaluate_task(
          params, model_cfg, questions, tokenizer, anyres,
          max_new_tokens=cfg.eval.get("max_new_tokens", 8),
          batch_size=_BATCH.value or cfg.eval.get("batch_size", 64), system=system,
          progress=lambda n, total=len(questions): print(f"  {n}/{total}", flush=True))
    except (ValueError, OSError) as e:  # no shards, not a question, an undecodable image
      print(f"error: task {task!r} ({folder}): {e}", file=sys.stderr)
      return 2
  print(_table(results))
  summary = {"checkpoint": str(_CHECKPOINT.value), "anyres": _ANYRES.value,
             "accuracy": {t: r["accuracy"] for t, r in results.items()}, "tasks": results}
  output = pathlib.Path(_OUTPUT.value or "eval.json")
  output.parent.mkdir(parents=True, exist_ok=True)
  output.write_text(json.dumps(summary, indent=1))
  brief = {k: v for k, v in summary.items() if k != "tasks"}
  brief["tasks"] = {t: {k: v for k, v in r.items() if k != "predictions"}
                    for t, r in results.items()}
  brief["output"] = str(output)
  print(json.dumps(brief))
  return 0


if __name__ == "__main__":
  logging.set_verbosity(logging.WARNING)
  cli.run(main)  # exits with main's return value
