"""Bad command lines get one clear line on stderr, a non-zero exit, and leave nothing behind.

Each case runs the real entry point in a subprocess, as a user would. None of them
gets as far as compiling anything, so the whole file takes seconds per case.
"""
import os
import subprocess
import sys

import pytest

from conftest import ROOT

_ENV = dict(os.environ, JAX_PLATFORMS="cpu")


def _run(*args, timeout=120):
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=_ENV, capture_output=True,
                        text=True, timeout=timeout, check=False)


def _one_error_line(result) -> str:
  assert result.returncode != 0, result.stdout[-2000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, result.stderr[-3000:]
  return lines[0]


def _train(workdir, *overrides):
  return _run("-m", "bliperax.train", "--config=experiments/tiny.py", f"--workdir={workdir}",
              *overrides)


@pytest.mark.parametrize("override,expected", [
    ("--config.total_steps=-5", "total_steps = -5: must be at least 1"),
    ("--config.train.global_batch=0", "train.global_batch = 0: must be at least 1"),
    ("--config.train.accum_steps=3", "not divisible by train.accum_steps = 3"),
])
def test_train_refuses_bad_values_and_creates_nothing(tmp_path, override, expected):
  workdir = tmp_path / "run"
  line = _one_error_line(_train(workdir, override))
  assert expected in line, line
  assert not workdir.exists()


def test_unknown_config_key_names_the_nearest_valid_ones(tmp_path):
  workdir = tmp_path / "run"
  line = _one_error_line(_train(workdir, "--config.train.seq_lenn=8"))
  assert "unknown config key --config.train.seq_lenn" in line
  assert "config.train.seq_len" in line
  line = _one_error_line(_train(workdir, "--config.train.nope=1"))
  assert "--config.train.nope" in line and "config.train." in line  # its siblings
  assert not workdir.exists()


def test_config_value_of_the_wrong_type_and_a_missing_config_file(tmp_path):
  line = _one_error_line(_train(tmp_path / "run", "--config.total_steps=many"))
  assert "--config.total_steps=many" in line
  missing = _run("-m", "bliperax.train", "--config=experiments/nope.py",
                 f"--workdir={tmp_path / 'run'}")
  assert "experiments/nope.py" in _one_error_line(missing)


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  line = _one_error_line(_train(blocker / "run"))
  assert "is not writable" in line and str(blocker / "run") in line
  if os.geteuid() != 0:  # root writes through permission bits
    readonly = tmp_path / "readonly"
    readonly.mkdir(mode=0o555)
    line = _one_error_line(_train(readonly / "run"))
    assert "is not writable" in line
