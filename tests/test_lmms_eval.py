"""The lmms-eval model: requests as lmms-eval builds them (Instance.args, task_dict) on
the short digits run's checkpoint; with lmms-eval itself where it is installed."""
import importlib.util
import json
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from bliperax.data import batch as batch_lib
from bliperax.data import batch_spec
from bliperax.data import digits
from bliperax.data import tokenizer as tokenizer_lib
from bliperax.infer import evaluate as eval_lib
from bliperax.integrations import lmms_requests
from bliperax.models.xgenmm import XGenMM
from digits_run import digits_benchmarks, short_run

TASK, SPLIT = "digits_task", "test"


def _instance(kind, args):
  """What the model reads of lmms-eval's Instance: `.args` (and the request type)."""
  return types.SimpleNamespace(request_type=kind, args=args)


@pytest.fixture(scope="module")
def model():
  """The SFT chat model without a system turn, as it was fine-tuned; docs of 3 digits."""
  m = lmms_requests.Requests(str(short_run()["sft"]), batch_size=2, system="none",
                             max_new_tokens=5)
  train, _ = digits.load_splits()
  m.task_dict = {TASK: {SPLIT: [
      {"images": [digits.digit_image(train.images[i])], "label": str(train.labels[i])}
      for i in range(3)] + [
      {"images": [digits.digit_image(train.images[3]), digits.digit_image(train.images[4])]},
      {"images": []}]}}
  return m


def _visual(doc):
  return doc["images"]


def test_generate_until_equals_the_chat_prompts_answered_directly(model):
  tokenizer = model.tokenizer
  docs = model.task_dict[TASK][SPLIT]
  requests = [
      _instance("generate_until", ("What digit is this?", {"max_new_tokens": 5}, _visual,
                                   0, TASK, SPLIT)),
      _instance("generate_until", ("What is the sum of these digits?",
                                   {"max_new_tokens": 3, "until": ["\n"]}, _visual, 3, TASK,
                                   SPLIT)),
      _instance("generate_until", ("First <image> then <image>: which is larger?",
                                   {"max_new_tokens": 5, "until": "1"}, _visual, 3, TASK,
                                   SPLIT)),
      _instance("generate_until", ("What is two plus two?", {}, _visual, 4, TASK, SPLIT)),
      _instance("generate_until", ("What digit is this?", {"max_new_tokens": 5}, _visual,
                                   1, TASK, SPLIT)),
  ]
  got = model.generate_until(requests)
  # The same prompts written out: markers in front (one "<image>\n" per image) unless
  # the context places them; no system turn; anyres crops. Answered in the model's
  # groups (one per max_new_tokens) and batch size, so the compiled programs serve
  # (batched == one by one is tests/test_cli_infer.py's).
  expected_prompts = [
      ("<image>\nWhat digit is this?", docs[0]["images"], 5, ()),
      ("<image>\n<image>\nWhat is the sum of these digits?", docs[3]["images"], 3, ("\n",)),
      ("First <image> then <image>: which is larger?", docs[3]["images"], 5, ("1",)),
      ("What is two plus two?", [], 5, ()),
      ("<image>\nWhat digit is this?", docs[1]["images"], 5, ()),
  ]
  examples = [eval_lib.prompt_example(q, images, model.model_cfg, tokenizer, anyres=True,
                                      system=None) for q, images, _, _ in expected_prompts]
  answers = {}
  for max_new in (5, 3):
    group = [i for i, p in enumerate(expected_prompts) if p[2] == max_new]
    texts = eval_lib.answer(model.params, model.model_cfg, [examples[i] for i in group],
                            tokenizer, max_new, batch_size=2)
    answers.update(zip(group, texts))
  for i, (_, _, _, until) in enumerate(expected_prompts):
    answer = answers[i]
    for s in until:
      answer = answer.split(s, 1)[0]
    assert got[i] == answer
  assert "<|end|>" not in "".join(got)


