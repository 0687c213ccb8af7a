"""Scoring a predictions file against a benchmark's eval split, and its table.

`score_file` is what `python -m bliperax.evaluate --benchmark=NAME --data_dir=DIR
--predictions=FILE` runs; `score_samples` is the same on samples and texts already
in memory (for an evaluation that just generated them).
"""
from __future__ import annotations

import pathlib
from typing import Dict, Sequence, Union

from bliperax.benchmarks import caption_metrics, predictions as predictions_lib, vqa_accuracy
from bliperax.benchmarks.records import Sample
from bliperax.benchmarks.registry import Benchmark


def score_samples(benchmark: Benchmark, samples: Sequence[Sample], texts: Sequence[str],
                  tokenizer: str = "auto") -> Dict:
  """Official metrics of `texts` (one per sample, in order).

  VQA: {"accuracy" (percent, 2 decimals), "perAnswerType", "perQuestionType",
  "perQuestion" (percent per sample), "questions"}. Captioning: {"CIDEr", "Bleu_4"
  (pycocoevalcap's, unscaled), "tokenizer", "images"}, and "perDomain" for NoCaps.
  """
  head = {"benchmark": benchmark.name, "title": benchmark.title, "metric": benchmark.metric}
  if benchmark.task == "vqa":
    acc = vqa_accuracy.accuracy(texts, [s.answers for s in samples],
                                [s.answer_type for s in samples],
                                [s.question_type for s in samples])
    return dict(head, accuracy=acc["overall"], perAnswerType=acc["perAnswerType"],
                perQuestionType=acc["perQuestionType"], questions=len(samples),
                perQuestion={str(s.id): a for s, a in zip(samples, acc["perQuestion"])})
  domains = [s.domain for s in samples]
  result = caption_metrics.score([s.answers for s in samples], texts, tokenizer,
                                 groups=domains if any(domains) else None)
  per_domain = result.pop("perGroup", None)
  out = dict(head, **result)
  if per_domain is not None:
    out["perDomain"] = per_domain
  return out


def score_file(benchmark: Benchmark, data_dir: Union[str, pathlib.Path],
               predictions_path: Union[str, pathlib.Path], partial: bool = False,
               tokenizer: str = "auto") -> Dict:
  """Reads the eval split and the predictions file, checks them, scores."""
  samples = benchmark.read(data_dir, "eval")
  predicted = predictions_lib.load(predictions_path, benchmark)
  kept, texts = predictions_lib.align(samples, predicted, benchmark, predictions_path,
                                      partial)
  result = score_samples(benchmark, kept, texts, tokenizer)
  result["predictions"] = str(predictions_path)
  result["data_dir"] = str(data_dir)
  if len(kept) < len(samples):
    result["partial"] = f"{len(kept)} of {len(samples)}"
  return result


def summary(result: Dict) -> Dict:
  """The result without its per-question and per-question-type tables."""
  return {k: v for k, v in result.items() if k not in ("perQuestion", "perQuestionType")}


def table(result: Dict) -> str:
  """A few lines for a terminal: the metric overall and per answer type / domain."""
  partial = f" (partial: {result['partial']})" if result.get("partial") else ""
  if result["metric"] == "accuracy":
    lines = [f"{result['title']}: VQA accuracy (official VQA evaluation), "
             f"{result['questions']:,} questions{partial}",
             f"{'answer type':<14} {'accuracy':>9}"]
    for t, v in sorted(result["perAnswerType"].items()):
      lines.append(f"{t:<14} {v:>9.2f}")
    lines.append(f"{'overall':<14} {result['accuracy']:>9.2f}")
    return "\n".join(lines)
  lines = [f"{result['title']}: captioning (pycocoevalcap), {result['images']:,} images"
           f"{partial}", f"tokenizer: {result['tokenizer']}",
           f"{'':<14} {'CIDEr':>8} {'x100':>8} {'Bleu_4':>8} {'x100':>8} {'images':>7}"]
  rows = [(d, r) for d, r in result.get("perDomain", {}).items()] + [("overall", result)]
  for name, r in rows:
    lines.append(f"{name:<14} {r['CIDEr']:>8.4f} {100 * r['CIDEr']:>8.2f} "
                 f"{r['Bleu_4']:>8.4f} {100 * r['Bleu_4']:>8.2f} {r['images']:>7,}")
  return "\n".join(lines)
