"""tools/bench_train_step.py and tools/bench_generate.py: one JSON line of measurements."""
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


def _decode_weight_bytes(text) -> int:
  """float32 bytes of a Phi-3 decoder and decoupled head, from the config alone: what
  one decoded token reads (the input embedding: one row, not counted)."""
  attention = text.width * (text.num_heads + 2 * text.num_kv_heads) * text.head_dim
  attention += text.num_heads * text.head_dim * text.width  # o_proj
  layer = attention + 3 * text.width * text.mlp_dim + 2 * text.width  # + 2 norms
  head = (text.width + 1) * (text.vocab_rows + text.num_added)  # kernels and biases
  return 4 * (text.depth * layer + text.width + head)  # + the final norm


def test_bench_generate_reports_decoding_against_the_weight_read_bound():
  from bliperax.models import presets  # pylint: disable=g-import-not-at-top
  proc = subprocess.run(
      [sys.executable, "tools/bench_generate.py", "--preset=tiny", "--batch_sizes=1",
       "--new_tokens=8", "--repeats=1", "--prompt_tokens=4"],
      cwd=ROOT, capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(proc.stdout.strip().splitlines()[-1])
  assert (r["preset"], r["batch"], r["new_tokens"]) == ("tiny", 1, 8)
  # The vision tower, the resampler and the input embedding are not read per token.
  assert r["decode_weight_mb"] == round(_decode_weight_bytes(presets.get("tiny").text) / 1e6, 1)
  assert r["read_gb_per_s"] > 0
  # bound = bandwidth / bytes, fraction = rate / bound, each up to the JSON's rounding
  # (0.05 on every printed figure).
  bound = r["read_gb_per_s"] * 1e3 / r["decode_weight_mb"]
  slack = 0.05 / r["read_gb_per_s"] + 0.05 / r["decode_weight_mb"]
  assert abs(r["bound_tokens_per_s"] - bound) <= bound * slack + 0.05
  # The device-loop rate is a difference of two timed calls, None when load on the
  # host made the longer call no slower (a tiny model decodes 7 tokens in ~1 ms);
  # the fraction is None with it.
  if r["device_loop_tokens_per_s"] is None:
    assert r["fraction_of_bound"] is None
  else:
    fraction = r["device_loop_tokens_per_s"] / r["bound_tokens_per_s"]
    assert abs(r["fraction_of_bound"] - fraction) <= fraction * (
        0.05 / r["device_loop_tokens_per_s"] + 0.05 / r["bound_tokens_per_s"]) + 5e-4
