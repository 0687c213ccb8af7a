"""The stages every member of a sweep runs, and the command line of each.

A sweep config's `get_stages()` (or a module-level `STAGES`) lists them in order, built
with the helpers below; each runs one of the real entry points as a subprocess, so a
member is exactly the commands a person would type, and rerunning an interrupted
train stage is the trainer's own resume:

  def get_stages(arg=None):
    data = f"root={configs.parse_arg(arg)['root']}"
    return [
        sweep.train("pretrain", f"experiments/digits/pretrain.py:{data}"),
        sweep.export("pretrain_params", of="pretrain"),
        sweep.train("sft", f"experiments/digits/sft.py:{data}", init_from="pretrain_params"),
        sweep.evaluate("eval", f"experiments/digits/sft.py:{data}", checkpoint="sft",
                       args=("--limit=100",)),
    ]

Where each stage writes, under the member's folder DIR/<member>/: a train stage's
workdir and an export's parameter checkpoint are the folder named after the stage;
an evaluate stage writes `<stage>.json` (bliperax.evaluate --output), which the
results table reads. A stage takes an earlier stage's output through `inputs`: a
flag of its command set to that stage's folder (`init_from="pretrain_params"` is
`--config.model.init_from=DIR/<member>/pretrain_params`).

Config overrides reach train and evaluate stages as `--config.a.b=value` flags
(`flag_value` writes them as ml_collections' flag parsers read them back); a stage's
own `overrides` apply to every member.

A `setup` stage is a command run once for the whole sweep, before any member (e.g.
making the data every member reads), with its output in DIR/_setup/. `{sweep}` in any
stage's config, args or setup command stands for the sweep's workdir DIR:

  sweep.setup("data", ["python", "tools/make_digits.py", "--output={sweep}/data"]),
  sweep.train("pretrain", "experiments/digits/pretrain.py:root={sweep}/data"), ...
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

KINDS = ("setup", "train", "export", "evaluate")
MEMBER = "{member}"  # the member's folder in a command template
SWEEP = "{sweep}"  # the sweep's workdir, in configs, args and setup commands
_ENTRY = {"train": "bliperax.train", "export": "bliperax.export",
          "evaluate": "bliperax.evaluate"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclasses.dataclass(frozen=True)
class Stage:
  """One step of a member.

  name: the stage's folder under the member's (and its `stage:` override prefix).
  kind: "train" (python -m bliperax.train), "export" (python -m bliperax.export),
    "evaluate" (python -m bliperax.evaluate) or "setup" (`args` is the command,
    run once per sweep).
  config: `file.py[:arg]` for train and evaluate ("" for an evaluate without one,
    e.g. few-shot on a benchmark; overrides then do not reach it).
  inputs: (flag, earlier stage) pairs: `--flag=DIR/<member>/<earlier stage>`.
  args: further flags, as typed (not `--config.*`: those are `overrides`).
  overrides: config overrides every member gets in this stage.
  metrics: evaluate: the keys of its output JSON whose numbers are the member's
    evaluation metrics (nested dicts are flattened: `accuracy/read`).
  """
  name: str
  kind: str
  config: str = ""
  inputs: Tuple[Tuple[str, str], ...] = ()
  args: Tuple[str, ...] = ()
  overrides: Tuple[Tuple[str, Any], ...] = ()
  metrics: Tuple[str, ...] = ()

  @property
  def has_config(self) -> bool:
    return self.kind in ("train", "evaluate") and bool(self.config)

  def output(self, member_dir: str) -> str:
    """Where the stage writes: a folder (train, export) or a JSON file (evaluate)."""
    suffix = ".json" if self.kind == "evaluate" else ""
    return f"{member_dir}/{self.name}{suffix}"


def _pairs(mapping: Optional[Mapping[str, Any]]) -> Tuple[Tuple[str, Any], ...]:
  return tuple((mapping or {}).items())


def train(name: str, config: str, *, init_from: Optional[str] = None,
          args: Sequence[str] = (), overrides: Optional[Mapping[str, Any]] = None,
          inputs: Optional[Mapping[str, str]] = None) -> Stage:
  """A training run; `init_from` names an earlier export stage (its parameters)."""
  wired = dict(inputs or {})
  if init_from:
    wired["config.model.init_from"] = init_from
  return Stage(name, "train", config, _pairs(wired), tuple(args), _pairs(overrides))


def export(name: str, *, of: str) -> Stage:
  """An earlier train stage's parameters as a parameter checkpoint (the next init)."""
  return Stage(name, "export", "", (("checkpoint", of),))


