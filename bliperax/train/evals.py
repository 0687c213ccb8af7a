"""Evaluators that run inside training (`config.evals`), as big_vision's and Kauldron's.

`config.evals` maps a name to an evaluator: a `kind`, `every_steps` and the kind's
keys. Each runs at every multiple of its `every_steps` and at the last step, on the
current parameters; its metrics join that step's record in metrics.jsonl and
TensorBoard as `eval/<name>/<metric>` (the trainer logs every step an evaluator runs).

kind          keys (default)                                       metrics
exact_match   paths, limit (0 = all), anyres (False),              accuracy (fraction),
              max_new_tokens (8), batch_size (64), system           correct, total
              (default: data.system): single-turn chats, greedy answers (infer/evaluate.py)
perplexity    paths, limit, anyres, batch_size (16), system:       nll (nats per token),
              any sample kind, rendered as in training              perplexity, tokens
vqa_accuracy  benchmark, data_dir, image_dir, shots (0), seed (0),  accuracy (percent, the
              limit, max_new_tokens (0 = the task's), batch_size    official metric)
              (16), anyres: few-shot, as python -m bliperax.evaluate --benchmark
cider         the same keys, a captioning benchmark                 CIDEr, Bleu_4

Every evaluator reads its inputs when the run starts (`build`), so a wrong path or
key stops the run before its first step. Evaluators run in every process on the same
inputs (the parameters are global arrays); process 0 writes the metrics.
"""
from __future__ import annotations

import math
import pathlib
import time
from typing import Dict, List

import ml_collections

from bliperax.data import chat as chat_lib
from bliperax.data import tokenizer as tokenizer_lib

KEYS = {
    "exact_match": {"paths", "limit", "anyres", "max_new_tokens", "batch_size", "system"},
    "perplexity": {"paths", "limit", "anyres", "batch_size", "system"},
    "vqa_accuracy": {"benchmark", "data_dir", "image_dir", "shots", "seed", "limit",
                     "max_new_tokens", "batch_size", "anyres"},
}
KEYS["cider"] = KEYS["vqa_accuracy"]
REQUIRED = {"exact_match": ("paths",), "perplexity": ("paths",),
            "vqa_accuracy": ("benchmark", "data_dir", "image_dir"),
            "cider": ("benchmark", "data_dir", "image_dir")}


