"""The digits main job: data, a short pre-train -> export -> SFT -> evaluate run, full run."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from bliperax.data import digits
from bliperax.data import records
from digits_run import ROOT, short_run


def test_splits_are_disjoint_and_fixed():
  train, held = digits.load_splits()
  assert len(train.labels) + len(held.labels) == 1797
  again, _ = digits.load_splits()
  np.testing.assert_array_equal(train.images, again.images)
  # No held-out image appears in the training split.
  train_keys = {im.tobytes() for im in train.images}
  overlap = sum(im.tobytes() in train_keys for im in held.images)
  assert overlap <= 2  # sklearn's digits hold a couple of exact duplicates


def test_shards_hold_every_task():
  run = short_run()
  for split, tasks in (("train", ("caption",) + digits.TASKS), ("heldout", digits.TASKS)):
    for task in tasks:
      samples = list(records.read_samples(str(run["data"] / split / task)))
      assert samples, (split, task)
  read = next(records.read_samples(str(run["data"] / "heldout" / "read")))
  assert read.turns[0] == "<image>\nRead the number."
  assert read.turns[1].isdigit() and len(read.turns[1]) in (3, 4)
  from bliperax.data.pipeline import decode_image
  image = decode_image(read.images[0])
  assert image.size == (digits.DIGIT_PX * len(read.turns[1]), digits.DIGIT_PX)


def test_reading_gets_one_crop_per_digit():
  from bliperax.data import batch as batch_lib
  from bliperax.models import presets
  cfg = presets.get("digits")
  train, _ = digits.load_splits()
  for n in (3, 4):
    image = digits.row_image(train.images[:n])
    vision = batch_lib.prepare_image(image, cfg, anyres=True)
    assert vision.crops.shape[0] == 1 + n  # the global crop, then one per digit
    base = batch_lib.prepare_image(image, cfg, anyres=False)
    assert base.crops.shape[0] == 1


def test_short_pipeline_evaluation_json(tmp_path):
  run = short_run()
  out = tmp_path / "eval.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "bliperax.evaluate",
       f"--config=experiments/digits/sft.py:root={run['data']}",
       f"--checkpoint={run['sft']}", "--limit=4", "--batch_size=4", f"--output={out}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  last = json.loads(proc.stdout.strip().splitlines()[-1])
  assert set(last["accuracy"]) == set(digits.TASKS)
  full = json.loads(out.read_text())
  for task in digits.TASKS:
    r = full["tasks"][task]
    assert r["total"] == 4 and 0 <= r["correct"] <= 4
    assert r["accuracy"] == pytest.approx(r["correct"] / 4)
    assert r["anyres"] == (task == "read")
    assert all(set(p) == {"id", "answer", "prediction"} for p in r["predictions"])
  assert "task" in proc.stdout and "accuracy" in proc.stdout  # the table


@pytest.mark.slow
def test_main_job_reaches_targets(tmp_path):
  """The README's first command, end to end (about 10 minutes on 2 cores)."""
  proc = subprocess.run([sys.executable, "tools/main_job.py", f"--workdir={tmp_path}"],
                        cwd=ROOT, capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  acc = result["accuracy"]
  assert acc["vqa"] >= 0.95, acc
  assert acc["sum"] >= 0.90, acc
  assert acc["read"] >= 0.80, acc
  assert acc["read_base_crop"] <= acc["read"] - 0.2, acc
