"""The 4B and 14B paper stage configs: required knobs, and the whole chain on tiny shards.

Every stage config refuses to load without root= (or synthetic=1) and init= (or
init=random), in one line naming the knob. Then the chain runs on CPU with
`preset=tiny` (the same configs, tiny shapes, 2 rows of 384 tokens) on the tiny
paper-layout shards of `python -m bliperax.data.example_shards --layout=paper`:
pretrain (2 steps, from a tiny stand-in for the backbones conversion) -> export
(`python -m bliperax.export`) -> SFT (2 steps) -> export -> interleaved SFT (2
steps), and each run's workdir records its init and data.

The 14B configs shrink to exactly the 4B tiny configs (checked), so the chain runs
once. Time: about a minute on 2 cores, nearly all of it XLA compiling: one state
init (shared by the stages through a compilation cache) and three train steps
(their learning-rate schedules differ, so each stage compiles its own).
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from bliperax import cli
from bliperax import run_record
from bliperax.configs import mixtures
from conftest import ROOT
import gcs_emulator

MODELS = ("xgenmm_4b", "xgenmm_14b")
STAGES = ("pretrain", "sft", "sft_interleaved")
_ENV = dict(os.environ, JAX_PLATFORMS="cpu")


def _config(model: str, stage: str, knobs: str):
  return cli.load_config(f"{ROOT / 'experiments' / model / stage}.py:{knobs}")


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("knobs,missing", [
    ("", ("root=DIR", "init=DIR")), ("root=/data", ("init=DIR",)),
    ("init=/ckpt", ("root=DIR",)), ("synthetic=1", ("init=DIR",))])
def test_a_paper_config_names_the_missing_knob(model, stage, knobs, missing):
  with pytest.raises(ValueError) as info:
    _config(model, stage, knobs)
  message = str(info.value)
  assert "\n" not in message
  for knob in ("root=DIR", "init=DIR"):
    assert (knob in message) == (knob in missing), message


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("stage", STAGES)
def test_synthetic_data_and_random_init_only_when_asked(model, stage):
  aot = _config(model, stage, "synthetic=1,init=random")
  assert aot.data.kind == "synthetic" and aot.model.init_from == ""
  assert aot.model.preset == model and aot.model.numerics.scan_layers
  real = _config(model, stage, "root=/data,init=/ckpt")
  assert real.data.kind == "grain" and real.model.init_from == "/ckpt"
  mixture = mixtures.MIXTURES[stage]
  assert sorted(real.data.sources) == sorted(s.name for s in mixture)
  for s in mixture:
    assert real.data.sources[s.name].paths == f"/data/{s.folder}"
    assert real.data.sources[s.name].anyres == (stage != "pretrain")
  # The crops the pipeline packs are the crops aot_compile compiles for.
  assert real.data.max_crops == real.train.images_per_row == aot.train.images_per_row
  tiny = _config(model, stage, "root=/data,init=/ckpt,preset=tiny")
  assert tiny.model.preset == "tiny" and tiny.train.global_batch == 2
  for path in ("optim", "data", "model.numerics"):  # the same recipe otherwise
    assert _get(tiny, path) == _get(real, path), path


def _get(cfg, path):
  for key in path.split("."):
    cfg = cfg[key]
  return cfg.to_dict()


def test_unknown_knobs_and_the_train_cli_stop_in_one_line(tmp_path):
  with pytest.raises(ValueError, match="unknown knob.*inti"):
    _config("xgenmm_4b", "sft", "root=/d,inti=/c")
  workdir = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, "-m", "bliperax.train",
       "--config=experiments/xgenmm_14b/pretrain.py:root=/data", f"--workdir={workdir}"],
      cwd=ROOT, env=_ENV, capture_output=True, text=True, timeout=120, check=False)
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert result.returncode != 0 and len(lines) == 1, result.stderr[-3000:]
  assert "needs init=DIR" in lines[0] and "root=DIR" not in lines[0]
  assert not workdir.exists()


def test_a_missing_init_or_shard_folder_stops_the_trainer_before_it_creates_anything(
    tmp_path, paper_data):
  from bliperax.train import trainer  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  no_init = _config("xgenmm_4b", "sft", f"root={paper_data},init={tmp_path / 'nope'},preset=tiny")
  with pytest.raises(trainer.InvalidRun, match="model.init_from.*nope"):
    trainer.train(no_init, str(workdir))
  no_data = _config("xgenmm_4b", "sft", f"root={tmp_path / 'empty'},init=random,preset=tiny")
  with pytest.raises(trainer.InvalidRun, match="data source 'sft'.*empty/sft_1m"):
    trainer.train(no_data, str(workdir))
  assert not workdir.exists()


@pytest.fixture(name="compilation_cache")
def _compilation_cache(tmp_path):
  """JAX's persistent compilation cache in a folder of the test's own, then off again.

  The stages' state inits compile to the same program (same model, optimizer and
  row length), so the second and third read it back (~5 s each on 2 cores).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
  before = {name: getattr(jax.config, name) for name in names}
  jax.config.update(names[0], str(tmp_path / "jax_cache"))
  jax.config.update(names[1], 0)
  compilation_cache.reset_cache()  # set up again at the next compile, with this folder
  yield
  for name, value in before.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


