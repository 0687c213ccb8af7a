"""Sweep definitions: product/zip_, member names, flag values, override routing and checks.

No training here: configs are loaded in this process (no jax), and the one command
line run is refused before anything starts.
"""
import os
import subprocess
import sys
import textwrap

import pytest
from absl import flags
from ml_collections.config_flags import tuple_parser

from bliperax import sweep
from bliperax.sweep import plan as plan_lib
from bliperax.sweep import spec
from bliperax.sweep import stages as stages_lib
from conftest import ROOT


def test_product_varies_the_first_part_slowest_and_composes_with_lists():
  members = sweep.product({"a.x": [1, 2]}, {"b.y": [True, False]}) + [{"c": "z"}]
  assert members == [{"a.x": 1, "b.y": True}, {"a.x": 1, "b.y": False},
                     {"a.x": 2, "b.y": True}, {"a.x": 2, "b.y": False}, {"c": "z"}]
  assert sweep.product(seed=[0, 1]) == [{"seed": 0}, {"seed": 1}]
  # A list of members (a zip) is one part of a product.
  assert sweep.product(sweep.zip_({"a": [1, 2], "b": [3, 4]}), {"c": [5]}) == [
      {"a": 1, "b": 3, "c": 5}, {"a": 2, "b": 4, "c": 5}]


def test_zip_pairs_positions_and_refuses_unequal_lengths():
  assert sweep.zip_({"a": [1, 2]}, b=[3, 4]) == [{"a": 1, "b": 3}, {"a": 2, "b": 4}]
  with pytest.raises(sweep.SweepError, match="different lengths"):
    sweep.zip_({"a": [1, 2]}, {"b": [1, 2, 3]})


def test_a_string_axis_and_a_key_set_twice_are_refused():
  with pytest.raises(sweep.SweepError, match="axis 'a' must be a list"):
    sweep.product({"a": "xyz"})
  with pytest.raises(sweep.SweepError, match="set twice"):
    sweep.product({"a": [1]}, {"a": [2]})


def test_names_are_readable_from_the_last_path_component():
  names = sweep.member_names([{"model.resampler.num_latents": 8, "data.anyres": False},
                              {"optim.lr": 0.001, "optim.freeze": ("^vision/",)},
                              {"optim.freeze": ()}, {}])
  assert names == ["num_latents-8_anyres-false", "lr-0.001_freeze-vision", "freeze-none",
                   "base"]


def test_a_name_depends_on_its_own_member_only():
  member = {"model.resampler.num_latents": 8}
  alone = sweep.member_names([member])[0]
  among = sweep.member_names([{"model.resampler.num_latents": 2}, member,
                              {"seed": 3}])[1]
  assert alone == among == "num_latents-8"


def test_keys_that_share_a_last_component_show_more_of_their_path():
  name = sweep.member_names([{"model.vision.width": 1, "model.lm.width": 2,
                              "sft:optim.freeze": ()}])[0]
  assert name == "vision.width-1_lm.width-2_freeze-none"


def test_colliding_names_get_distinct_hashes_and_explicit_names_win():
  a, b = {"model.vision.width": 1}, {"model.lm.width": 1}
  names = sweep.member_names([a, b, {"name": "baseline"}])
  assert names[0] != names[1] and all(n.startswith("width-1-") for n in names[:2])
  assert names[2] == "baseline"
  assert sweep.member_names([a, b]) == names[:2]  # stable from run to run
  with pytest.raises(sweep.SweepError, match="same overrides"):
    sweep.member_names([{"a": 1}, {"a": 1}])
  with pytest.raises(sweep.SweepError, match="named 'x'"):
    sweep.member_names([{"name": "x", "a": 1}, {"name": "x", "a": 2}])


def test_long_names_are_cut_with_a_hash():
  long = {f"k{i}": "v" * 20 for i in range(6)}
  other = dict(long, k5="w" * 20)
  names = sweep.member_names([long, other])
  assert all(len(n) <= spec.MAX_NAME for n in names) and names[0] != names[1]


