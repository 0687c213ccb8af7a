"""Run records: a rerun resumes only the run its directory was made with.

bliperax/run_record.py itself (written, equal, different config, different code,
unrecorded contents), the trainer CLI refusing a workdir of another config, and the
main job's per-stage decision (run, resume, reuse, refuse) on a fake stage.
"""
import json
import os
import pathlib
import subprocess
import sys

import ml_collections
import pytest

from bliperax import run_record

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(**changes) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(dict(
      total_steps=6, mesh=dict(data=1, fsdp=-1), optim=dict(lr=1e-3, freeze=("^vision/",)),
      train=dict(seq_len=24)))
  for dotted, value in changes.items():
    *parents, leaf = dotted.split(".")
    node = cfg
    for name in parents:
      node = node[name]
    node[leaf] = value
  return cfg


# ------------------------------------------------------------------------ the record


def test_record_is_written_once_and_the_same_record_resumes(tmp_path):
  record = run_record.make(_config(), data="/data/a")
  assert run_record.check_or_write(tmp_path / "run", record, "training run") is False
  path = tmp_path / "run" / run_record.FILENAME
  written = json.loads(path.read_text())
  assert written == record
  assert written["config"]["optim"]["freeze"] == ["^vision/"]  # tuples read back as lists
  assert written["inputs"] == {"data": "/data/a"}
  assert len(written["code"]) == 64
  # A rebuilt equal record (tuples and all) is the same run: resume, file untouched.
  mtime = path.stat().st_mtime_ns
  again = run_record.make(_config(), data="/data/a")
  assert run_record.check_or_write(tmp_path / "run", again, "training run") is True
  assert path.stat().st_mtime_ns == mtime
  assert [p.name for p in (tmp_path / "run").iterdir()] == [run_record.FILENAME]


def test_changed_config_raises_one_line_naming_the_key_and_how_to_start_fresh(tmp_path):
  run_record.check_or_write(tmp_path, run_record.make(_config()), "training run")
  with pytest.raises(run_record.RunMismatch) as info:
    run_record.check_or_write(tmp_path, run_record.make(_config(**{"optim.lr": 2e-3})),
                              "training run")
  message = str(info.value)
  assert "\n" not in message
  assert str(tmp_path.absolute()) in message and "training run" in message
  assert "config.optim.lr 0.001 -> 0.002" in message
  assert "code" not in message.split(":")[1]  # only what differs is named
  assert f"remove {tmp_path.absolute()} or pass another --workdir" in message


def test_many_differences_name_a_few_and_count_the_rest(tmp_path):
  run_record.check_or_write(tmp_path, run_record.make(_config()), "run")
  changed = _config(**{"optim.lr": 2e-3, "total_steps": 7, "train.seq_len": 8,
                       "train.extra": 1, "optim.freeze": ()})
  with pytest.raises(run_record.RunMismatch, match="and 2 more") as info:
    run_record.check_or_write(tmp_path, run_record.make(changed), "run", fresh="do X")
  message = str(info.value)
  # Sorted dotted paths: the first three shown, an absent key shown as such.
  assert "config.optim.freeze [\"^vision/\"] -> []" in message
  assert "config.optim.lr 0.001 -> 0.002" in message
  assert "config.total_steps 6 -> 7" in message
  assert "config.train" not in message
  assert message.endswith("to start fresh, do X.")
  with pytest.raises(run_record.RunMismatch, match=r"config\.train\.extra <absent> -> 1"):
    run_record.check_or_write(tmp_path, run_record.make(_config(**{"train.extra": 1})), "run")


def test_ignored_paths_may_change_on_resume_and_nothing_else(tmp_path):
  ignore = ("config.mesh",)
  run_record.check_or_write(tmp_path, run_record.make(_config()), "run", ignore=ignore)
  moved = run_record.make(_config(**{"mesh.data": 2, "mesh.fsdp": 4}))
  assert run_record.check_or_write(tmp_path, moved, "run", ignore=ignore) is True
  with pytest.raises(run_record.RunMismatch, match=r"config\.mesh\.data 1 -> 2"):
    run_record.check_or_write(tmp_path, moved, "run")  # not ignored: refused
  # A path covers what is under it, not a sibling that shares its prefix.
  with pytest.raises(run_record.RunMismatch, match=r"config\.meshes"):
    run_record.check_or_write(tmp_path, run_record.make(_config(meshes=1)), "run",
                              ignore=ignore)