def _manual_losses(model, cases):
  """[(mean NLL of the continuation, greedy)] of (prompt ids, continuation ids, images)
  cases, from one jitted full forward of the concatenated ids (right-padded rows)."""
  examples = []
  for prompt_ids, continuation_ids, images in cases:
    vision = [batch_lib.prepare_image(im, model.model_cfg, True) for im in images]
    examples.append(batch_lib.expand(list(prompt_ids) + list(continuation_ids), None, vision,
                                     batch_spec.VisionDims.of(model.model_cfg)))
  batch = batch_lib.collate(examples, model.model_cfg, model.tokenizer.pad_id)
  forward = jax.jit(lambda params, inputs: XGenMM(model.model_cfg).apply(
      {"params": params}, **inputs))
  logits = forward(model.params, {k: jnp.asarray(batch[k]) for k in batch_spec.MODEL_KEYS})
  logp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1))
  out = []
  for row, (example, (_, continuation_ids, _)) in enumerate(zip(examples, cases)):
    t, n = len(example.tokens), len(continuation_ids)
    positions = range(t - n - 1, t - 1)  # position p predicts token p + 1
    out.append((-float(sum(logp[row, p, example.tokens[p + 1]] for p in positions)) / n,
                all(np.argmax(logp[row, p]) == example.tokens[p + 1] for p in positions)))
  return out


def test_loglikelihood_is_the_loss_of_a_full_forward(model):
  tokenizer = model.tokenizer
  docs = model.task_dict[TASK][SPLIT]
  requests = [
      _instance("loglikelihood", ("What digit is this?", " 7", _visual, 0, TASK, SPLIT)),
      _instance("loglikelihood", ("What digit is this?", lambda doc: doc["label"], _visual,
                                  1, TASK, SPLIT)),
      _instance("loglikelihood", ("What is two plus two?", "4", _visual, 4, TASK, SPLIT)),
  ]
  got = model.loglikelihood(requests)
  chat = "<|user|>\n<image>\nWhat digit is this?<|end|>\n<|assistant|>\n"
  cases = [(chat, " 7", docs[0]["images"]), (chat, docs[1]["label"], docs[1]["images"]),
           ("<|user|>\nWhat is two plus two?<|end|>\n<|assistant|>\n", "4", [])]
  manual_cases = []
  for prompt, text, images in cases:
    # The continuation's ids: those the whole string adds after the prompt's own.
    prompt_ids, ids = tokenizer.encode(prompt), tokenizer.encode(prompt + text)
    assert ids[:len(prompt_ids)] == prompt_ids and len(ids) > len(prompt_ids)
    manual_cases.append((prompt_ids, ids[len(prompt_ids):], images))
  for (loss, greedy), (expected, expected_greedy) in zip(
      got, _manual_losses(model, manual_cases)):
    # lmms-eval's convention: a loss (lower = likelier). float32 forwards of other batch
    # layouts: means of 1-2 NLLs of ~10 nats agree to float32 round-off (~1e-7 relative
    # per operation).
    assert loss == pytest.approx(expected, rel=1e-5)
    assert greedy == expected_greedy
    assert loss > 0


def test_requests_bliperax_cannot_answer(model):
  bad_markers = _instance("generate_until", ("<image> <image> two?", {}, _visual, 0, TASK,
                                             SPLIT))
  with pytest.raises(lmms_requests.RequestError,
                     match=f"task {TASK} doc 0: the context has 2 <image> marker"):
    model.generate_until([bad_markers])
  video = _instance("loglikelihood", ("Q?", " a", lambda doc: ["clip.mp4"], 0, TASK, SPLIT))
  with pytest.raises(lmms_requests.RequestError, match="reads images; doc_to_visual gave a str"):
    model.loglikelihood([video])
  with pytest.raises(ValueError, match="prompt='fewshot': one of chat, base"):
    lmms_requests.Requests(str(short_run()["sft"]), prompt="fewshot")


@pytest.mark.slow  # needs the `lmms` extra (lmms-eval: ~90 packages, torch); CI installs it
@pytest.mark.skipif(importlib.util.find_spec("lmms_eval") is None,
                    reason='lmms-eval is not installed (pip install -e ".[lmms]")')
