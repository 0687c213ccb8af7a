"""Entry points: bad command lines get one clear line on stderr, a non-zero exit, and
leave nothing behind; what every entry point sets up before jax loads (CPU pinning,
host memory kept mapped, the compilation cache).

Each command-line case runs the real entry point in a subprocess, as a user would.
None of them gets as far as compiling anything, so the whole file takes seconds.
"""
import glob
import os
import subprocess
import sys

import pytest

from bliperax import cli as cli_lib
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
    ("--config.data.kind=webdataset", "data.kind = 'webdataset': must be one of"),
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
  spaced = _run("-m", "bliperax.train", "--config", "experiments/tiny.py",
                f"--workdir={workdir}", "--config.train.seq_lenn=8")
  assert "nearest valid keys: config.train.seq_len" in _one_error_line(spaced)
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


def test_jax_is_pinned_to_cpu_only_where_no_accelerator_exists(tmp_path):
  device = tmp_path / "accel0"
  env = {}
  cli_lib.pin_cpu_where_no_accelerator(env, patterns=(str(tmp_path / "accel*"),))
  assert env == {"JAX_PLATFORMS": "cpu"}  # nothing there: the platform is the CPU
  device.touch()
  env = {}
  cli_lib.pin_cpu_where_no_accelerator(env, patterns=(str(tmp_path / "accel*"),))
  assert env == {}  # an accelerator: let JAX find it
  env = {"JAX_PLATFORMS": "tpu"}
  cli_lib.pin_cpu_where_no_accelerator(env, patterns=())
  assert env == {"JAX_PLATFORMS": "tpu"}  # the user's choice wins


_PROBE = ("import logging; logging.basicConfig(level=logging.INFO); "
          "from bliperax import cli; import jax; print(jax.devices())")


def test_entry_points_do_not_probe_other_backends():
  """What the CLIs import first keeps JAX from initialising backends it cannot use.

  On a CPU host JAX's probe of the TPU plugin logs "Unable to initialize backend
  'tpu'" (and, with libtpu installed, libtpu prints its host-bounds warnings). The
  same probe with JAX_PLATFORMS set to empty (the user's "probe everything") shows
  that the check can fail.
  """
  if any(glob.glob(p) for p in cli_lib.ACCELERATOR_DEVICES):
    pytest.skip("this host has an accelerator: JAX must probe")
  env = {k: v for k, v in _ENV.items() if k != "JAX_PLATFORMS"}
  quiet = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120, check=False)
  assert quiet.returncode == 0 and "CpuDevice" in quiet.stdout, quiet.stderr[-2000:]
  assert "Unable to initialize backend" not in quiet.stderr, quiet.stderr[-2000:]
  probing = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT,
                           env={**env, "JAX_PLATFORMS": ""}, capture_output=True, text=True,
                           timeout=120, check=False)
  assert "Unable to initialize backend" in probing.stderr, probing.stderr[-2000:]


_FAULTS = """
import resource, sys
import numpy as np
{setup}
def faults():
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
np.ones(1 << 26, np.float32)  # 256 MB, allocated and freed
before = faults()
for _ in range(4):
  np.ones(1 << 26, np.float32)
print((faults() - before) / 4)
"""


def test_entry_points_keep_freed_memory_mapped():
  """Importing bliperax.cli keeps a freed 256 MB block mapped: no page faults on reuse.

  glibc unmaps a block that large on free, so each new one faults in again: at least
  128 faults even with 2 MB transparent huge pages (65,536 with 4 KB pages). XLA's
  CPU temporaries of every step are such blocks.
  """
  def faults_per_block(setup, **env):
    run_env = {k: v for k, v in _ENV.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", _FAULTS.format(setup=setup)], cwd=ROOT,
                         env={**run_env, **env}, capture_output=True, text=True,
                         timeout=120, check=True)
    return float(out.stdout.strip().splitlines()[-1])
  kept = faults_per_block("from bliperax import cli")
  default = faults_per_block("")
  opted_out = faults_per_block("from bliperax import cli", BLIPERAX_SYSTEM_MALLOC="1")
  assert kept < 16, kept
  assert default >= 128 and opted_out >= 128, (default, opted_out)


def test_compilation_cache_defaults_to_the_user_cache_and_can_be_turned_off(tmp_path):
  env = {"XDG_CACHE_HOME": str(tmp_path)}
  assert cli_lib.use_compilation_cache(env) == str(tmp_path / "bliperax" / "jax")
  assert env["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "bliperax" / "jax")
  assert float(env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]) == cli_lib.MIN_CACHED_COMPILE_S
  mine = {"JAX_COMPILATION_CACHE_DIR": "gs://bucket/cache", "XDG_CACHE_HOME": str(tmp_path)}
  assert cli_lib.use_compilation_cache(mine) == "gs://bucket/cache"  # the user's wins
  theirs = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "5"}
  cli_lib.use_compilation_cache(theirs)
  assert theirs["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "5"  # and their threshold
  off = {"BLIPERAX_COMPILATION_CACHE": "0"}
  assert cli_lib.use_compilation_cache(off) is None and "JAX_COMPILATION_CACHE_DIR" not in off
