r"""Run an ablation sweep: every member's stages, then the result table and plots.

  python -m bliperax.sweep --config=SWEEP.py[:arg] --workdir=DIR [--parallel=N]
      [--only=NAME,...] [--dry_run]
  python -m bliperax.sweep --collect --workdir=DIR            # DIR may be gs://...
  python -m bliperax.sweep --config=SWEEP.py --workdir=DIR --aot=v5e-256 [--num_slices=N]
  python -m bliperax.sweep --config=SWEEP.py --workdir=gs://B/P --launch=xpk \
      --tpu=v5e-256 --cluster=C [--stage=pretrain] [--dry_run]

SWEEP.py defines get_sweep() (the members: override dicts on config dot paths) and
get_stages() (train / export / evaluate stages every member runs); see
bliperax/sweep/__init__.py. Everything is checked before anything runs: every stage
config loads, every override path exists in a stage it targets, with a value of its
field's type.

Each member runs in DIR/<member>/ (stage outputs, log.txt, member.json); `--parallel`
members at once, each pinned to its share of the cores. Running the same command
again skips finished members and resumes interrupted ones (a train stage continues
from its checkpoint). A failing member is reported with its log's last lines; the
others go on; the exit status is 1 if any failed. At the end: DIR/results.jsonl,
results.md, results.csv, plots/*.png (what --collect rebuilds from DIR alone).

--dry_run lists the members, what differs in their resolved configs and every stage
command, and runs nothing. --aot compiles every member's train stages for a TPU
topology (libtpu, no TPU) and writes DIR/results_aot.md/.json. --launch starts one
cluster workload per member for one train stage (bliperax.launch: xpk or gcloud),
into DIR/<member>/<stage> (DIR a gs:// bucket); --collect then tabulates them.
"""
from __future__ import annotations

import os
import shlex
import sys

from absl import app, flags

from bliperax import cli

_CONFIG = flags.DEFINE_string("config", None, "Sweep config file, FILE.py[:arg] (arg goes "
                              "to its get_sweep/get_stages).")
_WORKDIR = flags.DEFINE_string("workdir", None, "The sweep's folder: a folder per member, "
                               "the result table and plots.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Members run at once (--aot: compiles at "
                                 "once).", lower_bound=1)
_ONLY = flags.DEFINE_list("only", [], "Run only these members (names as --dry_run lists).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "List members, differences and commands; "
                             "run nothing (--launch: print the cluster commands).")
_COLLECT = flags.DEFINE_bool("collect", False, "Rebuild results.* and plots from "
                             "--workdir alone (no --config needed; gs:// works).")
_AOT = flags.DEFINE_string("aot", None, "Compile every member's train stages for this TPU "
                           "topology (v5e-256, v5p-128, ...) instead of running them.")
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "--aot / --launch: TPU slices over DCN.",
                                   lower_bound=1)
_PIN = flags.DEFINE_bool("pin_cores", True, "With --parallel=N: pin each member's stages "
                         "to its own 1/N of the cores.")
_PROGRESS_EVERY = flags.DEFINE_float("progress_every", 30.0, "Not on a terminal: seconds "
                                     "between a member's progress lines.", lower_bound=0)
_LAUNCH = flags.DEFINE_enum("launch", None, ["xpk", "gcloud"], "Launch one cluster workload "
                            "per member (bliperax.launch) instead of running here.")
_STAGE = flags.DEFINE_string("stage", None, "--launch: the train stage to launch (default: "
                             "the sweep's only train stage).")
_TPU = flags.DEFINE_string("tpu", "", "--launch: TPU slice type, e.g. v5e-256.")
_GPU = flags.DEFINE_string("gpu", "", "--launch: xpk GPU device type, e.g. h100-80gb-8.")
_NODES = flags.DEFINE_integer("nodes", 1, "--launch: GPU nodes.", lower_bound=1)
_IMAGE = flags.DEFINE_string("image", "", "--launch=xpk: container or base image.")
_CLUSTER = flags.DEFINE_string("cluster", "", "--launch=xpk: the GKE cluster.")
_PROJECT = flags.DEFINE_string("project", "", "--launch: Google Cloud project.")
_ZONE = flags.DEFINE_string("zone", "", "--launch: Google Cloud zone.")
_NAME = flags.DEFINE_string("name", "", "--launch=gcloud: the existing TPU VM (members run "
                            "on it one after another).")
flags.mark_flags_as_required(["workdir"])

INTERRUPTED = 130


def _collect(workdir: str) -> int:
  from bliperax.sweep import results  # pylint: disable=g-import-not-at-top
  rows, curves = results.collect(workdir)
  if not rows:
    cli.fail(f"--collect: no members in {workdir} (no sweep.json, no */member.json)")
  written = results.write(workdir, rows, curves)
  print(results.markdown(rows), end="")
  print(f"wrote {len(written)} files under {workdir}")
  return 0


