"""A short digits run (tiny data, few steps) shared by the digits and CLI tests.

`short_run()` builds it once per test process: data, 2 pre-training steps,
export of the params, 3 fine-tuning steps. `short_post_run()` continues it as the
main job's last stages do: export of the SFT params, preference pairs from a few
training sums (tools/make_preferences.py's library) and 2 DPO steps
(experiments/digits/dpo.py); `short_control_run()` adds 2 steps of its control
(sft_control.py). The model barely learns; the
tests check the plumbing and the decoding, not accuracy.
"""
import atexit
import functools
import importlib.util
import pathlib
import shutil
import tempfile

import ml_collections

ROOT = pathlib.Path(__file__).resolve().parents[1]


def config(name: str, data: pathlib.Path, steps: int, knobs: str = ""):
  """experiments/digits/<name>.py at `steps` steps with rows small enough for tests (the
  SFT's in-training evaluators on 4 held-out questions per task); `knobs` adds
  ',k=v' knobs."""
  from bliperax import cli  # pylint: disable=g-import-not-at-top
  path = ROOT / "experiments" / "digits" / f"{name}.py"
  cfg = cli.load_config(f"{path}:root={data},steps={steps},batch=2,workers=0,eval_limit=4"
                        f"{knobs}")
  cfg.log_every = 1
  return cfg


@functools.lru_cache(maxsize=1)
def short_run() -> dict:
  """Paths of the run: data, pretrain, pretrain_params, sft (training workdirs)."""
  from bliperax.data import digits  # pylint: disable=g-import-not-at-top
  from bliperax.infer import checkpoints  # pylint: disable=g-import-not-at-top
  from bliperax.train import trainer  # pylint: disable=g-import-not-at-top
  work = pathlib.Path(tempfile.mkdtemp(prefix="bliperax_digits_"))
  atexit.register(shutil.rmtree, work, ignore_errors=True)
  data = work / "data"
  digits.write_dataset(data, num_sum=16, num_read=16, num_heldout=6, num_shards=1,
                        caption_copies=1, num_moved=8)
  trainer.train(config("pretrain", data, 2), str(work / "pretrain"))
  checkpoints.export(work / "pretrain", work / "pretrain_params")
  sft = config("sft", data, 3)
  sft.model.init_from = str(work / "pretrain_params")
  # Two of the SFT's in-training evaluators run at its last step (tests/test_evals.py);
  # each kind compiles its own programs, ~4 s apiece here.
  sft.evals = ml_collections.ConfigDict({k: sft.evals[k] for k in ("vqa", "sum_nll")})
  trainer.train(sft, str(work / "sft"))
  return {"work": work, "data": data, "pretrain": work / "pretrain",
          "pretrain_params": work / "pretrain_params", "sft": work / "sft"}


def _train(run: dict, name: str, knobs: str = "") -> pathlib.Path:
  """2 steps of experiments/digits/<name>.py from the run's SFT export -> WORK/<name>."""
  from bliperax.train import trainer  # pylint: disable=g-import-not-at-top
  cfg = config(name, run["data"], 2, knobs)
  cfg.model.init_from = str(run["sft_params"])
  trainer.train(cfg, str(run["work"] / name))
  return run["work"] / name


@functools.lru_cache(maxsize=1)
def short_post_run() -> dict:
  """short_run() plus: sft_params (its export), pairs (PAIRS/sum preference shards from
  the 8 moved training sums, DPO's prompts), dpo (a 2-step DPO workdir from sft_params)."""
  from bliperax.data import records  # pylint: disable=g-import-not-at-top
  from bliperax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from bliperax.infer import checkpoints  # pylint: disable=g-import-not-at-top
  from bliperax.infer import preferences  # pylint: disable=g-import-not-at-top
  run = dict(short_run())
  work, data = run["work"], run["data"]
  run["sft_params"] = work / "sft_params"
  checkpoints.export(run["sft"], run["sft_params"])
  params, model_cfg = checkpoints.load(str(run["sft_params"]))
  # Noised images only (sampling compiles another program; tests/test_make_preferences.py
  # covers it): the barely trained model's answers all differ from the sums.
  options = preferences.Options(sampled=0, max_new_tokens=4, batch_size=8, anyres=False)
  run["pairs"] = work / "pairs"
  with records.ShardSetWriter(run["pairs"] / "sum", "preference", 1) as writer:
    tally = preferences.make_preferences(
        params, model_cfg, tokenizer_lib.Tokenizer(),
        records.open_shards([str(data / "train" / "sum_moved")]), writer, options, limit=8)
    writer.commit()
  run["pairs_tally"] = tally.summary()
  run["dpo"] = _train(run, "dpo", f",pairs={run['pairs']}")
  return run


@functools.lru_cache(maxsize=1)
def short_control_run() -> dict:
  """short_post_run() plus sft_control (2 steps of DPO's control from sft_params)."""
  run = dict(short_post_run())
  run["sft_control"] = _train(run, "sft_control")
  return run


@functools.lru_cache(maxsize=1)
def _benchmarks_tool():
  """tools/make_digits_benchmarks.py as a module, loaded once (its absl flags too)."""
  spec = importlib.util.spec_from_file_location(
      "make_digits_benchmarks", ROOT / "tools" / "make_digits_benchmarks.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def digits_benchmarks(out: pathlib.Path, num_eval: int, num_train: int) -> pathlib.Path:
  """VQAv2- and COCO-format files of digits under `out` (vqa/, coco/, images/)."""
  _benchmarks_tool().write(out, num_eval, num_train)
  return out
