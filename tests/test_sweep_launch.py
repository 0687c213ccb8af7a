"""--launch: one cluster workload per member through bliperax.launch's API.

bliperax.launch itself (xpk and gcloud argument lists) has its own tests; here a
stand-in module records what the sweep asks of it: the train stage's config, each
member's workdir under the bucket, the member's overrides plus the stage's inputs as
config fields, and that nothing runs and no sweep.json is written on a dry run.
"""
import dataclasses
import types

import pytest

from bliperax.sweep import launching
from bliperax.sweep import plan as plan_lib
from conftest import ROOT


@dataclasses.dataclass(frozen=True)
class FakeTarget:
  via: str = "xpk"
  tpu: str = "v5e-8"


def _fake_launch(calls, status=0):
  def commands(config, workdir, target, *, name, overrides=None):
    calls.append(("commands", config, workdir, target, name, dict(overrides or {})))
    return [["xpk", "workload", "create", f"--workdir={workdir}"]]

  def execute(cmds, dry_run=None):
    calls.append(("execute", cmds, dry_run))
    return status
  return types.SimpleNamespace(commands=commands, execute=execute, Target=FakeTarget)


def _plan(tmp_path, monkeypatch, stages):
  monkeypatch.chdir(ROOT)
  path = tmp_path / "s.py"
  path.write_text("from bliperax import sweep\n"
                  "def get_sweep():\n  return sweep.product({'optim.lr': [0.1, 0.2]})\n"
                  f"def get_stages():\n  return {stages}\n")
  return plan_lib.make_plan(str(path))


TWO_STAGES = ("[sweep.train('pre', 'experiments/tiny.py'), sweep.export('p', of='pre'), "
              "sweep.train('sft', 'experiments/tiny.py:batch=4', init_from='p')]")


def test_each_member_launches_its_stage_with_its_overrides_and_inputs(tmp_path, monkeypatch):
  plan = _plan(tmp_path, monkeypatch, TWO_STAGES)
  calls = []
  fake = _fake_launch(calls)
  monkeypatch.setattr("shutil.which", lambda p: "/usr/bin/" + p)
  records = []
  monkeypatch.setattr(launching.results, "merge_sweep_record",
                      lambda root, record: records.append((root, record)))
  failed = launching.launch_all(plan, plan.members, "gs://b/sweep/", FakeTarget(),
                                stage_name="sft", launch=fake, log=lambda s: None)
  assert failed == []
  made = [c for c in calls if c[0] == "commands"]
  assert [(c[1], c[2], c[4], c[5]) for c in made] == [
      (f"{ROOT}/experiments/tiny.py:batch=4", "gs://b/sweep/lr-0.1/sft", "",
       {"optim.lr": 0.1, "model.init_from": "gs://b/sweep/lr-0.1/p"}),
      (f"{ROOT}/experiments/tiny.py:batch=4", "gs://b/sweep/lr-0.2/sft", "",
       {"optim.lr": 0.2, "model.init_from": "gs://b/sweep/lr-0.2/p"})]
  assert [c[2] for c in calls if c[0] == "execute"] == [None, None]  # really run
  assert records and records[0][0] == "gs://b/sweep"
  assert [m["name"] for m in records[0][1]["members"]] == ["lr-0.1", "lr-0.2"]


def test_dry_run_or_a_missing_tool_prints_only(tmp_path, monkeypatch):
  plan = _plan(tmp_path, monkeypatch, "[sweep.train('t', 'experiments/tiny.py')]")
  monkeypatch.setattr("shutil.which", lambda p: None)  # no xpk on PATH
  monkeypatch.setattr(launching.results, "merge_sweep_record",
                      lambda *a: pytest.fail("a dry run wrote sweep.json"))
  calls, lines = [], []
  failed = launching.launch_all(plan, plan.members, "gs://b/s", FakeTarget(),
                                launch=_fake_launch(calls), log=lines.append)
  assert failed == [] and [c[2] for c in calls if c[0] == "execute"] == [True, True]
  assert lines[0] == "# dry run: xpk not on PATH; this is what would run:"
  assert "# lr-0.1: t -> gs://b/s/lr-0.1/t" in lines


def test_a_sweep_with_several_train_stages_needs_stage(tmp_path, monkeypatch):
  plan = _plan(tmp_path, monkeypatch, TWO_STAGES)
  with pytest.raises(launching.SweepError, match=r"name it with --stage \(train stages: "
                     r"pre, sft\)"):
    launching.member_commands(plan, plan.members, "gs://b/s", FakeTarget(),
                              launch=_fake_launch([]))
  with pytest.raises(launching.SweepError, match="--stage=p: not a train stage"):
    launching.member_commands(plan, plan.members, "gs://b/s", FakeTarget(), stage_name="p",
                              launch=_fake_launch([]))
