"""A sweep config file -> the plan: every member's name, overrides, resolved stage
configs and stage commands, checked before anything runs.

Overrides (bliperax/sweep/spec.py) reach stages so:
- `"a.b"` applies to every train and evaluate stage whose config has the dot path
  `a.b` (the pre-training and fine-tuning configs both have `model.resampler...`;
  only the fine-tuning config may have `eval.limit`);
- `"sft:a.b"` applies to the stage named `sft` only, which must have it.
Every stage config is loaded once (as the entry points load `--config=file.py:arg`)
and each member's overrides are applied to a copy of it, so an unknown path, a path
that names a whole section, or a value of the wrong type for its field fails here,
naming the member and the path, instead of one member's stage failing hours in.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib.util
import inspect
import os
from typing import Any, Dict, List, Optional, Sequence

from bliperax import cli
from bliperax.sweep import spec
from bliperax.sweep import stages as stages_lib

SweepError = spec.SweepError


@dataclasses.dataclass
class MemberPlan:
  """What one member runs. `commands[i]` is stage i's argv template (stages.MEMBER
  for the member's folder); `configs[name]` the resolved config of a stage that has one."""
  index: int
  name: str
  overrides: Dict[str, Any]
  commands: List[List[str]]
  configs: Dict[str, Any]
  stage_overrides: Dict[str, Dict[str, Any]]


@dataclasses.dataclass
class Plan:
  config: str  # the sweep config, file[:arg]
  stages: List[stages_lib.Stage]  # what every member runs
  members: List[MemberPlan]
  setup: List[stages_lib.Stage] = dataclasses.field(default_factory=list)  # run once

  def total_steps(self, member: MemberPlan, stage: stages_lib.Stage) -> Optional[int]:
    cfg = member.configs.get(stage.name)
    return int(cfg.total_steps) if cfg is not None and "total_steps" in cfg else None


def load_module(path: str):
  """Imports a sweep config file by path (its folder need not be a package)."""
  if not os.path.isfile(path):
    raise SweepError(f"sweep config {path} does not exist")
  module_spec = importlib.util.spec_from_file_location(
      "_bliperax_sweep_" + os.path.basename(path).removesuffix(".py"), path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def _call(fn, arg: str):
  """fn(arg) when the config spec had `:arg`; else fn(), or fn(None) if it needs one
  (as config_flags calls get_config)."""
  if arg:
    return fn(arg)
  required = [p for p in inspect.signature(fn).parameters.values()
              if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY,
                                                     p.POSITIONAL_OR_KEYWORD)]
  return fn(None) if required else fn()


def read_sweep(config: str):
  """`file.py[:arg]` -> (members, stages) as the file defines them."""
  path, _, arg = config.partition(":")
  module = load_module(path)
  members = spec.normalize(_call(module.get_sweep, arg)) if hasattr(module, "get_sweep") \
      else [{}]
  if hasattr(module, "get_stages"):
    stages = list(_call(module.get_stages, arg))
  elif hasattr(module, "STAGES"):
    stages = list(module.STAGES)
  else:
    raise SweepError(f"sweep config {path} defines neither get_stages() nor STAGES")
  try:
    stages_lib.check(stages)
  except ValueError as e:
    raise SweepError(f"sweep config {path}: {e}") from None
  return members, stages


_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _absolute_config(spec_: str) -> str:
  """A stage's `file.py[:arg]` with the file made absolute (subprocesses may run
  elsewhere): relative to the current folder, else to the checkout bliperax is in
  (so `experiments/...` works from any folder)."""
  path, sep, arg = spec_.partition(":")
  if not os.path.isabs(path) and not os.path.exists(path) and os.path.exists(
      os.path.join(_REPO, path)):
    path = os.path.join(_REPO, path)
  return os.path.abspath(path) + sep + arg


def _has_field(cfg, path: str) -> bool:
  node = cfg
  for part in path.split("."):
    if not hasattr(node, "keys") or part not in node:
      return False
    node = node[part]
  return True


def _is_section(cfg, path: str) -> bool:
  node = cfg
  for part in path.split("."):
    node = node[part]
  return hasattr(node, "keys")


def _set_field(cfg, path: str, value: Any) -> None:
  *parents, leaf = path.split(".")
  node = cfg
  for part in parents:
    node = node[part]
  node[leaf] = value  # ConfigDict refuses a value of another type (TypeError)


def _nearest(path: str, configs: Sequence[Any]) -> str:
  valid = sorted({k for c in configs for k in cli.dotted_keys(c)})
  near = difflib.get_close_matches(path, valid, n=3, cutoff=0.6)
  return f"; nearest: {', '.join(near)}" if near else ""


def _load_configs(stage_list: Sequence[stages_lib.Stage]) -> Dict[str, Any]:
  loaded: Dict[str, Any] = {}
  for stage in stage_list:
    if not stage.has_config:
      continue
    try:
      loaded[stage.name] = cli.load_config(stage.config)
    except Exception as e:  # pylint: disable=broad-except  (any error of a user's file)
      raise SweepError(f"stage {stage.name!r}: cannot load its config {stage.config}: "
                       f"{type(e).__name__}: {e}") from None
  return loaded