def test_changed_code_fingerprint_raises(tmp_path, monkeypatch):
  package = tmp_path / "pkg"
  (package / "sub").mkdir(parents=True)
  (package / "sub" / "a.py").write_text("X = 1\n")
  (package / "assets").mkdir()
  (package / "assets" / "vocab.txt").write_text("a b\n")
  monkeypatch.setattr(run_record, "_PACKAGE", package)
  # The fingerprint is computed once per process: recompute it here, and leave no
  # fake one cached for other tests.
  monkeypatch.setattr(run_record, "code_fingerprint", run_record.code_fingerprint.__wrapped__)
  fingerprint = run_record.code_fingerprint

  first = fingerprint()
  run_record.check_or_write(tmp_path / "run", run_record.make(_config()), "training run")
  # Caches and editor files are not code.
  (package / "sub" / "__pycache__").mkdir()
  (package / "sub" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
  (package / "sub" / ".a.py.swp").write_bytes(b"\0")
  assert fingerprint() == first
  (package / "sub" / "a.py").write_text("X = 2\n")
  assert fingerprint() != first
  with pytest.raises(run_record.RunMismatch, match=r"training run in .*: code \""):
    run_record.check_or_write(tmp_path / "run", run_record.make(_config()), "training run")
  (package / "sub" / "a.py").write_text("X = 1\n")
  assert fingerprint() == first
  (package / "assets" / "vocab.txt").write_text("a c\n")  # the tokenizer shapes the data
  assert fingerprint() != first


def test_contents_without_a_record_are_refused(tmp_path):
  # Other processes' writes in flight (the record, the trainer's write check).
  (tmp_path / ".run_record.abc.tmp").write_text("{")
  (tmp_path / ".write_check.xyz").write_text("")
  assert run_record.check_or_write(tmp_path, run_record.make(_config()), "run") is False
  other = tmp_path / "older"
  (other / "checkpoints").mkdir(parents=True)
  with pytest.raises(run_record.RunMismatch, match="holds checkpoints but no record"):
    run_record.check_or_write(other, run_record.make(_config()), "run")
  assert not (other / run_record.FILENAME).exists()


def test_digest_names_a_record():
  a = run_record.make(_config(), data="x")
  assert run_record.digest(a) == run_record.digest(run_record.make(_config(), data="x"))
  assert run_record.digest(a) != run_record.digest(run_record.make(_config(), data="y"))


# ------------------------------------------------------------------ the trainer CLI


def _trainer(workdir: pathlib.Path, *overrides: str) -> subprocess.CompletedProcess:
  # conftest's fast-compile XLA flags; a 2-row batch of 24 tokens on one device, one step.
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "bliperax.train", "--config=experiments/tiny.py",
         f"--workdir={workdir}", "--config.total_steps=1", "--config.train.seq_len=24",
         "--config.train.global_batch=2", *overrides]
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600, check=False)


def test_trainer_cli_refuses_a_workdir_made_with_another_config(tmp_path):
  workdir = tmp_path / "run"
  first = _trainer(workdir)
  assert first.returncode == 0, first.stderr[-3000:]
  recorded = json.loads((workdir / run_record.FILENAME).read_text())
  assert recorded["config"]["total_steps"] == 1
  assert (workdir / "checkpoints" / "config.json").exists()  # still written
  before = sorted(p.name for p in (workdir / "checkpoints").iterdir())

  other = _trainer(workdir, "--config.optim.lr=0.5")
  assert other.returncode != 0
  lines = other.stderr.strip().splitlines()
  assert len(lines) == 1, other.stderr[-3000:]  # one line, no traceback
  assert lines[0].startswith("bliperax.train: training run in ")
  assert "config.optim.lr 0.001 -> 0.5" in lines[0]
  assert str(workdir) in lines[0] and "--workdir" in lines[0]
  assert other.stdout.strip() == ""  # no result printed
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before
  assert json.loads((workdir / run_record.FILENAME).read_text()) == recorded


# ---------------------------------------------------------------- main job stages


@pytest.fixture(name="main_job")
def _main_job():
  sys.path.insert(0, str(ROOT / "tools"))
  import main_job  # pylint: disable=g-import-not-at-top
  return main_job


class _Stage:
  """A fake stage that counts its runs and can be made to fail (an interruption)."""

  def __init__(self, output: pathlib.Path, fail: bool = False):
    self.output, self.fail, self.runs = output, fail, 0

  def __call__(self):
    self.runs += 1
    self.output.mkdir(exist_ok=True)
    if self.fail:
      raise SystemExit("main job: stage failed (exit 1)")


