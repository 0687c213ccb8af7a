"""Few-shot prompts for the paper's benchmarks, as text (no model here).

The base model is evaluated as the paper does (SPEC §6): `shots` demonstrations from
the benchmark's train split, each `<image>{instruction}{answer}<|endofchunk|>`, then
the query `<image>{instruction}`; the model continues with the answer, which ends at
`<|endofchunk|>` (or an end token) and is post-processed to its first line, stripped.

- instruction, captioning: "A short description of this image in one sentence:"
  (the paper's). VQA: "Question: {question} Short answer:". The paper names only the
  captioning prompt; this is OpenFlamingo's VQA prompt (xGen-MM's training code is a
  fork of OpenFlamingo's; its evaluation code is not public), spaced as the captioning
  one.
- answer: a space, then the demonstration's answer: the most common of its human
  answers (VQA; on a tie the earliest) or its first reference caption. The space is
  the fixture's (`bliperax/DESIGN.md` §11: "...sentence: A dog.<|endofchunk|>").
- demonstrations: query i draws `shots` distinct train samples with
  `numpy.random.default_rng((seed, i))`: fixed by the seed, the same for a query
  whatever --limit, the batch size or the other queries are.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import List, Sequence, Tuple

import numpy as np

from bliperax.benchmarks.records import BenchmarkError, Sample
from bliperax.data.tokenizer import ENDOFCHUNK_TOKEN, IMAGE_TOKEN

CAPTION_INSTRUCTION = "A short description of this image in one sentence:"
VQA_INSTRUCTION = "Question: {question} Short answer:"


@dataclasses.dataclass(frozen=True)
class Prompt:
  """One query's prompt: the text, and the image files its `<image>`s stand for, in
  order (demonstrations first, the query last; paths relative to --image_dir)."""
  text: str
  images: Tuple[str, ...]


def instruction(sample: Sample) -> str:
  """The text after a sample's `<image>`, before its answer."""
  if sample.question is None:
    return CAPTION_INSTRUCTION
  return VQA_INSTRUCTION.format(question=sample.question.strip())


def demo_answer(sample: Sample) -> str:
  """The answer a demonstration shows: the most common human answer (earliest on a
  tie) of a question, the first reference of a caption."""
  if sample.question is None:
    return sample.answers[0].strip()
  counts = collections.Counter(sample.answers)
  best = max(counts.values())
  return next(a for a in sample.answers if counts[a] == best).strip()


def draw_demos(pool: int, shots: int, seed: int, index: int) -> List[int]:
  """Indices of query `index`'s `shots` demonstrations in a train pool of `pool`."""
  if shots < 0:
    raise BenchmarkError(f"shots must be 0 or more, got {shots}")
  if shots > pool:
    raise BenchmarkError(f"{shots} shots need {shots} train samples; the train split "
                         f"has {pool}")
  if shots == 0:
    return []
  rng = np.random.default_rng((seed, index))
  return [int(i) for i in rng.choice(pool, size=shots, replace=False)]


def render(query: Sample, demos: Sequence[Sample]) -> Prompt:
  """`<image>{instruction} {answer}<|endofchunk|>` per demonstration, then
  `<image>{instruction}` of the query."""
  parts = [f"{IMAGE_TOKEN}{instruction(d)} {demo_answer(d)}{ENDOFCHUNK_TOKEN}" for d in demos]
  parts.append(f"{IMAGE_TOKEN}{instruction(query)}")
  return Prompt("".join(parts), tuple(d.image for d in demos) + (query.image,))


def prompts(queries: Sequence[Sample], train: Sequence[Sample], shots: int,
            seed: int) -> List[Prompt]:
  """Every query's prompt with its own draw of demonstrations (module docstring)."""
  return [render(q, [train[j] for j in draw_demos(len(train), shots, seed, i)])
          for i, q in enumerate(queries)]


def postprocess(text: str) -> str:
  """The paper's post-processing of a generated answer: its first line, stripped."""
  return text.strip().split("\n", 1)[0].strip()
