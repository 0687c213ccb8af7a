"""python -m bliperax.sweep --aot: every member's train step compiled for a TPU slice.

Needs libtpu (`pip install -e ".[tpu]"`), skipped without it, and --runslow (two
compiles of about 40 s each on 2 cores). The 4B SFT config at preset=tiny on a v5e-8
slice, as tests/test_aot_compile.py; two members that differ in batch size, so their
per-chip memory must differ.
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
def test_aot_compiles_every_member_and_tabulates_fit(tmp_path):
  config = tmp_path / "aot_sweep.py"
  config.write_text(
      "from bliperax import sweep\n"
      "def get_sweep():\n  return sweep.product({'train.global_batch': [8, 16]})\n"
      "def get_stages():\n  return [sweep.train('sft', 'experiments/xgenmm_4b/sft.py:"
      "synthetic=1,init=random,preset=tiny,batch=8')]\n")
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  env["PYTHONPATH"] = str(ROOT)
  work = tmp_path / "work"
  result = subprocess.run(
      [sys.executable, "-m", "bliperax.sweep", f"--config={config}", f"--workdir={work}",
       "--aot=v5e-8"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
      check=False)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  rows = json.loads((work / "results_aot.json").read_text())
  assert [(r["name"], r["stage"], r["devices"], r["fits"]) for r in rows] == [
      ("global_batch-8", "sft", 8, True), ("global_batch-16", "sft", 8, True)]
  small, large = (r["per_chip_bytes"]["temporaries"] for r in rows)
  assert large > small  # the override reached the compile
  table = (work / "results_aot.md").read_text().splitlines()
  assert table[0].startswith("| member | stage | global_batch | topology | mesh |")
  assert table[2].startswith("| global_batch-8 | sft | 8 | v5e-8 |") and "| yes |" in table[2]
  assert not list(work.glob("*/member.json"))  # nothing ran