def evaluate(name: str, config: str, *, checkpoint: str, args: Sequence[str] = (),
             overrides: Optional[Mapping[str, Any]] = None,
             metrics: Sequence[str] = ("accuracy",)) -> Stage:
  """Evaluates an earlier train (or export) stage's parameters; writes <name>.json."""
  return Stage(name, "evaluate", config, (("checkpoint", checkpoint),), tuple(args),
               _pairs(overrides), tuple(metrics))


def setup(name: str, argv: Sequence[str]) -> Stage:
  """A command run once for the whole sweep, before the members (`python` as argv[0]
  is the sweep's own interpreter)."""
  return Stage(name, "setup", args=tuple(argv))


def check(stages: Sequence[Stage]) -> None:
  """Raises ValueError on stages that cannot run in this order."""
  if not any(isinstance(s, Stage) and s.kind != "setup" for s in stages):
    raise ValueError("the sweep has no member stages (get_stages() returned none)")
  seen: Dict[str, Stage] = {}
  members_started = False
  for stage in stages:
    if not isinstance(stage, Stage):
      raise ValueError(f"stage {stage!r} is not a Stage (use sweep.train, sweep.export, "
                       "sweep.evaluate)")
    where = f"stage {stage.name!r}"
    if not _NAME.fullmatch(stage.name):
      raise ValueError(f"{where}: a stage name is a folder name: letters, digits, _ . -")
    if stage.name in seen:
      raise ValueError(f"{where}: two stages have this name")
    if stage.kind not in KINDS:
      raise ValueError(f"{where}: kind {stage.kind!r} is not one of {', '.join(KINDS)}")
    if stage.kind == "train" and not stage.config:
      raise ValueError(f"{where}: a train stage needs a config file")
    if stage.kind == "setup":
      if members_started:
        raise ValueError(f"{where}: setup stages run before the members' stages: list "
                         "them first")
      if not stage.args or stage.inputs or stage.config:
        raise ValueError(f"{where}: a setup stage is a command (argv) and nothing else")
      seen[stage.name] = stage
      continue
    members_started = True
    for flag, source in stage.inputs:
      if source not in seen:
        raise ValueError(f"{where}: its --{flag} comes from {source!r}, which is not an "
                         "earlier stage")
      if seen[source].kind in ("evaluate", "setup"):
        raise ValueError(f"{where}: --{flag} cannot come from {seen[source].kind} stage "
                         f"{source!r} (use {SWEEP}/... for a setup stage's output)")
    for arg in stage.args:
      if arg.startswith("--config."):
        raise ValueError(f"{where}: {arg}: give config overrides as the stage's "
                         "`overrides` (or a member's), not as args")
    seen[stage.name] = stage


def flag_value(value: Any) -> str:
  """A value as `--config.a.b=` carries it, read back equal by ml_collections' parsers
  (bool: absl's BooleanParser; tuple: TupleParser's literal; None: a literal)."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if value is None:
    return "None"
  if isinstance(value, float):
    return repr(value)
  if isinstance(value, (list, tuple)):
    return repr(tuple(value))
  return str(value)


def command(stage: Stage, overrides: Mapping[str, Any]) -> List[str]:
  """The stage's argv with the member's folder as MEMBER (`{member}`).

  `overrides`: the dot paths and values this stage gets (member's and stage's own).
  argv[0] is `python`; the runner puts its own interpreter there.
  """
  if stage.kind == "setup":
    return list(stage.args)
  argv = ["python", "-m", _ENTRY[stage.kind]]
  if stage.kind == "train":
    argv += [f"--config={stage.config}", f"--workdir={stage.output(MEMBER)}"]
  elif stage.kind == "export":
    argv += [f"--output={stage.output(MEMBER)}"]
  else:
    argv += [f"--config={stage.config}"] if stage.config else []
    argv += [f"--output={stage.output(MEMBER)}"]
  argv += [f"--{flag}={MEMBER}/{source}" for flag, source in stage.inputs]
  argv += [f"--config.{path}={flag_value(value)}" for path, value in overrides.items()]
  argv += list(stage.args)
  return argv


def fill(argv: Sequence[str], member_dir: str) -> List[str]:
  """A command template with the member's folder put in."""
  return [a.replace(MEMBER, member_dir) for a in argv]


def with_workdir(stage: Stage, workdir: str) -> Stage:
  """The stage with SWEEP (`{sweep}`) in its config and args replaced by `workdir`."""
  return dataclasses.replace(stage, config=stage.config.replace(SWEEP, workdir),
                             args=tuple(a.replace(SWEEP, workdir) for a in stage.args))


def uses_workdir(stage: Stage) -> bool:
  return SWEEP in stage.config or any(SWEEP in a for a in stage.args)
