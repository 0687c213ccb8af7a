"""tools/check_logits.py end to end: passes on the golden fixture, catches a wrong weight."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
from safetensors.numpy import load_file, save_file

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(hf_dir, golden_dir):
  cmd = [sys.executable, str(ROOT / "tools" / "check_logits.py"), f"--hf_checkpoint={hf_dir}",
         f"--golden={golden_dir}", f"--images={golden_dir.parent.parent / 'images'}"]
  proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ), timeout=600)
  return proc, proc.stdout.strip().splitlines()


def test_check_logits_passes_on_golden(golden_dir):
  proc, lines = _run(golden_dir, golden_dir)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  summary = json.loads(lines[-1])
  assert summary["ok"] is True and summary["failed"] == []
  stages = {"pixels", "input_ids", "prompt_ids", "vit_features", "resampler_inputs",
            "resampler_masks", "resampler_outputs", "hidden_last", "logits_selected",
            "logits_argmax", "token_nll", "loss", "generated"}
  assert stages <= set(summary["worst"])
  for stage in ("vit_features", "resampler_outputs", "hidden_last", "logits_selected", "loss"):
    assert summary["worst"][stage] < 1e-4


def test_check_logits_fails_on_a_perturbed_weight(golden_dir, tmp_path):
  """A small change to one LM weight must surface in hidden states and logits, exit 1."""
  bad = tmp_path / "bad"
  shutil.copytree(golden_dir, bad)
  (bad / "model.safetensors").chmod(0o644)
  tensors = load_file(bad / "model.safetensors")
  name = "vlm.lang_model.model.layers.1.mlp.down_proj.weight"
  tensors[name] = tensors[name] + np.float32(1e-2)
  save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
  proc, lines = _run(bad, golden_dir)
  assert proc.returncode == 1, proc.stdout + proc.stderr
  summary = json.loads(lines[-1])
  assert summary["ok"] is False
  assert "hidden_last" in summary["failed"] and "logits_selected" in summary["failed"]
  assert "vit_features" not in summary["failed"]  # the vision side is untouched