def test_lmms_eval_resolves_and_calls_the_model(model):
  """lmms-eval's own registry finds `bliperax` (setup.py's entry point), builds it from
  --model_args, and its Instance objects get the answers the requests above get."""
  from lmms_eval import models  # pylint: disable=g-import-not-at-top
  from lmms_eval.api.instance import Instance  # pylint: disable=g-import-not-at-top
  cls = models.get_model("bliperax")
  lm = cls.create_from_arg_string(
      f"checkpoint={short_run()['sft']},system=none,max_new_tokens=5", {"batch_size": 2})
  lm.task_dict = model.task_dict
  meta = {"task": TASK, "doc_id": 0, "repeats": 1}
  gen = [Instance("generate_until", ("What digit is this?", {"until": ["\n"]}, _visual, i,
                                     TASK, SPLIT), idx=0, metadata=dict(meta, doc_id=i))
         for i in range(3)]
  assert lm.generate_until(gen) == model.generate_until(gen)
  ll = [Instance("loglikelihood", ("What digit is this?", f" {d}", _visual, 0, TASK, SPLIT),
                 idx=d, metadata=meta) for d in range(3)]
  assert lm.loglikelihood(ll) == model.loglikelihood(ll)
  assert (lm.rank, lm.world_size) == (0, 1)


_TASK_UTILS = '''from PIL import Image


def doc_to_visual(doc):
  return [Image.open(doc["image"]).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
  return doc["question"]


def process_results(doc, results):
  return {"exact_match": float(results[0].strip() == doc["answer"])}
'''

_TASK_YAML = '''task: digits_vqa
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 4
  until: ["\\n"]
process_results: !function utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
'''


def write_digits_task(folder, bench_dir):
  """An lmms-eval task over the VQAv2-format digits files: local JSON lines, images by
  path (no download); returns the rows."""
  from bliperax import benchmarks  # pylint: disable=g-import-not-at-top
  rows = [{"image": str(bench_dir / "images" / s.image), "question": s.question,
           "answer": s.answers[0]} for s in benchmarks.get("vqav2").read(bench_dir / "vqa")]
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "digits.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (folder / "utils.py").write_text(_TASK_UTILS)
  (folder / "digits_vqa.yaml").write_text(_TASK_YAML.format(data=folder / "digits.jsonl"))
  return rows


@pytest.mark.slow  # lmms-eval's CLI: its imports, the task, a model load and compiles
@pytest.mark.skipif(importlib.util.find_spec("lmms_eval") is None,
                    reason='lmms-eval is not installed (pip install -e ".[lmms]")')
def test_python_m_lmms_eval_runs_a_task_on_a_checkpoint(model, tmp_path):
  """`python -m lmms_eval --model bliperax --model_args checkpoint=DIR` on a local task:
  its score is the exact match of the answers Requests gives the same documents."""
  rows = write_digits_task(tmp_path / "task", digits_benchmarks(tmp_path / "bench", 6, 2))
  ckpt = short_run()["sft"]
  proc = subprocess.run(
      [sys.executable, "-m", "lmms_eval", "--model", "bliperax", "--model_args",
       f"checkpoint={ckpt},system=none,anyres=false", "--tasks", "digits_vqa",
       "--include_path", str(tmp_path / "task"), "--batch_size", "4",
       "--output_path", str(tmp_path / "out")],
      env=dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu"),
      capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  results = json.loads(next((tmp_path / "out").rglob("*_results.json")).read_text())
  score = results["results"]["digits_vqa"]["exact_match,none"]
  ours = lmms_requests.Requests(str(ckpt), batch_size=4, system="none", anyres=False)
  docs = [dict(r, images=[Image.open(r["image"]).convert("RGB")]) for r in rows]
  ours.task_dict = {"digits_vqa": {"test": docs}}
  answers = ours.generate_until([
      _instance("generate_until", (r["question"], {"max_new_tokens": 4, "until": ["\n"]},
                                   _visual, i, "digits_vqa", "test"))
      for i, r in enumerate(rows)])
  assert score == pytest.approx(np.mean([a.strip() == r["answer"]
                                         for a, r in zip(answers, rows)]), abs=1e-12)