def test_main_job_runs_a_new_stage_and_reuses_it_finished_saying_so(tmp_path, main_job, capsys):
  record = run_record.make(_config(), data="d1")
  run = _Stage(tmp_path / "out")
  assert main_job.run_stage(tmp_path, "pretrain", "2/6 pre-train", record, [run.output], run)
  assert run.runs == 1
  assert (tmp_path / "stages" / "pretrain" / "finished").exists()
  capsys.readouterr()
  assert not main_job.run_stage(tmp_path, "pretrain", "2/6 pre-train",
                                run_record.make(_config(), data="d1"), [run.output], run)
  assert run.runs == 1  # not run again
  assert "=== 2/6 pre-train: reused, finished earlier" in capsys.readouterr().out


def test_main_job_resumes_an_interrupted_stage(tmp_path, main_job, capsys):
  record = run_record.make(_config())
  run = _Stage(tmp_path / "out", fail=True)
  with pytest.raises(SystemExit):
    main_job.run_stage(tmp_path, "sft", "4/6 fine-tune", record, [run.output], run)
  assert not (tmp_path / "stages" / "sft" / "finished").exists()
  run.fail = False
  capsys.readouterr()
  # Its output exists now, but so does the record: the same run, resumed.
  assert main_job.run_stage(tmp_path, "sft", "4/6 fine-tune", record, [run.output], run)
  assert run.runs == 2
  assert "4/6 fine-tune: resuming, started earlier" in capsys.readouterr().out
  assert (tmp_path / "stages" / "sft" / "finished").exists()


@pytest.mark.parametrize("finished", [True, False])
def test_main_job_refuses_a_stage_run_with_something_else(tmp_path, main_job, finished):
  run = _Stage(tmp_path / "out", fail=not finished)
  try:
    main_job.run_stage(tmp_path, "pretrain", "2/6", run_record.make(_config(), data="d1"),
                       [run.output], run)
  except SystemExit:
    pass
  # The upstream stage was redone differently: this stage's inputs differ.
  with pytest.raises(run_record.RunMismatch) as info:
    main_job.run_stage(tmp_path, "pretrain", "2/6", run_record.make(_config(), data="d2"),
                       [run.output], run)
  message = str(info.value)
  assert "stage 'pretrain' in " in message and 'inputs.data "d1" -> "d2"' in message
  assert f"--fresh (removes {tmp_path})" in message
  assert run.runs == 1


def test_main_job_refuses_outputs_without_a_record(tmp_path, main_job):
  """An older main job's workdir: its data and checkpoints are of unknown make."""
  (tmp_path / "data").mkdir()
  run = _Stage(tmp_path / "data")
  with pytest.raises(run_record.RunMismatch, match="exists without a record"):
    main_job.run_stage(tmp_path, "data", "1/6", run_record.make(), [tmp_path / "data"], run)
  assert run.runs == 0 and not (tmp_path / "stages").exists()


def test_main_job_fresh_removes_only_a_main_job_workdir(tmp_path, main_job):
  assert main_job._is_main_job_workdir(tmp_path)  # empty
  (tmp_path / "notes.txt").write_text("mine")
  assert not main_job._is_main_job_workdir(tmp_path)
  (tmp_path / "stages").mkdir()
  assert main_job._is_main_job_workdir(tmp_path)


@pytest.mark.slow  # the default suite's 15-minute budget on 2 cores
def test_a_run_that_stopped_before_its_first_checkpoint_yields_to_a_fixed_config(tmp_path):
  """Nothing to resume: the rerun with the corrected config trains instead of refusing."""
  workdir = tmp_path / "run"
  # A missing init is refused before anything is created (train/inputs.py) ...
  missing = _trainer(workdir, f"--config.model.init_from={tmp_path / 'no_params'}")
  assert missing.returncode != 0 and "no_params" in missing.stderr
  assert not workdir.exists()
  # ... rows too short for an image fail later, once the run is recorded.
  broken = _trainer(workdir, "--config.train.seq_len=8")
  assert broken.returncode != 0 and "seq_len 8" in broken.stderr
  assert (workdir / run_record.FILENAME).exists()  # recorded before it failed
  fixed = _trainer(workdir)
  assert fixed.returncode == 0, fixed.stderr[-3000:]
  recorded = json.loads((workdir / run_record.FILENAME).read_text())
  assert recorded["config"]["data"]["kind"] == "synthetic"


def test_record_yields_only_when_nothing_is_resumable(tmp_path):
  record = run_record.make({"lr": 1})
  run_record.check_or_write(tmp_path, record, "run")
  other = run_record.make({"lr": 2})
  with pytest.raises(run_record.RunMismatch):
    run_record.check_or_write(tmp_path, other, "run", resumable=True)
  assert run_record.check_or_write(tmp_path, other, "run", resumable=False) is False
  assert run_record.check_or_write(tmp_path, other, "run") is True