def _route(name: str, overrides: Dict[str, Any], stage_list, base: Dict[str, Any]):
  """The member's overrides -> {stage name: {dot path: value}}, checked."""
  by_name = {s.name: s for s in stage_list}
  routed: Dict[str, Dict[str, Any]] = {s: {} for s in base}
  for key, value in overrides.items():
    stage_name, colon, path = key.rpartition(":")
    where = f"member {name!r}: override {key!r}"
    if colon:
      if stage_name not in by_name:
        raise SweepError(f"{where}: no stage is named {stage_name!r} (stages: "
                         f"{', '.join(by_name)})")
      if stage_name not in base:
        raise SweepError(f"{where}: stage {stage_name!r} ({by_name[stage_name].kind}) "
                         "has no config to override")
      targets = [stage_name] if _has_field(base[stage_name], path) else []
      if not targets:
        raise SweepError(f"{where}: the config of stage {stage_name!r} has no field {path!r}"
                         f"{_nearest(path, [base[stage_name]])}")
    else:
      targets = [s for s, cfg in base.items() if _has_field(cfg, path)]
      if not targets:
        raise SweepError(f"{where}: no stage's config has the field {path!r} (stages "
                         f"with a config: {', '.join(base) or 'none'})"
                         f"{_nearest(path, list(base.values()))}")
    for target in targets:
      if _is_section(base[target], path):
        raise SweepError(f"{where}: {path!r} is a section of stage {target!r}'s config; "
                         "override its fields one by one")
      routed[target][path] = value
  return routed


def make_plan(config: str, workdir: Optional[str] = None) -> Plan:
  """Loads the sweep and every stage config; resolves and checks every member.
  `workdir` replaces `{sweep}` in the stages (bliperax/sweep/stages.py)."""
  members, all_stages = read_sweep(config)
  if workdir is None and any(stages_lib.uses_workdir(s) for s in all_stages):
    raise SweepError(f"sweep config {config}: its stages use {stages_lib.SWEEP}, so it "
                     "needs --workdir")
  if workdir is not None:
    all_stages = [stages_lib.with_workdir(s, workdir) for s in all_stages]
  setup = [s for s in all_stages if s.kind == "setup"]
  stage_list = [dataclasses.replace(s, config=_absolute_config(s.config)) if s.config
                else s for s in all_stages if s.kind != "setup"]
  names = spec.member_names(members)
  base = _load_configs(stage_list)
  # A stage's own overrides are checked once, as a member's would be.
  fixed = {s.name: _route(f"(stage {s.name})", {f"{s.name}:{k}": v for k, v in s.overrides},
                          stage_list, base)[s.name] for s in stage_list if s.overrides}
  plans = []
  for index, (member, name) in enumerate(zip(members, names)):
    overrides = spec.overrides_of(member)
    routed = _route(name, overrides, stage_list, base)
    resolved, per_stage, commands = {}, {}, []
    for stage in stage_list:
      these = {**fixed.get(stage.name, {}), **routed.get(stage.name, {})}
      if stage.name in base:
        cfg = copy.deepcopy(base[stage.name])
        for path, value in these.items():
          try:
            _set_field(cfg, path, spec.as_config_value(value))
          except (TypeError, ValueError) as e:
            raise SweepError(f"member {name!r}: override {path!r} = {value!r} does not "
                             f"fit stage {stage.name!r}'s field: {e}") from None
        resolved[stage.name] = cfg
      per_stage[stage.name] = these
      commands.append(stages_lib.command(stage, these))
    plans.append(MemberPlan(index, name, overrides, commands, resolved, per_stage))
  return Plan(config, stage_list, plans, setup)


def select(plan: Plan, only: Sequence[str]) -> List[MemberPlan]:
  """The members named in `only` (all when empty); an unknown name is an error."""
  if not only:
    return list(plan.members)
  known = {m.name: m for m in plan.members}
  unknown = [n for n in only if n not in known]
  if unknown:
    raise SweepError(f"--only: no member named {unknown[0]!r} (members: "
                     f"{', '.join(known)})")
  return [m for m in plan.members if m.name in set(only)]


def _flat(cfg, prefix: str = "") -> Dict[str, Any]:
  out = {}
  for key, value in cfg.items():
    if hasattr(value, "items"):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = spec.plain(value)
  return out


def differences(plan: Plan, members: Sequence[MemberPlan]) -> Dict[str, List[Any]]:
  """{"stage:dot.path": [value per member]} for every resolved field that differs
  between the members (for one member: that differs from the stage's config file)."""
  out: Dict[str, List[Any]] = {}
  for stage in plan.stages:
    if not stage.has_config:
      continue
    flats = [_flat(m.configs[stage.name]) for m in members]
    if len(members) == 1:
      flats.append(_flat(cli.load_config(stage.config)))
    for key in flats[0]:
      values = [f.get(key) for f in flats]
      if any(v != values[0] for v in values):
        out[f"{stage.name}:{key}"] = values[:len(members)]
  return out
