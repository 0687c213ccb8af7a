r"""Where a digits model's held-out sums go wrong: a misread digit, or the adding.

  python tools/digits_errors.py --data=/tmp/digits_run/data \
      --eval=/tmp/digits_run/eval.json [--eval=/tmp/digits_run/eval_dpo.json ...]

Takes `python -m bliperax.evaluate` outputs on the digits held-out split (tasks vqa
and sum; tools/main_job.py writes eval.json, eval_dpo.json, eval_sft_control.json)
and the data folder they were scored on. Which held-out digits each sum holds is not
stored in the shards; it is replayed from digits.json's seed
(`bliperax.data.digits.sum_digits`), and every replayed sum is checked against the
evaluation's true answer, so a data folder that does not match is refused.

Prints one JSON line per --eval file:
  accuracy               vqa and sum, as evaluate scored them
  sum_by_digits          sums right, by the number of digits (2 or 3)
  sums_all_digits_read   the share of sums all of whose digits the model reads right
                         on their own (its vqa answers): what its sums would score if
                         it added perfectly, given its reading
  wrong_sums             adding: every digit read right alone, the sum still wrong;
                         own_reading: the answer is the sum of its own (wrong)
                         single-digit readings; other: a misread digit, another answer
  misread_digits         held-out digits the model reads wrong alone: index, label, read
and a last line, `reference_reader`: how many held-out digits an RBF support vector
machine on the training digits' 64 pixels (scikit-learn) reads right, what the
training images allow a reader to learn.
"""
import json
import pathlib

from absl import app, flags

from bliperax import cli

_DATA = flags.DEFINE_string("data", None, "The digits data folder (tools/make_digits.py "
                            "--output, with digits.json) the evaluations were run on.")
_EVAL = flags.DEFINE_multi_string("eval", None, "A `python -m bliperax.evaluate` output "
                                  "JSON with the vqa and sum tasks (repeatable).")
flags.mark_flags_as_required(["data", "eval"])


def _predictions(evaluation: dict, task: str, path: str) -> dict[int, tuple[str, str]]:
  """{sample index: (true answer, prediction)} of `task`'s held-out questions, compared
  as evaluate compares them (exact match, nothing stripped)."""
  if task not in evaluation.get("tasks", {}):
    raise ValueError(f"{path}: no {task!r} task (evaluate with --tasks=vqa,sum or the "
                     "digits config's default tasks)")
  out = {}
  for p in evaluation["tasks"][task]["predictions"]:
    out[int(p["id"].rsplit("-", 1)[1])] = (p["answer"], p["prediction"])
  return out


def analyse(evaluation: dict, path: str, held, sums: list, data: str) -> dict:
  """The breakdown of one evaluation (module docstring); `held` the held-out Split,
  `sums[i]` the indices of held-out sum i's digits, replayed from the folder `data`."""
  reads = _predictions(evaluation, "vqa", path)
  answers = _predictions(evaluation, "sum", path)
  misread = {i for i, (answer, read) in reads.items() if read != answer}
  by_digits, wrong = {}, {"adding": 0, "own_reading": 0, "other": 0}
  all_read = 0
  for i, (answer, prediction) in sorted(answers.items()):
    if i >= len(sums):
      raise ValueError(f"{path}: sum-{i} is not among the {len(sums)} held-out sums of "
                       f"{data}")
    digits_i = sums[i].tolist()
    if int(answer) != int(held.labels[digits_i].sum()):
      raise ValueError(f"{path}: sum-{i}'s answer {answer} is not the sum of the digits "
                       f"replayed from {data}/digits.json: another data folder?")
    missing = [j for j in digits_i if j not in reads]
    if missing:
      raise ValueError(f"{path}: no vqa answer for held-out digit(s) {missing}")
    right = prediction == answer
    count = by_digits.setdefault(str(len(digits_i)), [0, 0])
    count[0] += right
    count[1] += 1
    read_right = misread.isdisjoint(digits_i)
    all_read += read_right
    if right:
      continue
    if read_right:
      wrong["adding"] += 1
    elif all(reads[j][1].isdigit() for j in digits_i) and prediction == str(
        sum(int(reads[j][1]) for j in digits_i)):
      wrong["own_reading"] += 1
    else:
      wrong["other"] += 1
  return {
      "eval": path,
      "accuracy": {t: evaluation["tasks"][t]["accuracy"] for t in ("vqa", "sum")},
      "sum_by_digits": {n: {"right": r, "total": t, "accuracy": r / t}
                        for n, (r, t) in sorted(by_digits.items())},
      "sums_all_digits_read": all_read / len(answers),
      "wrong_sums": wrong,
      "misread_digits": [{"index": i, "label": reads[i][0], "read": reads[i][1]}
                         for i in sorted(misread)],
  }


def reference_reader(train, held) -> dict:
  """Held-out accuracy of an RBF SVM on the training digits' pixels."""
  from sklearn.svm import SVC  # pylint: disable=g-import-not-at-top
  flat = lambda s: s.images.reshape(len(s.images), -1) / 255.0
  svm = SVC(kernel="rbf", C=10.0, gamma="scale").fit(flat(train), train.labels)
  right = int((svm.predict(flat(held)) == held.labels).sum())
  return {"reference_reader": "sklearn SVC(kernel='rbf', C=10) on the training digits' "
                              "64 pixels", "right": right, "total": len(held.labels),
          "accuracy": right / len(held.labels)}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from bliperax.data import digits  # after flags: keeps --help fast
  summary_path = pathlib.Path(_DATA.value) / "digits.json"
  if not summary_path.exists():
    cli.fail(f"{summary_path}: missing; --data must be a tools/make_digits.py output folder")
  summary = json.loads(summary_path.read_text())
  train, held = digits.load_splits(summary["seed"])
  sums = digits.sum_digits(held, summary["samples"]["heldout"]["sum"],
                           summary["seed"] + digits.SEED_OFFSETS["heldout/sum"])
  for path in _EVAL.value:
    try:
      evaluation = json.loads(pathlib.Path(path).read_text())
      print(json.dumps(analyse(evaluation, path, held, sums, _DATA.value)), flush=True)
    except (OSError, ValueError, KeyError) as e:
      cli.fail(f"{path}: {e}" if path not in str(e) else str(e))
  print(json.dumps(reference_reader(train, held)))
  return 0


if __name__ == "__main__":
  cli.run(main)
