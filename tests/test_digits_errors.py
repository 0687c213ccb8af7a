"""tools/digits_errors.py: the held-out sums' digits replayed, and wrong sums sorted into
misread digits and wrong adding."""
import functools
import json
import subprocess
import sys

import numpy as np
import pytest

from bliperax.data import digits
from bliperax.data import records
from bliperax.data.image import decode_image
from digits_run import ROOT

NUM_HELDOUT = 12


@functools.lru_cache(maxsize=1)
def _tool():
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("digits_errors", ROOT / "tools" / "digits_errors.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """A small digits data folder: NUM_HELDOUT held-out sums; its held-out split and the
  replayed digits of each sum."""
  out = tmp_path_factory.mktemp("digits")
  summary = digits.write_dataset(out, num_sum=2, num_read=2, num_heldout=NUM_HELDOUT,
                                 num_shards=1, caption_copies=0, num_moved=2)
  _, held = digits.load_splits(summary["seed"])
  sums = digits.sum_digits(held, NUM_HELDOUT,
                           summary["seed"] + digits.SEED_OFFSETS["heldout/sum"])
  return out, held, sums


def test_sum_digits_replays_the_written_held_out_sums(data):
  out, held, sums = data
  chats = list(records.read_samples(str(out / "heldout" / "sum")))
  assert [c.id for c in chats] == [f"sum-{i}" for i in range(NUM_HELDOUT)]
  for chat, pick in zip(chats, sums):
    assert chat.turns[1] == str(int(held.labels[pick].sum()))
    # The images themselves, in order: the answers alone could agree by chance.
    assert len(chat.images) == len(pick)
    for encoded, j in zip(chat.images, pick):
      np.testing.assert_array_equal(np.asarray(decode_image(encoded)),
                                    np.asarray(digits.digit_image(held.images[j])))


def _evaluation(held, sums, misread: int, wrong_adding: int) -> dict:
  """An evaluate output: every held-out digit read right but `misread` (read as the next
  digit), sum 0 answered with that misreading, sum `wrong_adding` off by one, the rest
  right."""
  reads = [str(int(l)) for l in held.labels]
  reads[misread] = str((int(held.labels[misread]) + 1) % 10)
  vqa = [{"id": f"vqa-{i}", "answer": str(int(l)), "prediction": reads[i]}
         for i, l in enumerate(held.labels)]
  answers = []
  for i, pick in enumerate(sums):
    truth = int(held.labels[pick].sum())
    prediction = truth
    if i == 0:
      prediction = sum(int(reads[j]) for j in pick)
    elif i == wrong_adding:
      prediction = truth + 1
    answers.append({"id": f"sum-{i}", "answer": str(truth), "prediction": str(prediction)})
  score = lambda p: sum(x["answer"] == x["prediction"] for x in p) / len(p)
  return {"tasks": {"vqa": {"accuracy": score(vqa), "predictions": vqa},
                    "sum": {"accuracy": score(answers), "predictions": answers}}}


def test_wrong_sums_are_sorted_into_reading_and_adding(data):
  _, held, sums = data
  misread = int(sums[0][0])
  adding = next(i for i in range(1, NUM_HELDOUT) if misread not in sums[i])
  report = _tool().analyse(_evaluation(held, sums, misread, adding), "eval.json", held, sums,
                           "data")
  assert report["wrong_sums"] == {"adding": 1, "own_reading": 1, "other": 0}
  with_misread = sum(misread in s for s in sums)
  assert report["sums_all_digits_read"] == (NUM_HELDOUT - with_misread) / NUM_HELDOUT
  assert report["misread_digits"] == [{"index": misread, "label": str(held.labels[misread]),
                                       "read": str((held.labels[misread] + 1) % 10)}]
  by_digits = report["sum_by_digits"]
  assert sum(v["total"] for v in by_digits.values()) == NUM_HELDOUT
  assert sum(v["right"] for v in by_digits.values()) == NUM_HELDOUT - 2
  assert set(by_digits) <= {"2", "3"}


def test_cli_prints_a_line_per_file_and_refuses_other_data(data, tmp_path):
  out, held, sums = data
  evaluation = _evaluation(held, sums, int(sums[0][0]), 1 if int(sums[0][0]) not in sums[1]
                           else 2)
  good = tmp_path / "eval.json"
  good.write_text(json.dumps(evaluation))
  proc = subprocess.run([sys.executable, str(ROOT / "tools" / "digits_errors.py"),
                         f"--data={out}", f"--eval={good}"],
                        capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr
  lines = [json.loads(l) for l in proc.stdout.splitlines()]
  assert lines[0]["eval"] == str(good) and lines[0]["wrong_sums"]["own_reading"] == 1
  reference = lines[-1]
  assert reference["total"] == len(held.labels)
  assert reference["accuracy"] == reference["right"] / reference["total"] > 0.9
  # Answers that are not the replayed digits' sums: another data folder.
  evaluation["tasks"]["sum"]["predictions"][0]["answer"] = "99"
  bad = tmp_path / "other.json"
  bad.write_text(json.dumps(evaluation))
  proc = subprocess.run([sys.executable, str(ROOT / "tools" / "digits_errors.py"),
                         f"--data={out}", f"--eval={bad}"],
                        capture_output=True, text=True, check=False)
  assert proc.returncode != 0
  assert f"{bad}: sum-0's answer 99" in proc.stderr and "Traceback" not in proc.stderr
