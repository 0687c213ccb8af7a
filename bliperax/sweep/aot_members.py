"""`--aot=TOPOLOGY`: every member's train stages compiled for a TPU topology, nothing run.

Each (member, train stage) is `python -m bliperax.aot --config=<stage config>
--topology=T --num_slices=N --config.<override>=...` (bliperax/aot.py, the same code
as tools/aot_compile.py) in its own process: a libtpu compile of a large model takes
minutes and gigabytes, and a process per compile gives both back when it ends.
`--parallel` compiles run at once (libtpu's per-host lock is lifted with
ALLOW_MULTIPLE_LIBTPU_LOAD: a compile-only process touches no TPU).

A stage's inputs (an SFT's init_from) are left out: a compile reads no weights.
The stage configs must load without data or weights, e.g. the paper configs with
`:synthetic=1,init=random` (the sweep config decides its stages' config args).

Writes DIR/_aot/<member>.<stage>.log (each compile's output), DIR/results_aot.json (a
row per member and stage: the compile's JSON, or its error) and DIR/results_aot.md
(per-chip memory, fit, step time at peak FLOPs, the swept values as columns).
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
from typing import Any, Dict, List, Sequence

from bliperax.sweep import files
from bliperax.sweep import plan as plan_lib
from bliperax.sweep import results as results_lib
from bliperax.sweep import runner as runner_lib
from bliperax.sweep import spec
from bliperax.sweep import stages as stages_lib

GiB = 2**30


def compile_command(stage: stages_lib.Stage, overrides: Dict[str, Any], topology: str,
                    num_slices: int) -> List[str]:
  return [sys.executable, "-m", "bliperax.aot", f"--config={stage.config}",
          f"--topology={topology}", f"--num_slices={num_slices}",
          *[f"--config.{k}={stages_lib.flag_value(v)}" for k, v in overrides.items()]]


def _compile_one(argv: List[str], log_path: str, env: Dict[str, str]) -> Dict[str, Any]:
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  with open(log_path, "w") as log:
    log.write("$ " + " ".join(argv) + "\n")
    log.flush()
    code = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                          stdin=subprocess.DEVNULL, check=False).returncode
  last = runner_lib.tail(log_path, 1).strip()
  if code == 0:
    try:
      return json.loads(last)
    except json.JSONDecodeError:
      pass
  return {"error": f"exit {code}: " + runner_lib.tail(log_path, 3).replace("\n", " | ")}


def run(plan: plan_lib.Plan, members: Sequence[plan_lib.MemberPlan], workdir: str,
        topology: str, num_slices: int = 1, parallel: int = 1, log=print) -> List[Dict]:
  """Compiles every member's train stages; writes and returns the rows."""
  env = dict(os.environ, ALLOW_MULTIPLE_LIBTPU_LOAD="1",
             PYTHONPATH=runner_lib.child_pythonpath())
  jobs = []
  for member in members:
    for stage in plan.stages:
      if stage.kind == "train":
        argv = compile_command(stage, member.stage_overrides[stage.name], topology,
                               num_slices)
        log_path = os.path.join(workdir, "_aot", f"{member.name}.{stage.name}.log")
        jobs.append((member, stage, argv, log_path))
  rows = []
  with concurrent.futures.ThreadPoolExecutor(max(1, parallel)) as pool:
    futures = [pool.submit(_compile_one, argv, path, env) for _, _, argv, path in jobs]
    for (member, stage, _, path), future in zip(jobs, futures):
      result = future.result()
      row = {"name": member.name, "stage": stage.name,
             "overrides": spec.plain(member.overrides), **result}
      rows.append(row)
      log(f"{member.name} {stage.name}: " + (
          f"error ({path}): {result['error']}" if "error" in result else
          f"{result['per_chip_bytes']['total'] / GiB:.2f} GiB of "
          f"{result['per_chip_bytes']['hbm'] / GiB:.0f} per chip, "
          f"{'fits' if result['fits'] else 'DOES NOT FIT'}"))
  files.write_json(os.path.join(workdir, "results_aot.json"), rows)
  files.write_text(os.path.join(workdir, "results_aot.md"), markdown(rows))
  return rows


def markdown(rows: Sequence[Dict[str, Any]]) -> str:
  keys = results_lib.swept_keys(rows)
  short = spec.short_keys(keys)
  header = (["member", "stage"] + [short[k] for k in keys]
            + ["topology", "mesh", "per-chip GiB", "HBM GiB", "fits", "step s at peak",
               "compile s"])
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    cells = [row["name"], row["stage"]] + [
        results_lib.cell(row["overrides"][k]) if k in row["overrides"] else "" for k in keys]
    if "error" in row:
      cells += [f"error: {row['error'][:80]}"] + [""] * 6
    else:
      mem = row["per_chip_bytes"]
      topo = row["topology"] + (f" x{row['num_slices']}" if row["num_slices"] > 1 else "")
      mesh = " ".join(f"{k}={v}" for k, v in row["mesh"].items() if v != 1) or "1"
      step = row.get("step_seconds_at_peak")
      cells += [topo, mesh, f"{mem['total'] / GiB:.2f}", f"{mem['hbm'] / GiB:.0f}",
                "yes" if row["fits"] else "**no**",
                "-" if step is None else f"{step:.3g}", f"{row['compile_seconds']:.0f}"]
    lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
  return "\n".join(lines) + "\n"