@pytest.mark.parametrize("value", [True, False, 3, 0.001, 1e-08, "adamw", None,
                                   ("^vision/",), (), ((1, 2), (3, 1))])
def test_flag_values_read_back_equal_with_ml_collections_parsers(value):
  text = stages_lib.flag_value(value)
  if isinstance(value, bool):
    parsed = flags.BooleanParser().parse(text)
  elif isinstance(value, tuple):
    parsed = tuple_parser.TupleParser().parse(text)
  elif isinstance(value, float):
    parsed = flags.FloatParser().parse(text)
  elif isinstance(value, int):
    parsed = flags.IntegerParser().parse(text)
  elif value is None:
    parsed = None if text == "None" else text
  else:
    parsed = text
  assert parsed == value and type(parsed) is type(value)


def _sweep_file(tmp_path, members: str, stages: str = None) -> str:
  stages = stages or textwrap.dedent("""\
      [sweep.train("pre", "experiments/tiny.py"),
       sweep.export("pre_params", of="pre"),
       sweep.train("sft", "experiments/tiny.py", init_from="pre_params"),
       sweep.evaluate("eval", "experiments/tiny.py", checkpoint="sft")]""")
  path = tmp_path / "s.py"
  path.write_text("from bliperax import sweep\n"
                  f"def get_sweep():\n  return {members}\n"
                  f"def get_stages():\n  return {stages}\n")
  return str(path)


def test_overrides_route_to_every_stage_with_the_path_or_to_the_named_stage(tmp_path,
                                                                            monkeypatch):
  monkeypatch.chdir(ROOT)
  plan = plan_lib.make_plan(_sweep_file(
      tmp_path, '[{"optim.lr": 0.5, "sft:train.global_batch": 4}]'))
  member = plan.members[0]
  assert member.stage_overrides == {"pre": {"optim.lr": 0.5}, "pre_params": {},
                                    "sft": {"optim.lr": 0.5, "train.global_batch": 4},
                                    "eval": {"optim.lr": 0.5}}
  assert member.configs["sft"].train.global_batch == 4
  assert member.configs["pre"].train.global_batch == 8
  sft = member.commands[2]
  assert "--config.model.init_from={member}/pre_params" in sft
  assert "--config.train.global_batch=4" in sft and "--config.optim.lr=0.5" in sft
  assert member.commands[3][:3] == ["python", "-m", "bliperax.evaluate"]
  assert "--checkpoint={member}/sft" in member.commands[3]
  assert "--output={member}/eval.json" in member.commands[3]
  diff = plan_lib.differences(plan, plan.members)
  assert set(diff) == {"pre:optim.lr", "sft:optim.lr", "sft:train.global_batch",
                       "eval:optim.lr"}


@pytest.mark.parametrize("members, message", [
    ('[{"seed": 1}, {"optim.warmup_stepz": 4}]',
     r"member 'warmup_stepz-4': override 'optim.warmup_stepz': no stage's config "
     r"has the field 'optim.warmup_stepz'.*nearest: optim.warmup_steps"),
    ('[{"nope:seed": 1}]', r"no stage is named 'nope'"),
    ('[{"pre_params:seed": 1}]', r"stage 'pre_params' \(export\) has no config"),
    ('[{"sft:optim.lrr": 1.0}]',
     r"the config of stage 'sft' has no field 'optim.lrr'; nearest: optim.lr"),
    ('[{"optim": 1}]', r"'optim' is a section"),
    ('[{"train.global_batch": "many"}]', r"'train.global_batch' = 'many' does not fit"),
])
def test_bad_overrides_fail_naming_the_member_and_the_path(tmp_path, monkeypatch,
                                                            members, message):
  monkeypatch.chdir(ROOT)
  with pytest.raises(sweep.SweepError, match=message):
    plan_lib.make_plan(_sweep_file(tmp_path, members))


