"""tools/bench_train_step.py: one JSON line with the step's time, CPU and page-fault costs."""
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow  # the default suite's 15-minute budget on 2 cores
def test_bench_train_step_prints_its_measurements_as_json():
  proc = subprocess.run(
      [sys.executable, "tools/bench_train_step.py", "--config=experiments/tiny.py:batch=2",
       "--steps=2", "--config.train.seq_len=32"],
      cwd=ROOT, capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["preset"] == "tiny"
  assert (result["data"], result["init"]) == ("synthetic", "random")
  assert (result["global_batch"], result["seq_len"], result["steps"]) == (2, 32, 2)
  assert result["ms_per_step"] > 0 and result["compile_s"] > 0
  assert result["user_ms_per_step"] >= 0 and result["sys_ms_per_step"] >= 0
  assert result["minor_faults_per_step"] >= 0
  assert result["temp_bytes"] > 0  # the compiled step has temporaries (XLA's own count)
  assert result["backend"] == "cpu"


def test_bench_train_step_rejects_zero_steps():
  proc = subprocess.run(
      [sys.executable, "tools/bench_train_step.py", "--config=experiments/tiny.py",
       "--steps=0"], cwd=ROOT, capture_output=True, text=True, check=False)
  assert proc.returncode != 0
  assert "--steps must be at least 1" in proc.stderr