def _dry_run(plan, members, workdir: str) -> int:
  from bliperax.sweep import plan as plan_lib  # pylint: disable=g-import-not-at-top
  from bliperax.sweep import stages as stages_lib  # pylint: disable=g-import-not-at-top
  print(f"sweep {plan.config}: {len(members)} member(s); stages: "
        + ", ".join(f"{s.name} ({s.kind})" for s in plan.stages))
  diff = plan_lib.differences(plan, members)
  print("\nwhat differs in the resolved configs"
        + (" (against the config files)" if len(members) == 1 else "") + ":")
  header = ["member"] + list(diff)
  print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
  for i, m in enumerate(members):
    print("| " + " | ".join([m.name] + [str(v[i]) for v in diff.values()]) + " |")
  print("\ncommands (nothing runs with --dry_run):")
  for stage in plan.setup:
    print(f"[setup, once] {stage.name}: {shlex.join(stages_lib.command(stage, {}))}")
  for m in members:
    print(f"[{m.name}]")
    directory = os.path.join(os.path.abspath(workdir), m.name)
    for stage, template in zip(plan.stages, m.commands):
      print(f"  {stage.name}: {shlex.join(stages_lib.fill(template, directory))}")
  return 0


def _aot(plan, members, workdir: str) -> int:
  from bliperax.sweep import aot_members  # pylint: disable=g-import-not-at-top
  rows = aot_members.run(plan, members, workdir, _AOT.value, _NUM_SLICES.value,
                         _PARALLEL.value, log=lambda s: print(s, flush=True))
  print(aot_members.markdown(rows), end="")
  print(f"wrote {os.path.join(workdir, 'results_aot.md')} and results_aot.json")
  return 1 if any("error" in r for r in rows) else 0


def _launch(plan, members, workdir: str) -> int:
  # pylint: disable=g-import-not-at-top
  from bliperax import launch
  from bliperax.sweep import launching
  target = launch.Target(via=_LAUNCH.value, tpu=_TPU.value, gpu=_GPU.value,
                         nodes=_NODES.value, num_slices=_NUM_SLICES.value,
                         image=_IMAGE.value, cluster=_CLUSTER.value,
                         project=_PROJECT.value, zone=_ZONE.value)
  try:
    failed = launching.launch_all(plan, members, workdir, target, stage_name=_STAGE.value,
                                  vm_name=_NAME.value, dry_run=_DRY_RUN.value,
                                  log=lambda s: print(s, flush=True))
  except (launching.SweepError, launch.LaunchError) as e:
    cli.fail(f"--launch: {e}")
  if failed:
    print(f"launch failed for: {', '.join(failed)}", file=sys.stderr)
    return 1
  return 0


def _run(plan, members, workdir: str) -> int:
  # pylint: disable=g-import-not-at-top
  from bliperax.sweep import results
  from bliperax.sweep import runner as runner_lib
  print(f"sweep {plan.config}: {len(members)} member(s) in {workdir}, {_PARALLEL.value} at "
        f"a time; stages: {', '.join(s.name for s in plan.stages)}", flush=True)
  results.merge_sweep_record(workdir, results.sweep_record(plan, members))
  runner = runner_lib.Runner(plan, members, workdir, parallel=_PARALLEL.value,
                             pin_cores=_PIN.value, progress_every=_PROGRESS_EVERY.value)
  statuses = runner.run()
  if runner.setup_failed:
    print(f"setup stage {runner.setup_failed!r} failed: no member ran", file=sys.stderr)
    return INTERRUPTED if runner.stopping.is_set() else 1
  rows, curves = results.collect(workdir)
  results.write(workdir, rows, curves)
  print("\n" + results.markdown(rows), end="")
  failed = [n for n, s in statuses.items() if s == "failed"]
  for name in failed:
    print(f"FAILED: {name}: see {os.path.join(workdir, name, runner_lib.LOG_FILE)}"
          + (f" ({runner.errors[name]})" if name in runner.errors else ""))
  print(f"results: {os.path.join(workdir, 'results.md')} (.csv, .jsonl, plots/)")
  if runner.stopping.is_set():
    return INTERRUPTED
  return 1 if failed else 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from bliperax.sweep import files  # pylint: disable=g-import-not-at-top
  from bliperax.sweep import plan as plan_lib  # pylint: disable=g-import-not-at-top
  workdir = _WORKDIR.value
  modes = [n for n, on in (("--collect", _COLLECT.value), ("--aot", _AOT.value),
                           ("--launch", _LAUNCH.value)) if on]
  if len(modes) > 1:
    cli.fail(f"{' and '.join(modes)} do not go together: one at a time")
  if _COLLECT.value:
    return _collect(workdir)
  if not _CONFIG.value:
    cli.fail("give --config=SWEEP.py[:arg] (or --collect to tabulate --workdir)")
  if files.is_remote(workdir) and not _LAUNCH.value:
    cli.fail(f"--workdir={workdir}: members run here write to a local folder; a bucket "
             "workdir is for --launch (and --collect)")
  if not files.is_remote(workdir):
    workdir = os.path.abspath(workdir)
  try:
    plan = plan_lib.make_plan(_CONFIG.value, workdir)
    members = plan_lib.select(plan, _ONLY.value)
  except plan_lib.SweepError as e:
    cli.fail(str(e))
  if _LAUNCH.value:
    return _launch(plan, members, workdir)
  if _AOT.value:
    return _aot(plan, members, workdir)
  if _DRY_RUN.value:
    return _dry_run(plan, members, workdir)
  return _run(plan, members, workdir)


if __name__ == "__main__":
  cli.run(lambda argv: sys.exit(main(argv)))
