"""The paper's benchmarks: readers of their official files and their official metrics.

  from bliperax import benchmarks
  bench = benchmarks.get("vqav2")
  samples = bench.read("/data/vqav2")            # the eval split, as `Sample`s
  demos = bench.read("/data/vqav2", "train")     # few-shot demonstrations
  result = benchmarks.score_samples(bench, samples, answers)

Files: `records` (Sample, errors), `identify` (which file is which), one reader per
file layout (`vqa_coco`, `textvqa`, `vizwiz`, `coco_captions`, `karpathy`,
`textcaps`), `registry` (names -> files, metric, results format), `predictions`
(official results files), `vqa_accuracy`, `caption_metrics` (+ `ptb_tokenizer`, its
Java-free tokenizer) and `score`.
"""
from bliperax.benchmarks.records import BenchmarkError, Sample
from bliperax.benchmarks.registry import BENCHMARKS, Benchmark, get
from bliperax.benchmarks.score import score_file, score_samples, summary, table

__all__ = ["BENCHMARKS", "Benchmark", "BenchmarkError", "Sample", "get", "score_file",
           "score_samples", "summary", "table"]
