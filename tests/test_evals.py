"""Evaluators inside training (config.evals): the digits SFT stage's, in the short run,
recomputed from its final checkpoint; a few-shot evaluator; config errors."""
import json
import math

import ml_collections
import pytest

from bliperax.data import tokenizer as tokenizer_lib
from bliperax.infer import checkpoints
from bliperax.infer import evaluate as eval_lib
from bliperax.train import evals as evals_lib
from bliperax.train import trainer
from digits_run import config, digits_benchmarks, short_run

@pytest.fixture(scope="module")
def run():
  return short_run()


def _records(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_short_sft_run_logs_its_evaluators(run):
  """Two of the digits SFT config's evaluators (every 200 steps and at the last) ran at
  step 3 of the 3-step run, on the parameters of step 3: the final checkpoint gives the
  same accuracy and perplexity."""
  records = _records(run["sft"])
  assert [r["step"] for r in records] == [1, 2, 3]  # log_every=1
  assert not any(k.startswith("eval/") for r in records[:2] for k in r)
  last = records[-1]
  assert "loss" in last and last["eval_s"] > 0
  params, model_cfg = checkpoints.load(run["sft"])
  cfg = config("sft", run["data"], 3)
  spec = cfg.evals.vqa
  questions = eval_lib.questions_from_shards(spec.paths, spec.limit)
  expected = eval_lib.evaluate_task(params, model_cfg, questions, tokenizer_lib.Tokenizer(),
                                    spec.anyres, max_new_tokens=8, batch_size=64, system=None)
  assert last["eval/vqa/total"] == len(questions) == 4  # digits_run: eval_limit=4
  assert last["eval/vqa/correct"] == expected["correct"]
  assert last["eval/vqa/accuracy"] == expected["accuracy"]
  assert last["eval/sum_nll/perplexity"] == pytest.approx(math.exp(last["eval/sum_nll/nll"]),
                                                          rel=1e-12)
  again = evals_lib.Evaluator("sum_nll", cfg.evals.sum_nll, cfg).run(params, model_cfg)
  assert again["tokens"] == last["eval/sum_nll/tokens"] > 0
  # The same float32 forward, compiled for other input shardings: equal up to the order
  # of float32 sums over ~10 tokens of ~10 nats (a few ulps of 1e-7 relative each).
  assert again["nll"] == pytest.approx(last["eval/sum_nll/nll"], rel=1e-5)
  tags = _tensorboard_tags(run["sft"])
  assert {"eval/vqa/accuracy", "eval/sum_nll/perplexity", "loss"} <= tags


def _tensorboard_tags(workdir) -> set:
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  import struct  # pylint: disable=g-import-not-at-top
  tags = set()
  for path in (workdir / "tensorboard").glob("events.out.tfevents.*"):
    data = path.read_bytes()
    offset = 0
    while offset < len(data):  # TFRecord: length, crc, payload, crc
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      tags.update(v.tag for v in event.summary.value)
      offset += 16 + length
  return tags


def test_fewshot_evaluators_run_on_benchmark_files(run, tmp_path):
  """vqa_accuracy / cider entries: the benchmark's official metric of the params."""
  # tests/test_fewshot.py's sizes: in one pytest process its compiled programs serve.
  digits_benchmarks(tmp_path, num_eval=4, num_train=6)
  cfg = config("sft", run["data"], 3)
  params, model_cfg = checkpoints.load(run["pretrain_params"])
  vqa = ml_collections.ConfigDict(dict(
      kind="vqa_accuracy", benchmark="vqav2", data_dir=str(tmp_path / "vqa"),
      image_dir=str(tmp_path / "images"), shots=2, limit=3, every_steps=10,
      max_new_tokens=4, batch_size=2))
  metrics = evals_lib.Evaluator("digits_vqa", vqa, cfg).run(params, model_cfg)
  assert set(metrics) == {"accuracy"} and 0.0 <= metrics["accuracy"] <= 100.0
  cider = ml_collections.ConfigDict(dict(vqa, kind="cider", benchmark="coco_val2014",
                                         data_dir=str(tmp_path / "coco")))
  with pytest.raises(ValueError, match="evals.caps: benchmark coco_val2014 is scored by "
                                       "cider, not vqa_accuracy"):
    evals_lib.Evaluator("caps", ml_collections.ConfigDict(dict(cider, kind="vqa_accuracy")),
                        cfg)
  with pytest.raises(ValueError, match="evals.caps: missing file .*captions_val2014.json"):
    evals_lib.Evaluator("caps", ml_collections.ConfigDict(dict(cider, data_dir=str(tmp_path))),
                        cfg)
  assert evals_lib.Evaluator("caps", cider, cfg).due(10)


def test_evaluator_config_errors_stop_the_run_before_it_starts(run, tmp_path):
  cfg = config("sft", run["data"], 3)
  cfg.model.init_from = str(run["pretrain_params"])
  good = cfg.evals.vqa
  cases = [
      (dict(good, kind="bleu"), "evals.x: kind 'bleu' is not one of exact_match"),
      (dict(good, shots=2), "evals.x: unknown key(s) shots for kind exact_match"),
      (dict(good, every_steps=0), "evals.x: needs every_steps >= 1"),
      (dict(good, paths=""), "evals.x: needs paths"),
      (dict(good, paths=str(tmp_path / "none")), f"evals.x: paths {tmp_path / 'none'}"),
      (dict(good, paths=str(run["data"] / "train" / "caption")), "single-turn chats"),
  ]
  for spec, message in cases:
    cfg.evals = ml_collections.ConfigDict({"x": spec})
    with pytest.raises(trainer.InvalidRun, match=message.replace("(", r"\(").replace(")", r"\)")):
      trainer.train(cfg, str(tmp_path / "work"))
    assert not (tmp_path / "work").exists()  # refused before anything was created


def test_due_every_steps_and_at_the_end(run):
  cfg = config("sft", run["data"], 10)
  e = evals_lib.Evaluator("vqa", ml_collections.ConfigDict(dict(cfg.evals.vqa, every_steps=4)),
                          cfg)
  assert [s for s in range(1, 11) if e.due(s)] == [4, 8, 10]
