r"""Per-task exact-match accuracy on held-out chats, with greedy KV-cache decoding.

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

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config with an `eval` section (e.g. "
    "experiments/digits/sft.py:root=DIR).", lock_config=False)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Training workdir, its checkpoints/ "
                                  "or a step folder, or a parameter checkpoint.")
_TASKS = flags.DEFINE_list("tasks", None, "Tasks to evaluate (default: config eval.tasks).")
_ANYRES = flags.DEFINE_enum("anyres", "config", ["config", "on", "off"],
                            "Crops: as the config's eval.anyres says, anyres for every "
                            "task, or only the squashed base crop.")
_LIMIT = flags.DEFINE_integer("limit", 0, "Questions per task (0 = all).")
_OUTPUT = flags.DEFINE_string("output", None, "Where to write the JSON results.")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Prompts per batch (0 = config).")
flags.mark_flags_as_required(["config", "checkpoint"])


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