class Evaluator:
  """One `config.evals` entry: `due(step)`, and `run(params, model_cfg)` -> metrics."""

  def __init__(self, name: str, spec: ml_collections.ConfigDict, cfg: ml_collections.ConfigDict):
    self.name, self.spec = name, spec
    self.kind = spec.get("kind")
    self.every_steps = int(spec.get("every_steps", 0))
    self.total_steps = int(cfg.total_steps)
    self.tokenizer = tokenizer_lib.Tokenizer(
        cfg.data.get("tokenizer") or None,
        reference_compatible=bool(cfg.data.get("reference_compatible", False)))
    self.system = spec.get("system", cfg.data.get("system", chat_lib.SYSTEM_PROMPT))
    self._examples = None  # perplexity: rendered once, on the first run
    self._read_inputs()

  def _fail(self, message: str):
    raise ValueError(f"config evals.{self.name}: {message}")

  def _read_inputs(self) -> None:
    """Checks the spec and reads what it names (fails before training starts)."""
    if self.kind not in KEYS:
      self._fail(f"kind {self.kind!r} is not one of {', '.join(KEYS)}")
    unknown = set(self.spec.keys()) - KEYS[self.kind] - {"kind", "every_steps"}
    if unknown:
      self._fail(f"unknown key(s) {', '.join(sorted(unknown))} for kind {self.kind} "
                 f"(known: every_steps, {', '.join(sorted(KEYS[self.kind]))})")
    missing = [k for k in REQUIRED[self.kind] if not self.spec.get(k)]
    if missing or self.every_steps < 1:
      self._fail(f"needs {', '.join(missing + ['every_steps >= 1'] * (self.every_steps < 1))}")
    limit = int(self.spec.get("limit", 0))
    if self.kind in ("exact_match", "perplexity"):
      from bliperax.data import records  # pylint: disable=g-import-not-at-top
      from bliperax.infer import evaluate as eval_lib  # pylint: disable=g-import-not-at-top
      try:
        if self.kind == "exact_match":
          self.inputs = eval_lib.questions_from_shards(self.spec.paths, limit)
        else:
          samples = records.read_samples(self.spec.paths)
          self.inputs = [s for s, _ in zip(samples, range(limit or math.inf))]
      except (ValueError, OSError) as e:  # no shards there, not single-turn chats
        self._fail(f"paths {self.spec.paths}: {e}")
      return
    from bliperax import benchmarks  # pylint: disable=g-import-not-at-top
    try:
      self.bench = benchmarks.get(self.spec.benchmark)
      task = "vqa" if self.kind == "vqa_accuracy" else "caption"
      if self.bench.task != task:
        self._fail(f"benchmark {self.bench.name} is scored by "
                   f"{'vqa_accuracy' if self.bench.task == 'vqa' else 'cider'}, not {self.kind}")
      self.bench.read(self.spec.data_dir)  # the files exist and are this benchmark's
    except benchmarks.BenchmarkError as e:
      self._fail(str(e))
    if not pathlib.Path(self.spec.image_dir).is_dir():
      self._fail(f"image_dir {self.spec.image_dir} is not a folder")

  def due(self, step: int) -> bool:
    return step % self.every_steps == 0 or step == self.total_steps

  def run(self, params, model_cfg) -> Dict[str, float]:
    """The metrics of `params` (unprefixed)."""
    anyres = bool(self.spec.get("anyres", False))
    if self.kind == "exact_match":
      from bliperax.infer import evaluate as eval_lib  # pylint: disable=g-import-not-at-top
      r = eval_lib.evaluate_task(params, model_cfg, self.inputs, self.tokenizer, anyres,
                                 max_new_tokens=int(self.spec.get("max_new_tokens", 8)),
                                 batch_size=int(self.spec.get("batch_size", 64)),
                                 system=self.system)
      return {"accuracy": r["accuracy"], "correct": r["correct"], "total": r["total"]}
    if self.kind == "perplexity":
      return self._perplexity(params, model_cfg, anyres)
    from bliperax.infer import fewshot  # pylint: disable=g-import-not-at-top
    shots = int(self.spec.get("shots", 0))
    r = fewshot.evaluate(
        params, model_cfg, self.tokenizer, self.bench, self.spec.data_dir,
        self.spec.image_dir, (shots,), seed=int(self.spec.get("seed", 0)),
        limit=int(self.spec.get("limit", 0)), batch_size=int(self.spec.get("batch_size", 16)),
        max_new_tokens=int(self.spec.get("max_new_tokens", 0)), anyres=anyres)[shots]
    if self.kind == "vqa_accuracy":
      return {"accuracy": r["accuracy"]}
    return {"CIDEr": r["CIDEr"], "Bleu_4": r["Bleu_4"]}

  def _perplexity(self, params, model_cfg, anyres: bool) -> Dict[str, float]:
    # pylint: disable=g-import-not-at-top
    from bliperax.data import batch as batch_lib, batch_spec, render
    from bliperax.data.image import decode_image
    from bliperax.infer import score
    if self._examples is None:
      options = render.RenderOptions(max_images=0, system=self.system)
      dims = batch_spec.VisionDims.of(model_cfg)
      self._examples = []
      for sample in self.inputs:
        r = render.render(sample, self.tokenizer, options)
        vision = [batch_lib.prepare_image(decode_image(im), model_cfg, anyres)
                  for im in r.images]
        self._examples.append(batch_lib.expand(r.ids, r.labels, vision, dims))
    scores = score.score(params, model_cfg, self._examples, self.tokenizer.pad_id,
                         int(self.spec.get("batch_size", 16)))
    tokens = sum(s.tokens for s in scores)
    nll = sum(s.nll for s in scores) / max(tokens, 1)
    return {"nll": nll, "perplexity": math.exp(nll), "tokens": tokens}


def build(cfg: ml_collections.ConfigDict) -> List[Evaluator]:
  """The evaluators of `cfg.evals` (none without it); ValueError names a bad entry."""
  evals = cfg.get("evals") or {}
  return [Evaluator(name, evals[name], cfg) for name in evals]


def run(evaluators: List[Evaluator], step: int, params, model_cfg) -> Dict[str, float]:
  """`eval/<name>/<metric>` of the evaluators due at `step`, and their seconds."""
  out: Dict[str, float] = {}
  t0 = time.time()
  for e in evaluators:
    if e.due(step):
      out.update({f"eval/{e.name}/{k}": v for k, v in e.run(params, model_cfg).items()})
  if out:
    out["eval_s"] = time.time() - t0
  return out
