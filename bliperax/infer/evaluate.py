"""Exact-match evaluation of chat answers with greedy KV-cache decoding.

A task is a shard set of `schema.Chat` samples with one question and its
answer. Each question becomes a generation prompt (the chat template up to
`<|assistant|>\\n`, images as anyres crops or one base crop), prompts are
decoded greedily in left-padded batches of one static shape per task (one
compile per task), and an answer counts when the generated text, stripped of
surrounding whitespace and cut at `<|end|>`, equals the reference answer.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional, Sequence

import numpy as np

from bliperax.data import batch as batch_lib
from bliperax.data import batch_spec
from bliperax.data import chat as chat_lib
from bliperax.data import records
from bliperax.data import schema
from bliperax.data import tokenizer as tokenizer_lib
from bliperax.data.image import decode_image
from bliperax.infer import generate as generate_lib
from bliperax.models.config import XGenMMConfig


@dataclasses.dataclass(frozen=True)
class Question:
  """One held-out question: its images (encoded files), text and reference answer."""
  id: str
  images: tuple[bytes, ...]
  question: str
  answer: str


def questions_from_shards(paths, limit: int = 0) -> list[Question]:
  """The single-turn chats of a shard set (the first `limit`, 0 = all)."""
  out = []
  for sample in records.read_samples(paths):
    if not isinstance(sample, schema.Chat) or len(sample.turns) != 2:
      raise ValueError(f"{sample.id}: evaluation needs single-turn chats, got "
                       f"{type(sample).__name__} with {len(getattr(sample, 'turns', ()))} turns")
    out.append(Question(sample.id, sample.images, sample.turns[0], sample.turns[1]))
    if limit and len(out) >= limit:
      break
  return out


def prompt_example(question: str, images: Sequence, model_cfg: XGenMMConfig,
                   tokenizer: tokenizer_lib.Tokenizer, anyres: bool,
                   system: Optional[str] = None) -> batch_lib.Example:
  """A chat generation prompt with its images expanded into vision slots.

  Args:
    question: the user turn, with one `<image>` per image.
    images: PIL images or encoded image bytes, in `<image>` order.
  Raises:
    ValueError: an image does not decode, or markers and images disagree.
  """
  _check_markers(question, images)
  rendered = chat_lib.render_chat([question], tokenizer, system=system)
  return _with_images(rendered.ids, images, model_cfg, anyres)


def text_example(text: str, images: Sequence, model_cfg: XGenMMConfig,
                 tokenizer: tokenizer_lib.Tokenizer, anyres: bool) -> batch_lib.Example:
  """A generation prompt of raw interleaved text (no chat template): the base model's
  few-shot prompts (`bliperax.benchmarks.fewshot`), `<image>` where each image goes.

  The text is tokenized as one string, as the reference tokenizes its few-shot
  samples (bliperax/DESIGN.md §5): no BOS, no lone `▁` before a leading `<image>`.
  Raises:
    ValueError: an image does not decode, or markers and images disagree.
  """
  _check_markers(text, images)
  return _with_images(tokenizer.encode(text), images, model_cfg, anyres)


def _check_markers(text: str, images: Sequence) -> None:
  n_markers = text.count(tokenizer_lib.IMAGE_TOKEN)
  if n_markers != len(images):
    raise ValueError(f"the prompt has {n_markers} {tokenizer_lib.IMAGE_TOKEN} marker(s) but "
                     f"{len(images)} image(s) were given")


def _with_images(ids: Sequence[int], images: Sequence, model_cfg: XGenMMConfig,
                 anyres: bool) -> batch_lib.Example:
  """ids with each `<image>` expanded into its image's vision slots (PIL or bytes)."""
  pil = [decode_image(im) if isinstance(im, bytes) else im.convert("RGB") for im in images]
  vision = [batch_lib.prepare_image(im, model_cfg, anyres) for im in pil]
  return batch_lib.expand(ids, None, vision, batch_spec.VisionDims.of(model_cfg))


def answer_text(ids: Sequence[int], tokenizer: tokenizer_lib.Tokenizer,
                eos_ids: Optional[Sequence[int]] = None) -> str:
  """Generated ids -> text up to the first end token (default `tokenizer.eos_ids`),
  specials dropped, stripped."""
  stops = set(tokenizer.eos_ids if eos_ids is None else eos_ids)
  out = []
  for t in ids:
    if int(t) in stops:
      break
    out.append(int(t))
  return tokenizer.decode(out, skip_special_tokens=True).strip()


def answer(params, model_cfg: XGenMMConfig, examples: Sequence[batch_lib.Example],
           tokenizer: tokenizer_lib.Tokenizer, max_new_tokens: int, batch_size: int,
           progress: Optional[Callable[[int], None]] = None,
           eos_ids: Optional[Sequence[int]] = None) -> list[str]:
  """Greedy answers to prompts, in the order given.

  Prompts run in batches of `batch_size` rows sorted by length, each collated to its
  bucketed shape (`batch.collate_prompts`): little padding, and a handful of compiled
  shapes for any mix of prompt lengths. Each row stops at its first `eos_ids` token
  (default `tokenizer.eos_ids`; few-shot prompts add `<|endofchunk|>`).
  """
  eos_ids = tuple(tokenizer.eos_ids if eos_ids is None else eos_ids)
  order = sorted(range(len(examples)), key=lambda i: len(examples[i].tokens))
  rows = min(batch_size, len(examples))
  outputs: list[Optional[str]] = [None] * len(examples)
  done = 0
  for start in range(0, len(order), batch_size):
    chunk = order[start:start + batch_size]
    prompt = batch_lib.collate_prompts([examples[i] for i in chunk], model_cfg,
                                       tokenizer.pad_id, rows=rows)
    ids = generate_lib.generate(params, model_cfg, prompt, max_new_tokens,
                                eos_ids=eos_ids, pad_id=tokenizer.pad_id)
    for i, row in zip(chunk, ids):
      outputs[i] = answer_text(row, tokenizer, eos_ids)
    done += len(chunk)
    if progress:
      progress(done)
  return outputs


def evaluate_task(params, model_cfg: XGenMMConfig, questions: Sequence[Question],
                  tokenizer: tokenizer_lib.Tokenizer, anyres: bool, max_new_tokens: int = 8,
                  batch_size: int = 64, system: Optional[str] = None,
                  progress: Optional[Callable[[int], None]] = None) -> dict:
  """Exact-match accuracy of one task; also every prediction (id, answer, prediction)."""
  t0 = time.time()
  examples = []
  for q in questions:
    try:
      examples.append(prompt_example(q.question, q.images, model_cfg, tokenizer, anyres,
                                     system))
    except ValueError as e:  # an undecodable image, markers vs images
      raise ValueError(f"question {q.id!r}: {e}") from e
  predictions = answer(params, model_cfg, examples, tokenizer, max_new_tokens, batch_size,
                       progress)
  correct = [p == q.answer for p, q in zip(predictions, questions)]
  return {
      "accuracy": float(np.mean(correct)) if correct else 0.0,
      "correct": int(sum(correct)),
      "total": len(correct),
      "anyres": bool(anyres),
      "seconds": round(time.time() - t0, 2),
      "predictions": [{"id": q.id, "answer": q.answer, "prediction": p}
                      for q, p in zip(questions, predictions)],
  }