@pytest.fixture(scope="module", name="paper_data")
def _paper_data(tmp_path_factory):
  """The tiny paper-layout shards, written by the real command."""
  root = tmp_path_factory.mktemp("paper_shards")
  subprocess.run([sys.executable, "-m", "bliperax.data.example_shards", f"--out={root}",
                  "--layout=paper", "--num=8"], cwd=ROOT, env=_ENV, check=True,
                 capture_output=True, timeout=120)
  return root


def test_the_paper_layout_has_every_mixture_folder(paper_data):
  from bliperax.data import records  # pylint: disable=g-import-not-at-top
  from bliperax.data import schema  # pylint: disable=g-import-not-at-top
  expected = {"caption": (schema.Caption, "caption"), "ocr": (schema.Caption, "ocr"),
              "grounding": (schema.Caption, "grounding"),
              "interleaved": (schema.Interleaved, None), "chat": (schema.Chat, None),
              "multi_image_chat": (schema.Chat, None),
              "preference": (schema.Preference, None)}
  folders = mixtures.folders()
  assert set(folders.values()) == set(expected)
  for folder, content in folders.items():
    samples = list(records.read_samples(str(paper_data / folder)))
    kind, task = expected[content]
    assert len(samples) == 8 and all(isinstance(s, kind) for s in samples), folder
    if task:
      assert {s.task for s in samples} == {task}
    if task in ("ocr", "grounding"):
      assert all("<bbox>" in s.text for s in samples)
    if content == "multi_image_chat":
      assert min(len(s.images) for s in samples) >= 2


