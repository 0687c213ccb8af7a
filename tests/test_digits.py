"""The digits main job: data, a short pre-train -> export -> SFT -> evaluate run, full run."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bliperax.data import digits
from bliperax.data import records
from digits_run import ROOT, config, short_run


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
  from bliperax.data.image import decode_image
  image = decode_image(read.images[0])
  assert image.size == (digits.DIGIT_PX * len(read.turns[1]), digits.DIGIT_PX)


def test_captions_name_the_digit_and_jitter_only_the_copies():
  run = short_run()  # one jittered copy of each training digit
  train, _ = digits.load_splits()
  captions = list(records.read_samples(str(run["data"] / "train" / "caption")))
  assert len(captions) == 2 * len(train.labels)
  by_id = {c.id: c for c in captions}
  from bliperax.data.image import decode_image
  for i in (0, 1, 2):
    label = int(train.labels[i])
    plain, jittered = by_id[f"caption-{i}"], by_id[f"caption-{i}-j1"]
    for c in (plain, jittered):
      assert digits.NAMES[label] in c.text or str(label) in c.text, c.text
    plain_px = np.asarray(decode_image(plain.image))
    np.testing.assert_array_equal(plain_px, np.asarray(digits.digit_image(train.images[i])))
    assert not np.array_equal(np.asarray(decode_image(jittered.image)), plain_px)
  # Every caption is one of the wordings, filled with its own digit's label; all are used.
  used = set()
  for c in captions:
    label = int(train.labels[int(c.id.split("-")[1])])
    wording = [t for t in digits.CAPTIONS
               if t.format(name=digits.NAMES[label], digit=label) == c.text]
    assert wording, c.text
    used.add(wording[0])
  assert used == set(digits.CAPTIONS)


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


def test_main_job_prints_a_generate_command_per_task(tmp_path):
  sys.path.insert(0, str(ROOT / "tools"))
  import main_job  # pylint: disable=g-import-not-at-top
  run = short_run()
  evaluated = config("sft", run["data"], 1).eval  # as bliperax.evaluate reports them
  tasks = {t: t in evaluated.anyres.split(",") for t in evaluated.tasks.split(",")}
  commands = main_job._example_commands(run["data"] / "heldout", tmp_path, run["sft"], tasks)
  assert len(commands) == len(digits.TASKS)
  for task, command in zip(("vqa", "sum", "read"), commands):
    sample = next(records.read_samples(str(run["data"] / "heldout" / task)))
    assert command.startswith("python -m bliperax.generate")
    assert command.count("--image=") == len(sample.images)
    assert command.endswith(f"# true answer: {sample.turns[1]}")
    assert f"--anyres={'true' if task == 'read' else 'false'}" in command
    for i, image in enumerate(sample.images):
      assert (tmp_path / f"{task}-{i}.png").read_bytes() == image


def test_main_job_stage_failure_stops_the_job(capfd):
  sys.path.insert(0, str(ROOT / "tools"))
  import main_job  # pylint: disable=g-import-not-at-top
  main_job._run("echo", [sys.executable, "-c", "print('stage ran')"])
  assert "stage ran" in capfd.readouterr().out
  with pytest.raises(SystemExit, match="env failed"):
    main_job._run("env", [sys.executable, "-c", "raise SystemExit(3)"])


@pytest.mark.slow
def test_main_job_reaches_targets(tmp_path):
  """The README's first command, end to end (about 10 minutes on 2 cores)."""
  from conftest import ORIGINAL_XLA_FLAGS  # pylint: disable=g-import-not-at-top
  # As the README runs it: XLA's full optimisation, not the tests' fast-compile flags.
  env = dict(os.environ, XLA_FLAGS=ORIGINAL_XLA_FLAGS, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "tools/main_job.py", f"--workdir={tmp_path}"],
                        cwd=ROOT, env=env, capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  acc = result["accuracy"]
  assert acc["vqa"] >= 0.95, acc
  assert acc["sum"] >= 0.90, acc
  assert acc["read"] >= 0.80, acc
  assert acc["read_base_crop"] <= acc["read"] - 0.2, acc
  # The SFT's in-training evaluators (every 200 steps, 100 held-out questions a task):
  # the sums, hardest to learn, end far above where they start.
  curve = result["in_training"]
  assert [step for step, _ in curve["sum"]] == [200, 400, 600, 800, 1000, 1200], curve
  assert curve["sum"][-1][1] >= curve["sum"][0][1] + 0.3, curve
