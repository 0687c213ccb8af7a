"""tools/aot_compile.py on a paper config: compile-only for a TPU topology, on this CPU host.

Needs libtpu (`pip install -e ".[tpu]"`), skipped without it, and --runslow (about 40 s
of compiling on 2 cores). The 4B config at
preset=tiny (8 rows: one per chip) on a v5e-8 slice: the same code path as the full-size tables of the
README, in seconds.
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="libtpu is not installed (pip install -e '.[tpu]')")
def test_a_paper_config_compiles_for_a_tpu_slice_with_synthetic_data_and_random_init():
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  # libtpu locks a file per host; a compile-only run touches no TPU, so another
  # one running beside it (a sweep, a second test worker) need not wait for it.
  env["ALLOW_MULTIPLE_LIBTPU_LOAD"] = "1"
  env["PYTHONPATH"] = str(ROOT)  # this checkout, installed or not (a libtpu venv may lack it)
  result = subprocess.run(
      [sys.executable, "tools/aot_compile.py",
       "--config=experiments/xgenmm_4b/sft.py:synthetic=1,init=random,preset=tiny,batch=8",
       "--topology=v5e-8"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
      check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "data synthetic, init random" in result.stdout
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out["fits"] and out["devices"] == 8 and (out["data"], out["init"]) == (
      "synthetic", "random")