def _tiny_backbones(path: pathlib.Path, preset: str = "tiny") -> pathlib.Path:
  """A random tiny parameter checkpoint: the stand-in for the backbones conversion.

  Drawn with numpy on the abstract parameter tree (nothing to compile), unscanned
  like a conversion's output, so the trainer restacks it for the scanned configs.
  """
  from bliperax.convert import layout  # pylint: disable=g-import-not-at-top
  from bliperax.convert import params_io  # pylint: disable=g-import-not-at-top
  from bliperax.models import presets  # pylint: disable=g-import-not-at-top
  from bliperax.models import xgenmm  # pylint: disable=g-import-not-at-top
  cfg = presets.get(preset)
  rng = np.random.default_rng(0)
  flat = layout.flatten(params_io.flax_unbox(xgenmm.abstract_params(cfg)))
  params = {k: (0.02 * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in flat.items()}
  return params_io.save_params(path, layout.unflatten(params), cfg)


def _export(workdir: pathlib.Path, output: pathlib.Path) -> dict:
  result = subprocess.run([sys.executable, "-m", "bliperax.export",
                           f"--checkpoint={workdir}", f"--output={output}"],
                          cwd=ROOT, env=_ENV, capture_output=True, text=True, timeout=300,
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_14b_stages_shrink_to_the_4b_ones():
  """So the chain below, run once on the 4B configs, is the 14B configs' run too."""
  knobs = "root=/data,init=/ckpt,preset=tiny,steps=2,workers=0"
  for stage in STAGES:
    assert _config("xgenmm_14b", stage, knobs) == _config("xgenmm_4b", stage, knobs), stage


def test_the_stages_chain_on_the_tiny_paper_shards(paper_data, compilation_cache, tmp_path):
  del compilation_cache  # used for its effect
  from bliperax.infer import checkpoints  # pylint: disable=g-import-not-at-top
  from bliperax.train import trainer  # pylint: disable=g-import-not-at-top
  knobs = f"root={paper_data},preset=tiny,steps=2,workers=0"
  init, prev = _tiny_backbones(tmp_path / "backbones"), None
  # Another model's weights stop the run in one line, before the step compiles.
  other = _tiny_backbones(tmp_path / "gqa_backbones", "tiny_gqa")
  with pytest.raises(trainer.InvalidRun, match=r"parameter lm/.* has shape"):
    trainer.train(_config("xgenmm_4b", "pretrain", f"{knobs},init={other}"),
                  str(tmp_path / "other"))
  for stage in STAGES:
    cfg = _config("xgenmm_4b", stage, f"{knobs},init={init}")
    workdir = tmp_path / stage
    result = trainer.train(cfg, str(workdir))
    assert result["step"] == 2 and result["loss"] > 0, (stage, result)
    record = json.loads((workdir / run_record.FILENAME).read_text())
    assert record["inputs"]["init"]["path"] == str(init)
    sources = record["inputs"]["data"]["sources"]
    assert set(sources) == {s.name for s in mixtures.MIXTURES[stage]}
    assert all(s["shards"] == 2 and s["bytes"] > 0 for s in sources.values())
    if prev:  # the previous stage's export, named as such
      assert record["inputs"]["init"]["source"] == {
          "workdir": str(tmp_path / prev), "step": 2,
          "run_record": run_record.digest(
              json.loads((tmp_path / prev / run_record.FILENAME).read_text()))}
    if stage == STAGES[-1]:
      break
    output = tmp_path / f"{stage}_params"
    if prev is None:  # the command once; the second export is the library call it makes
      assert _export(workdir, output)["output"] == str(output)
    else:
      checkpoints.export(workdir, output)
    init, prev = output, stage


@pytest.fixture(name="bucket")
def _bucket(monkeypatch):
  """A local GCS emulator's bucket URL, with every client pointed at it."""
  if not gcs_emulator.available():
    pytest.skip("gcp-storage-emulator is not installed (pip install -e '.[test]')")
  # stop=False: tensorboardX's bucket writer uploads once more when it is
  # collected, possibly at interpreter exit; the emulator ends with this process.
  with gcs_emulator.running(stop=False) as env:
    for name, value in env.items():
      monkeypatch.setenv(name, value)
    yield f"gs://{gcs_emulator.BUCKET}"


def test_a_stage_reads_and_writes_a_bucket(paper_data, compilation_cache, bucket, tmp_path):
  """root=, init=, --workdir and the export all on gs://: the pod's shared storage."""
  del compilation_cache  # used for its effect
  from etils import epath  # pylint: disable=g-import-not-at-top
  from bliperax.convert import params_io  # pylint: disable=g-import-not-at-top
  from bliperax.infer import checkpoints  # pylint: disable=g-import-not-at-top
  from bliperax.train import trainer  # pylint: disable=g-import-not-at-top
  gcs_emulator.upload(paper_data, f"{bucket}/shards")
  init = _tiny_backbones(f"{bucket}/backbones")  # written by params_io into the bucket
  assert str(init) == f"{bucket}/backbones"
  knobs = f"root={bucket}/shards,init={init},preset=tiny,steps=2,workers=0"
  cfg = _config("xgenmm_4b", "pretrain", knobs)
  workdir = f"{bucket}/runs/pretrain"
  result = trainer.train(cfg, workdir)
  assert result["step"] == 2 and result["loss"] > 0, result
  run = epath.Path(workdir)
  record = json.loads((run / run_record.FILENAME).read_text())
  assert record["inputs"]["init"]["path"] == str(init)
  assert all(s["paths"].startswith(f"{bucket}/shards/")
             for s in record["config"]["data"]["sources"].values())
  sources = record["inputs"]["data"]["sources"]
  assert all(s["shards"] == 2 and s["bytes"] > 0 for s in sources.values()), sources
  logged = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in logged][-1] == 2 and logged[-1]["loss"] == result["loss"]
  # The same run again: restored from the bucket's checkpoint, nothing left to train.
  again = trainer.train(cfg, workdir)
  assert again["step"] == 2
  # Export bucket -> bucket: the params alone, equal to what the checkpoint holds.
  output = f"{bucket}/pretrain_params"
  written = checkpoints.export(workdir, output)
  assert str(written) == output
  exported, _, _ = params_io.load_params(output)
  local = checkpoints.export(workdir, tmp_path / "local_params")
  from_local, _, _ = params_io.load_params(local)
  for a, b in zip(jax_leaves(exported), jax_leaves(from_local), strict=True):
    np.testing.assert_array_equal(a, b)
  card = json.loads((epath.Path(output) / params_io.CARD).read_text())
  assert card["source"]["workdir"] == workdir and card["source"]["step"] == 2


def jax_leaves(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree.leaves(tree)
