"""The result table from members' folders alone (--collect), on hand-written folders.

A member that ran through the runner has a member.json; a launched one has only its
metrics.jsonl and evaluation JSON, and its status follows from them. The evaluation
JSON is in bliperax.evaluate's exact-match format (`accuracy` per task beside the
per-question `tasks`).
"""
import csv
import importlib.util
import io
import json
import os
import subprocess
import sys

import pytest

from bliperax.sweep import progress
from bliperax.sweep import results
from conftest import ROOT

STAGES = [{"name": "train", "kind": "train", "metrics": []},
          {"name": "eval", "kind": "evaluate", "metrics": ["accuracy"]}]


def _metrics(path, losses, step_time=0.5):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps({"step": i + 1, "loss": loss, "step_time_s": step_time,
                                      "tokens_per_s": 100.0 / step_time}) + "\n"
                          for i, loss in enumerate(losses)) + '{"step": 9, "lo')  # cut line


def _eval(path, read, vqa):
  path.write_text(json.dumps({"checkpoint": "x", "anyres": "config",
                              "accuracy": {"read": read, "vqa": vqa},
                              "tasks": {"read": {"accuracy": read, "correct": 1, "total": 2,
                                                 "predictions": [{"id": 1}]}}}))


def _workdir(tmp_path):
  """Three members: ran (member.json), launched and finished, launched and running."""
  root = tmp_path / "sweep"
  members = [{"name": f"num_latents-{n}", "index": i,
              "overrides": {"model.resampler.num_latents": n, "data.anyres": n > 2},
              "total_steps": {"train": 3}} for i, n in enumerate((2, 4, 8))]
  root.mkdir()
  (root / "sweep.json").write_text(json.dumps({"config": "x.py", "stages": STAGES,
                                               "members": members}))
  _metrics(root / "num_latents-2/train/metrics.jsonl", [3.0, 2.0, 1.5], step_time=0.25)
  _eval(root / "num_latents-2/eval.json", 0.5, 0.75)
  (root / "num_latents-2/member.json").write_text(json.dumps({
      "name": "num_latents-2", "status": "done", "wall_s": 12.5,
      "stages": {"train": {"status": "done", "wall_s": 10.0},
                 "eval": {"status": "done", "wall_s": 2.5}}}))
  _metrics(root / "num_latents-4/train/metrics.jsonl", [3.0, 1.8, 1.2], step_time=0.5)
  _eval(root / "num_latents-4/eval.json", 0.625, 0.875)
  _metrics(root / "num_latents-8/train/metrics.jsonl", [3.1], step_time=1.0)
  return root


def test_collect_reads_status_metrics_and_training_numbers(tmp_path):
  rows, curves = results.collect(str(_workdir(tmp_path)))
  assert [r["name"] for r in rows] == ["num_latents-2", "num_latents-4", "num_latents-8"]
  assert [r["status"] for r in rows] == ["done", "done", "running"]
  first = rows[0]
  assert first["eval/accuracy/read"] == 0.5 and first["eval/accuracy/vqa"] == 0.75
  assert "eval/tasks/read/correct" not in first  # only the stage's `metrics` keys
  assert (first["final_loss"], first["steps"], first["step_time_s"],
          first["tokens_per_s"], first["wall_s"]) == (1.5, 3, 0.25, 400.0, 12.5)
  assert rows[1]["wall_s"] is None  # launched: no runner timed it
  assert rows[2]["steps"] == 1 and "eval/accuracy/read" not in rows[2]
  assert curves["num_latents-4"]["train"] == [(1, 3.0), (2, 1.8), (3, 1.2)]


def test_tables_have_the_swept_values_as_columns(tmp_path):
  rows, _ = results.collect(str(_workdir(tmp_path)))
  md = results.markdown(rows).splitlines()
  assert md[0] == ("| member | num_latents | anyres | status | eval/accuracy/read | "
                   "eval/accuracy/vqa | final_loss | steps | step_time_s | tokens_per_s | "
                   "wall_s |")
  assert md[2] == "| num_latents-2 | 2 | false | done | 0.5 | 0.75 | 1.5 | 3 | 0.25 | 400 | 12.5 |"
  assert md[4].startswith("| num_latents-8 | 8 | true | running | - | - | 3.1 | 1 |")
  table = list(csv.DictReader(io.StringIO(results.to_csv(rows))))
  assert table[1]["model.resampler.num_latents"] == "4" and table[1]["data.anyres"] == "true"
  assert float(table[1]["eval/accuracy/read"]) == 0.625 and table[2]["status"] == "running"
  lines = [json.loads(l) for l in open(*[results.write(
      str(tmp_path / "sweep"), rows, {})[0]]).read().splitlines()]
  assert lines[0]["overrides"] == {"model.resampler.num_latents": 2, "data.anyres": False}


def test_collect_command_writes_table_and_plots(tmp_path):
  pytest.importorskip("matplotlib")
  root = _workdir(tmp_path)
  result = subprocess.run([sys.executable, "-m", "bliperax.sweep", "--collect",
                           f"--workdir={root}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False, env=dict(os.environ, PYTHONPATH=str(ROOT)))
  assert result.returncode == 0, result.stderr
  assert "| num_latents-4 | 4 | true | done | 0.625 |" in result.stdout
  plots = sorted(p.name for p in (root / "plots").iterdir())
  assert plots == sorted(["loss.png"] + [f"{m}_vs_{k}.png" for m in (
      "eval-accuracy-read", "eval-accuracy-vqa", "final_loss") for k in ("num_latents",
                                                                         "anyres")])
  assert all((root / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
  assert (root / "results.md").read_text() == results.markdown(results.collect(str(root))[0])


def test_collect_reads_a_bucket_workdir(tmp_path, monkeypatch):
  """gs:// through etils.epath (gcsfs), against a local GCS emulator."""
  gcs = pytest.importorskip("gcs_emulator")
  if not gcs.available():
    pytest.skip("gcp-storage-emulator is not installed")
  from etils import epath  # pylint: disable=g-import-not-at-top
  root = _workdir(tmp_path)
  with gcs.running() as env:
    for name, value in env.items():
      monkeypatch.setenv(name, value)
    url = f"gs://{gcs.BUCKET}/sweep"
    gcs.upload(root, url)
    result = subprocess.run([sys.executable, "-m", "bliperax.sweep", "--collect",
                             f"--workdir={url}"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, check=False,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stderr[-2000:]
    local = results.markdown(results.collect(str(root))[0])
    assert local in result.stdout  # the same table as from the local copy
    assert epath.Path(f"{url}/results.md").read_text() == local
    assert epath.Path(f"{url}/plots/loss.png").exists() or (
        importlib.util.find_spec("matplotlib") is None)


def test_progress_line_reads_step_loss_and_eta_from_metrics(tmp_path):
  metrics = tmp_path / "metrics.jsonl"
  metrics.write_text(json.dumps({"step": 30, "loss": 1.23456, "step_time_s": 0.5}) + "\n"
                     + '{"step": 31, "lo')  # a line being written
  state = progress.MemberState("m", status="running", stage="sft", stage_index=2, stages=4,
                               stage_kind="train", stage_started=0.0,
                               metrics_path=str(metrics), total_steps=150)
  assert progress.line(state, now=100.0) == (
      "m: stage 3/4 sft  step 30/150  loss 1.235  ETA 1m00s")
  state.metrics_path = str(tmp_path / "none.jsonl")
  assert progress.line(state, now=12.0) == "m: stage 3/4 sft  starting (12 s)"
  assert progress.duration(3725) == "1h02m" and progress.duration(125) == "2m05s"
