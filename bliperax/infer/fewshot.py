"""Few-shot evaluation of a checkpoint on a benchmark: prompts, greedy answers, metric.

`evaluate` is what `python -m bliperax.evaluate --checkpoint=... --benchmark=NAME
--shots=0,4,8` runs: for each shot count, every eval-split question (or image) gets
its prompt (`bliperax.benchmarks.fewshot`: demonstrations from the train split, fixed
seed), the prompts are answered greedily in bucketed left-padded batches
(`infer.evaluate.answer`, stopping a row at `<|endofchunk|>` or an end token), the
answers are post-processed as the paper does (first line, stripped) and scored with
the benchmark's official metric (`benchmarks.score_samples`).

Prompts are built `CHUNK` batches at a time, so the host holds the crops of a few
batches, not of the whole benchmark (8 shots of VQAv2 = 9 images per question).
"""
from __future__ import annotations

import pathlib
import time
from typing import Callable, Dict, List, Optional, Sequence, Union

from bliperax.benchmarks import fewshot
from bliperax.benchmarks.records import BenchmarkError, Sample
from bliperax.benchmarks.registry import Benchmark
from bliperax.benchmarks.score import score_samples
from bliperax.data import tokenizer as tokenizer_lib
from bliperax.infer import evaluate as eval_lib
from bliperax.models.config import XGenMMConfig

# Tokens generated per answer unless told: OpenFlamingo's evaluation allows 5 for VQA
# and 20 for captions with its tokenizer; Phi-3's pieces are shorter, so a margin.
MAX_NEW_TOKENS = {"vqa": 10, "caption": 30}
CHUNK = 8  # batches of prompts prepared at a time


def _name(bench: Benchmark, sample: Sample) -> str:
  return f"{bench.title} {bench.id_keys[0]} {sample.id!r}"


def check_images(bench: Benchmark, queries: Sequence[Sample],
                 prompts: Sequence[fewshot.Prompt], image_dir: pathlib.Path) -> None:
  """Every image the prompts use exists (before any compute is spent), or a
  BenchmarkError naming the first missing file and its sample."""
  for query, prompt in zip(queries, prompts):
    for j, image in enumerate(prompt.images):
      if not (image_dir / image).is_file():
        role = "its image" if j == len(prompt.images) - 1 else "a demonstration's image"
        raise BenchmarkError(f"missing image {image_dir / image} ({role}, for "
                             f"{_name(bench, query)}; {bench.title}'s images: "
                             f"{bench.images}, under --image_dir)")


def answers(params, model_cfg: XGenMMConfig, tokenizer: tokenizer_lib.Tokenizer,
            bench: Benchmark, queries: Sequence[Sample], prompts: Sequence[fewshot.Prompt],
            image_dir: pathlib.Path, *, anyres: bool, max_new_tokens: int, batch_size: int,
            progress: Optional[Callable[[int], None]] = None) -> List[str]:
  """Post-processed greedy answers to `prompts` (one per query, in order)."""
  stops = (tokenizer.endofchunk_id, *tokenizer.eos_ids)
  out: List[str] = []
  step = batch_size * CHUNK
  for start in range(0, len(prompts), step):
    examples = []
    for query, prompt in zip(queries[start:start + step], prompts[start:start + step]):
      images = [(image_dir / p).read_bytes() for p in prompt.images]
      try:
        examples.append(eval_lib.text_example(prompt.text, images, model_cfg, tokenizer,
                                              anyres))
      except ValueError as e:  # an undecodable image
        raise BenchmarkError(f"{_name(bench, query)} ({', '.join(prompt.images)}): {e}") from e
    texts = eval_lib.answer(
        params, model_cfg, examples, tokenizer, max_new_tokens, batch_size,
        progress=None if progress is None else (lambda n, s=start: progress(s + n)),
        eos_ids=stops)
    out.extend(fewshot.postprocess(t) for t in texts)
  return out


def evaluate(params, model_cfg: XGenMMConfig, tokenizer: tokenizer_lib.Tokenizer,
             bench: Benchmark, data_dir: Union[str, pathlib.Path],
             image_dir: Union[str, pathlib.Path], shots: Sequence[int], *, seed: int = 0,
             limit: int = 0, batch_size: int = 16, max_new_tokens: int = 0,
             anyres: bool = False, caption_tokenizer: str = "auto",
             progress: Optional[Callable[[int, int, int], None]] = None) -> Dict[int, Dict]:
  """{shots: result} for each shot count: the official metric (`score_samples`'s
  result) plus "shots", "seconds", "samples" (the scored ones) and "texts" (the
  answers, in sample order).

  limit: score the first `limit` eval samples (0 = all). anyres: anyres crops for
    every image (default: one base crop each, the base model's pre-training input).
  progress: called as progress(shots, done, total).
  Raises:
    BenchmarkError: a missing file, field or image, more shots than train samples.
  """
  image_dir = pathlib.Path(image_dir)
  queries = bench.read(data_dir, "eval")
  queries = queries[:limit] if limit else queries
  train = bench.read(data_dir, "train") if any(shots) else []
  # Every shot count's prompts and images first: refuse before generating anything.
  prompts_of = {k: fewshot.prompts(queries, train, k, seed) for k in shots}
  for prompts in prompts_of.values():
    check_images(bench, queries, prompts, image_dir)
  max_new_tokens = max_new_tokens or MAX_NEW_TOKENS[bench.task]
  results: Dict[int, Dict] = {}
  for k, prompts in prompts_of.items():
    t0 = time.time()
    texts = answers(params, model_cfg, tokenizer, bench, queries, prompts, image_dir,
                    anyres=anyres, max_new_tokens=max_new_tokens, batch_size=batch_size,
                    progress=None if progress is None else
                    (lambda n, k=k: progress(k, n, len(queries))))
    result = score_samples(bench, queries, texts, caption_tokenizer)
    result.update(shots=k, seconds=round(time.time() - t0, 2), samples=queries, texts=texts)
    results[k] = result
  return results


def headline(result: Dict) -> float:
  """The number a paper prints: VQA accuracy in percent, CIDEr x 100."""
  return result["accuracy"] if result["metric"] == "accuracy" else 100 * result["CIDEr"]


def table_row(model: str, bench: Benchmark, results: Dict[int, Dict]) -> str:
  """The paper's table layout (SPEC §6): one cell, the headline per shot count."""
  shots = "/".join(str(k) for k in results)
  metric = "accuracy" if bench.task == "vqa" else "CIDEr"
  cell = "/".join(f"{headline(r):.1f}" for r in results.values())
  return "\n".join([f"| model | {bench.title} {metric}, {shots} shots |", "|---|---|",
                    f"| {model} | {cell} |"])