def test_bad_stages_are_refused(tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)
  bad = '[sweep.train("a", "experiments/tiny.py", init_from="later")]'
  with pytest.raises(sweep.SweepError, match="not an earlier stage"):
    plan_lib.make_plan(_sweep_file(tmp_path, "[{}]", bad))
  bad = '[sweep.train("a", "experiments/tiny.py", args=("--config.seed=1",))]'
  with pytest.raises(sweep.SweepError, match="give config overrides"):
    plan_lib.make_plan(_sweep_file(tmp_path, "[{}]", bad))


def test_setup_stages_run_first_and_sweep_stands_for_the_workdir(tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)
  stages = ('[sweep.setup("data", ["python", "make.py", "--output={sweep}/data"]), '
            'sweep.train("t", "experiments/tiny.py:batch={sweep}", args=("--x={sweep}",))]')
  config = _sweep_file(tmp_path, "[{}]", stages)
  with pytest.raises(sweep.SweepError, match="needs --workdir"):
    plan_lib.make_plan(config)
  # (batch=<a path> is not an int: the config would refuse it; here only its text counts)
  monkeypatch.setattr(plan_lib, "_load_configs", lambda stage_list: {})
  plan = plan_lib.make_plan(config, "/w")
  assert [s.name for s in plan.setup] == ["data"] and [s.name for s in plan.stages] == ["t"]
  assert stages_lib.command(plan.setup[0], {}) == ["python", "make.py", "--output=/w/data"]
  assert plan.members[0].commands[0][4:] == ["--workdir={member}/t", "--x=/w"]
  assert plan.members[0].commands[0][2:3] == ["bliperax.train"]
  assert plan.stages[0].config.endswith("experiments/tiny.py:batch=/w")
  late = '[sweep.train("t", "experiments/tiny.py"), sweep.setup("d", ["true"])]'
  with pytest.raises(sweep.SweepError, match="list them first"):
    plan_lib.make_plan(_sweep_file(tmp_path, "[{}]", late))


def test_an_unknown_path_stops_the_command_before_anything_runs(tmp_path):
  config = _sweep_file(tmp_path, '[{"seed": 1}, {"model.numerics.dtipe": "bfloat16"}]')
  workdir = tmp_path / "work"
  result = subprocess.run(
      [sys.executable, "-m", "bliperax.sweep", f"--config={config}", f"--workdir={workdir}"],
      cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
      env=dict(os.environ, PYTHONPATH=str(ROOT)))
  assert result.returncode == 1, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and "'model.numerics.dtipe'" in lines[0], result.stderr
  assert "member 'dtipe-bfloat16'" in lines[0]
  assert not workdir.exists()  # not even the folder: nothing ran, seed-1 included


def test_dry_run_lists_members_differences_and_commands_and_runs_nothing(tmp_path):
  workdir = tmp_path / "work"
  result = subprocess.run(
      [sys.executable, "-m", "bliperax.sweep", "--config=tests/sweep_tiny.py:broken=1",
       f"--workdir={workdir}", "--dry_run"], cwd=ROOT, capture_output=True, text=True,
      timeout=120, check=False, env=dict(os.environ, PYTHONPATH=str(ROOT)))
  assert result.returncode == 0, result.stderr
  out = result.stdout
  assert "| member | train:seed | train:train.accum_steps |" in out
  assert "| broken | 0 | 3 |" in out and "| seed-1 | 1 | 1 |" in out
  assert f"--workdir={workdir}/seed-1/train" in out and "--config.seed=1" in out
  assert not workdir.exists()


def test_parallel_members_get_disjoint_cores_or_none():
  from bliperax.sweep import runner  # pylint: disable=g-import-not-at-top
  assert runner.core_slots(2, [0, 1, 2, 3, 4]) == [[0, 1], [2, 3]]
  assert runner.core_slots(3, [0, 1]) == [None, None, None]  # too few: no pinning
  assert runner.core_slots(1, [0, 1]) == [None]
