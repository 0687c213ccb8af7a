"""python -m bliperax.sweep running real members (tests/sweep_tiny.py: the tiny model,
synthetic batches, a few steps each): end to end, the table and --collect, a failing
member among good ones, and a sweep killed mid-member then run again.

The members differ in `seed` only, so they compile the same train step: the module's
compilation cache (a temporary folder) compiles it once for all the runs here.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from bliperax.sweep import results
from conftest import ROOT


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  return dict(os.environ, PYTHONPATH=str(ROOT), BLIPERAX_COMPILATION_CACHE="1",
              JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")))


def _sweep(args, env, **kwargs):
  return subprocess.run([sys.executable, "-m", "bliperax.sweep", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600, check=False, **kwargs)


def _steps(metrics_path):
  return [json.loads(l)["step"] for l in open(metrics_path).read().splitlines()]


def _attempt_steps(log_text, attempt):
  """The steps a train stage printed in its `attempt`-th run (from log.txt)."""
  section = log_text.split(f"(attempt {attempt})", 1)[1].split("=== stage train exit", 1)[0]
  return [int(s) for s in re.findall(r"^step\s+(\d+) \|", section, re.M)]


@pytest.mark.slow  # the default suite's 15-minute budget on 2 cores
def test_killed_sweep_resumes_skips_finished_members_and_survives_a_failing_one(
    env, tmp_path):
  """seed-0 finishes, then the sweep (and seed-1's trainer: the host went down) is
  killed once seed-1 has a checkpoint. The rerun leaves seed-0 untouched, resumes
  seed-1 from its checkpoint, and runs `broken`, which fails without stopping it."""
  work = tmp_path / "sweep"
  args = ["--config=tests/sweep_tiny.py:steps=5,broken=1", f"--workdir={work}",
          "--progress_every=1000"]
  with open(tmp_path / "first.log", "w") as out:
    proc = subprocess.Popen([sys.executable, "-m", "bliperax.sweep", *args, "--parallel=1"],
                            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
  checkpoint = work / "seed-1" / "train" / "checkpoints" / "1"
  deadline = time.time() + 400
  while not checkpoint.is_dir() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  assert checkpoint.is_dir(), (tmp_path / "first.log").read_text()[-3000:]
  trainer = json.loads((work / "seed-1" / "member.json").read_text())["stages"]["train"]["pid"]
  proc.send_signal(signal.SIGKILL)
  os.kill(trainer, signal.SIGKILL)
  proc.wait()
  time.sleep(0.2)
  killed_at = _steps(work / "seed-1" / "train" / "metrics.jsonl")
  assert killed_at and killed_at[-1] < 5, killed_at  # killed mid-member, not after
  assert not (work / "broken").exists()
  done = work / "seed-0" / "member.json"
  assert json.loads(done.read_text())["status"] == "done"
  before = (done.read_bytes(), done.stat().st_mtime_ns,
            (work / "seed-0" / "log.txt").stat().st_mtime_ns,
            (work / "seed-0" / "train" / "metrics.jsonl").read_bytes())

  rerun = _sweep(args + ["--parallel=2"], env)
  assert rerun.returncode == 1, rerun.stdout[-3000:] + rerun.stderr[-3000:]  # broken failed
  assert "seed-0: done earlier" in rerun.stdout
  assert before == (done.read_bytes(), done.stat().st_mtime_ns,
                    (work / "seed-0" / "log.txt").stat().st_mtime_ns,
                    (work / "seed-0" / "train" / "metrics.jsonl").read_bytes())
  record = json.loads((work / "seed-1" / "member.json").read_text())
  assert record["status"] == "done" and record["stages"]["train"]["attempts"] == 2
  # Resumed, not restarted: the second attempt began after a checkpoint, and the
  # metrics hold every step once.
  log = (work / "seed-1" / "log.txt").read_text()
  second = _attempt_steps(log, 2)
  assert second and second[0] > 1 and second[-1] == 5, second
  assert _steps(work / "seed-1" / "train" / "metrics.jsonl") == [1, 2, 3, 4, 5]
  # The failing member: reported with its log's tail, failed in the table.
  assert "broken: FAILED" in rerun.stdout
  assert "not divisible by train.accum_steps = 3" in rerun.stdout
  rows = {r["name"]: r for r in map(json.loads, (work / "results.jsonl").read_text()
                                    .splitlines())}
  assert {n: r["status"] for n, r in rows.items()} == {
      "seed-0": "done", "seed-1": "done", "broken": "failed"}
  assert rows["seed-1"]["steps"] == 5 and rows["broken"]["steps"] is None
  assert "\n| broken |  | 3 | failed | - |" in (work / "results.md").read_text()


def test_two_members_end_to_end_and_collect_rebuilds_the_same_table(env, tmp_path):
  work = tmp_path / "sweep"
  t0 = time.time()
  config = "--config=tests/sweep_tiny.py:steps=3,setup=1"
  run = _sweep([config, f"--workdir={work}", "--parallel=2", "--progress_every=1000"], env)
  wall = time.time() - t0
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
  assert (work / "made.txt").read_text() == "ok"  # the setup stage, once for the sweep
  assert json.loads((work / "_setup" / "made.json").read_text())["status"] == "done"
  rows = [json.loads(l) for l in (work / "results.jsonl").read_text().splitlines()]
  assert [(r["name"], r["overrides"], r["status"], r["steps"]) for r in rows] == [
      ("seed-0", {"seed": 0}, "done", 3), ("seed-1", {"seed": 1}, "done", 3)]
  for row in rows:
    metrics = [json.loads(l) for l in
               (work / row["name"] / "train" / "metrics.jsonl").read_text().splitlines()]
    assert row["final_loss"] == metrics[-1]["loss"]
    assert 0 < row["wall_s"] < wall and row["tokens_per_s"] > 0
  assert rows[0]["final_loss"] != rows[1]["final_loss"]  # the seeds did differ
  table = (work / "results.md").read_text()
  assert table.splitlines()[0].startswith("| member | seed | status | final_loss | steps |")
  assert table in run.stdout  # the final summary
  if results.plots_available():
    assert (work / "plots" / "loss.png").exists()
    assert (work / "plots" / "final_loss_vs_seed.png").exists()

  written = {n: (work / n).read_bytes() for n in ("results.md", "results.csv",
                                                   "results.jsonl")}
  for name in written:
    (work / name).unlink()
  collect = _sweep(["--collect", f"--workdir={work}"], env)
  assert collect.returncode == 0, collect.stderr
  assert {n: (work / n).read_bytes() for n in written} == written

  (work / "made.txt").unlink()
  again = _sweep([config, f"--workdir={work}", "--progress_every=1000"], env)
  assert again.returncode == 0 and again.stdout.count("done earlier") == 3, again.stdout
  assert "setup made: done earlier" in again.stdout and not (work / "made.txt").exists()
