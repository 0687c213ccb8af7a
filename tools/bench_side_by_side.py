r"""Side-by-side speed of bliperax and the PyTorch reference on one workload.

  python tools/bench_side_by_side.py --reference_python=/tmp/refvenv/bin/python \
      --lavis=/tmp/lavis [--runs=3] [--bliperax_python=PATH] [--only=reference]

Runs `tools/bench_reference.py` (the PyTorch reference, in its own environment: see
that script's --help for the setup) and `tools/bench_process.py` (bliperax) one after
the other, alternating reference, bliperax, reference, bliperax, ... for --runs rounds,
so that drifting load on the machine hits both alike. Each run is a fresh process doing
the protocol of `tools/bench_workload.py`; the driver notes time.time() just before
starting it, and `whole_process_s = process_done_unix - start` covers interpreter
start, imports, build, the training steps and the first generation.

Prints one JSON line per run (the script's own line plus `run`, `whole_process_s`),
then a summary line: for each implementation the median, min and max over runs of
step_median_s, decode_tokens_per_s, time_to_first_token_s, whole_process_s, build_s,
first_step_s and first_generate_s, and the ratios of the medians (reference/bliperax
for times, bliperax/reference for decode tokens/s: above 1 means bliperax is faster).
A run that fails stops the benchmark: its stderr tail is printed and the exit is 1.

Only the standard library here: any Python can drive the two environments.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

TOOLS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TOOLS)
IMPLS = ("reference", "bliperax")
METRICS = ("step_median_s", "decode_tokens_per_s", "device_loop_tokens_per_s",
           "time_to_first_token_s", "whole_process_s", "time_to_first_step_s", "build_s",
           "first_step_s",
           "first_generate_s")
# Fields that describe the setup rather than measure it; kept from each impl's last run.
SETUP_FIELDS = ("torch_version", "transformers_version", "torch_threads", "attention",
                "jax_version", "backend", "cpus", "seq_len", "compilation_cache",
                "loss_tokens_per_row")
STDERR_TAIL = 4000


def _parse_args():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--reference_python",
                      help="python of the reference's environment (required unless "
                           "--only=bliperax)")
  parser.add_argument("--lavis", help="checkout of salesforce/LAVIS, branch xgen-mm")
  parser.add_argument("--bliperax_python", default=sys.executable,
                      help="python of bliperax's environment (default: this one)")
  parser.add_argument("--runs", type=int, default=3, help="rounds of reference + bliperax")
  parser.add_argument("--only", choices=IMPLS, help="run one implementation only")
  parser.add_argument("--reference_threads", type=int, default=0,
                      help="--threads for bench_reference.py (0: torch's default)")
  parser.add_argument("--bliperax_args", default="",
                      help="extra flags for bench_process.py, space-separated (e.g. "
                           "--loss_tokens_per_row=95)")
  parser.add_argument("--timeout_s", type=float, default=3600, help="limit per run")
  args = parser.parse_args()
  if args.only != "bliperax" and not (args.reference_python and args.lavis):
    parser.error("--reference_python and --lavis are needed to run the reference")
  if args.runs < 1:
    parser.error("--runs must be >= 1")
  return args


def commands(args) -> dict:
  """The command line of each implementation's benchmark process."""
  return {
      "reference": [args.reference_python, os.path.join(TOOLS, "bench_reference.py"),
                    f"--lavis={args.lavis}", f"--threads={args.reference_threads}"],
      "bliperax": [args.bliperax_python, os.path.join(TOOLS, "bench_process.py"),
                   *args.bliperax_args.split()],
  }


def schedule(runs: int, only) -> list:
  """(round, impl) in the order they run: alternating, reference first."""
  impls = [only] if only else list(IMPLS)
  return [(r, impl) for r in range(runs) for impl in impls]


def last_json_line(stdout: str) -> dict:
  """The last line of `stdout` that is a JSON object."""
  for line in reversed(stdout.splitlines()):
    line = line.strip()
    if line.startswith("{"):
      try:
        return json.loads(line)
      except json.JSONDecodeError:
        continue
  raise ValueError("no JSON line in the output")


class RunFailed(Exception):
  pass


def run_once(impl: str, cmd: list, timeout_s: float) -> dict:
  """Runs one benchmark process; its JSON line plus whole_process_s."""
  start = time.time()  # the whole process is measured from here
  try:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s,
                          check=False)
  except subprocess.TimeoutExpired as e:
    raise RunFailed(f"{impl}: timed out after {timeout_s:.0f} s",
                    _text(e.stderr)[-STDERR_TAIL:]) from e
  if proc.returncode != 0:
    raise RunFailed(f"{impl}: exit status {proc.returncode}", proc.stderr[-STDERR_TAIL:])
  try:
    result = last_json_line(proc.stdout)
  except ValueError as e:
    raise RunFailed(f"{impl}: {e}", (proc.stdout + proc.stderr)[-STDERR_TAIL:]) from e
  result["whole_process_s"] = round(result["process_done_unix"] - start, 2)
  return result


def _text(data) -> str:
  if data is None:
    return ""
  return data.decode(errors="replace") if isinstance(data, bytes) else data


def spread(values: list) -> dict:
  return dict(median=round(statistics.median(values), 4), min=round(min(values), 4),
              max=round(max(values), 4))


def summarize(results: list) -> dict:
  """Median/min/max per impl and metric, and the ratios of the medians."""
  out = {"runs": {}}
  for impl in IMPLS:
    rows = [r for r in results if r["impl"] == impl]
    if not rows:
      continue
    out["runs"][impl] = len(rows)
    out[impl] = {m: spread([r[m] for r in rows]) for m in METRICS if m in rows[0]}
    out[impl]["setup"] = {k: rows[-1][k] for k in SETUP_FIELDS if k in rows[-1]}
  if all(impl in out for impl in IMPLS):
    med = {impl: {m: out[impl].get(m, {}).get("median") for m in METRICS} for impl in IMPLS}
    ratio = lambda a, b: round(a / b, 3) if a is not None and b else None
    out["ratios"] = {
        "step_time_reference_over_bliperax": ratio(med["reference"]["step_median_s"],
                                                   med["bliperax"]["step_median_s"]),
        "whole_process_reference_over_bliperax": ratio(med["reference"]["whole_process_s"],
                                                       med["bliperax"]["whole_process_s"]),
        "time_to_first_token_reference_over_bliperax": ratio(
            med["reference"]["time_to_first_token_s"],
            med["bliperax"]["time_to_first_token_s"]),
        "decode_tokens_per_s_bliperax_over_reference": ratio(
            med["bliperax"]["decode_tokens_per_s"], med["reference"]["decode_tokens_per_s"]),
    }
  return out


def main():
  args = _parse_args()
  cmds = commands(args)
  results = []
  for r, impl in schedule(args.runs, args.only):
    try:
      result = run_once(impl, cmds[impl], args.timeout_s)
    except RunFailed as e:
      message, tail = e.args
      print(json.dumps(dict(run=r, impl=impl, error=message)), flush=True)
      print(f"--- {message}; stderr tail:\n{tail}", file=sys.stderr, flush=True)
      if results:
        print(json.dumps(dict(summary=summarize(results), incomplete=True)), flush=True)
      sys.exit(1)
    result["run"] = r
    results.append(result)
    print(json.dumps(result), flush=True)
  print(json.dumps(dict(summary=summarize(results))), flush=True)


if __name__ == "__main__":
  main()
