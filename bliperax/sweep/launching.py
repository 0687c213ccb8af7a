"""`--launch=xpk|gcloud`: one cluster workload per member, through bliperax.launch.

A launched workload runs one train stage (`python -m bliperax.train`, set up for the
slice's hosts by bliperax.launch) into `DIR/<member>/<stage>`, DIR a gs:// bucket that
every host reaches. The member's overrides for that stage become the workload's
`--config.*` flags, and the stage's inputs (an SFT's init_from) point at the same
member's earlier stage in DIR, which must be there when the workload starts: stages
are launched one `--stage` at a time. DIR/sweep.json records the members, so
`--collect --workdir=DIR` tabulates them from their metrics.jsonl files.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from bliperax.sweep import results
from bliperax.sweep.spec import SweepError


def pick_stage(plan, name: Optional[str]):
  """The train stage to launch: `name`, or the sweep's only train stage."""
  trains = [s for s in plan.stages if s.kind == "train"]
  listed = ", ".join(s.name for s in trains) or "none"
  if name:
    for stage in trains:
      if stage.name == name:
        return stage
    raise SweepError(f"--stage={name}: not a train stage of the sweep (train stages: "
                     f"{listed})")
  if len(trains) != 1:
    raise SweepError("--launch runs one train stage per member: name it with --stage "
                     f"(train stages: {listed}); its inputs must be in the workdir when "
                     "it starts")
  return trains[0]


def member_commands(plan, members: Sequence, workdir: str, target, *, stage_name=None,
                    vm_name: str = "", launch=None) -> List[Tuple[object, List[List[str]]]]:
  """[(member, its launch commands)]; raises SweepError or launch.LaunchError."""
  if launch is None:
    from bliperax import launch  # pylint: disable=g-import-not-at-top,redefined-outer-name
  stage = pick_stage(plan, stage_name)
  if stage.args:
    raise SweepError(f"--launch: stage {stage.name!r} has args {list(stage.args)}, which "
                     "a launched train command cannot carry")
  root = workdir.rstrip("/")
  out = []
  for member in members:
    overrides = dict(member.stage_overrides[stage.name])
    for flag, source in stage.inputs:
      if not flag.startswith("config."):
        raise SweepError(f"--launch: stage {stage.name!r} takes --{flag} from {source!r}; "
                         "a launched train command carries config fields only")
      overrides[flag[len("config."):]] = f"{root}/{member.name}/{source}"
    out.append((member, launch.commands(stage.config, f"{root}/{member.name}/{stage.name}",
                                        target, name=vm_name, overrides=overrides)))
  return out


def launch_all(plan, members, workdir: str, target, *, stage_name=None, vm_name="",
               dry_run: bool = False, launch=None, log=print) -> List[str]:
  """Launches (or prints) every member's workload; returns the members that failed."""
  if launch is None:
    from bliperax import launch  # pylint: disable=g-import-not-at-top,redefined-outer-name
  per_member = member_commands(plan, members, workdir, target, stage_name=stage_name,
                               vm_name=vm_name, launch=launch)
  stage = pick_stage(plan, stage_name)
  programs = {c[0] for _, cmds in per_member for c in cmds}
  from shutil import which  # pylint: disable=g-import-not-at-top
  missing = sorted(p for p in programs if which(p) is None)
  dry = dry_run or bool(missing)
  if missing and not dry_run:
    log(f"# dry run: {', '.join(missing)} not on PATH; this is what would run:")
  if not dry:  # what --collect needs to know of members that have no member.json
    results.merge_sweep_record(workdir.rstrip("/"), results.sweep_record(plan, members))
  if plan.setup:
    log(f"# not launched: setup stages {', '.join(s.name for s in plan.setup)} (run them "
        "where the workdir is: their outputs must be there before the members start)")
  failed = []
  for member, cmds in per_member:
    log(f"# {member.name}: {stage.name} -> {workdir.rstrip('/')}/{member.name}/{stage.name}")
    if launch.execute(cmds, dry_run=True if dry else None):
      failed.append(member.name)
  return failed
