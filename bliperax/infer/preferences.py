"""Preference pairs from chats: the model's answers on noised images (and sampled ones).

The library half of `tools/make_preferences.py` (whose docstring is the user's
guide): for each single-turn chat (question with images, answer) the model answers
greedily on noised copies of the images (bliperax/data/noise.py), and optionally
samples answers on the clean images; each answer that differs from the chat's
becomes a `schema.Preference` (prompt and clean images, chosen = the chat's answer,
rejected = the model's). Importable without the tool's flags (main_job, tests).

Pair ids are `<chat id>/noised` and `<chat id>/sampled<k>`.
"""
from __future__ import annotations

import collections
import dataclasses
import string
from typing import Iterator, Optional, Sequence

import jax

from bliperax.data import batch as batch_lib
from bliperax.data import noise
from bliperax.data import schema
from bliperax.infer import evaluate as eval_lib
from bliperax.infer import generate as generate_lib

NOISED = "noised"
# Questions decoded per round, in batch_size units: the prompts' crops (up to ~9 MB
# per image at 384 px) are held for one round only.
_BATCHES_PER_ROUND = 4
_EXAMPLES_PER_REASON = 3


@dataclasses.dataclass(frozen=True)
class Options:
  """How answers are generated (the flags of the same names)."""
  noise_level: float = 0.5
  noise_schedule: str = "cosine"
  sampled: int = 0
  temperature: float = 1.0
  top_p: float = 1.0
  max_new_tokens: int = 256
  batch_size: int = 32
  seed: int = 0
  anyres: bool = True


def normalise(text: str) -> str:
  """Case folded, whitespace collapsed, surrounding punctuation stripped: 'Two.' == 'two'."""
  return " ".join(text.casefold().split()).strip(string.punctuation + " ")


class Tally:
  """Questions read/used/skipped and pairs written/dropped, with a few examples."""

  def __init__(self):
    self.read = 0  # records of the input read
    self.chats = 0  # of them single-turn chats (what --limit counts)
    self.skipped = collections.Counter()
    self.written = collections.Counter()  # by kind: noised, sampled
    self.dropped = collections.Counter()
    self.examples = collections.defaultdict(list)

  @property
  def used(self) -> int:
    """Questions answered: records read and not skipped."""
    return self.read - sum(self.skipped.values())

  def skip(self, reason: str, sample_id: str, message: str) -> None:
    self.skipped[reason] += 1
    self._example(reason, f"{sample_id}: {message}")

  def drop(self, reason: str, pair_id: str, message: str) -> None:
    self.dropped[reason] += 1
    self._example(reason, f"{pair_id}: {message}")

  def _example(self, reason: str, text: str) -> None:
    if len(self.examples[reason]) < _EXAMPLES_PER_REASON:
      self.examples[reason].append(text)

  def summary(self) -> dict:
    return {"questions_read": self.read, "questions_used": self.used,
            "questions_skipped": dict(sorted(self.skipped.items())),
            "pairs_written": sum(self.written.values()),
            "pairs_by_kind": dict(sorted(self.written.items())),
            "pairs_dropped": sum(self.dropped.values()),
            "dropped": dict(sorted(self.dropped.items())),
            "examples": dict(sorted(self.examples.items()))}


def single_turn_chats(source, limit: int, tally: Tally) -> Iterator[tuple[int, object]]:
  """(record position, Chat) of the single-turn chats of `source` (record bytes), in
  order, the first `limit` (0 = all); everything else is counted as skipped."""
  for position in range(len(source)):
    if limit and tally.chats >= limit:
      return
    tally.read += 1
    try:
      sample = schema.decode(source[position])
    except schema.RecordError as e:
      tally.skip("corrupt_record", f"record {position}", str(e))
      continue
    if not isinstance(sample, schema.Chat):
      tally.skip("not_a_chat", sample.id or f"record {position}",
                 f"a {type(sample).__name__}, not a Chat")
    elif len(sample.turns) != 2:
      tally.skip("multi_turn", sample.id, f"{len(sample.turns)} turns, not one question "
                 "and its answer")
    else:
      tally.chats += 1
      yield position, sample


def noised_example(example: batch_lib.Example, level: float, schedule: str, seed: int,
                   position: int) -> batch_lib.Example:
  """`example` with its crops (uint8 pixels) noised into float32[C, S, S, 3] model-range
  values (bliperax/data/noise.py) by the generator of (seed, position); tokens and vision
  slots unchanged."""
  crops = noise.add_noise(example.crops, level, noise.sample_rng(seed, position), schedule)
  return dataclasses.replace(example, crops=crops)


def sampled_answers(params, model_cfg, examples: Sequence[batch_lib.Example], tokenizer,
                    options: Options, rng: jax.Array) -> list[str]:
  """One sampled answer per prompt, in order; batch b samples with fold_in(rng, b).

  Batches as `infer.evaluate.answer` makes them (sorted by length, bucketed shapes,
  a fixed row count) so the compiled shapes are the greedy pass's.
  """
  order = sorted(range(len(examples)), key=lambda i: len(examples[i].tokens))
  rows = min(options.batch_size, len(examples))
  out: list[Optional[str]] = [None] * len(examples)
  for b, start in enumerate(range(0, len(order), options.batch_size)):
    chunk = order[start:start + options.batch_size]
    prompt = batch_lib.collate_prompts([examples[i] for i in chunk], model_cfg,
                                       tokenizer.pad_id, rows=rows)
    ids = generate_lib.generate(params, model_cfg, prompt, options.max_new_tokens,
                                eos_ids=tokenizer.eos_ids, pad_id=tokenizer.pad_id,
                                temperature=options.temperature, top_p=options.top_p,
                                rng=jax.random.fold_in(rng, b))
    for i, row in zip(chunk, ids):
      out[i] = eval_lib.answer_text(row, tokenizer)
  return out


def answer_round(params, model_cfg, tokenizer, chats: Sequence[tuple[int, object]],
                 options: Options, round_index: int, tally: Tally
                 ) -> list[tuple[object, list[tuple[str, str]]]]:
  """[(chat, [(kind, rejected answer), ...])] for one round of chats.

  kind is NOISED (greedy on the noised images; only for chats with images) or
  `sampled{k}` (the k-th sampled answer on the clean images).
  """
  kept, clean = [], []
  for position, chat in chats:
    try:
      example = eval_lib.prompt_example(chat.turns[0], chat.images, model_cfg, tokenizer,
                                        options.anyres, chat.system)
    except ValueError as e:  # an image that does not decode
      tally.skip("unreadable_image", chat.id, str(e))
      continue
    kept.append((position, chat))
    clean.append(example)
  answers = [[] for _ in kept]
  with_images = [i for i, (_, chat) in enumerate(kept) if chat.images]
  for i, (_, chat) in enumerate(kept):
    if not chat.images:
      tally.drop("no_image", f"{chat.id}/{NOISED}", "no image to noise")
  if with_images:
    noised = [noised_example(clean[i], options.noise_level, options.noise_schedule,
                             options.seed, kept[i][0]) for i in with_images]
    greedy = eval_lib.answer(params, model_cfg, noised, tokenizer, options.max_new_tokens,
                             options.batch_size)
    for i, text in zip(with_images, greedy):
      answers[i].append((NOISED, text))
  key = jax.random.fold_in(jax.random.PRNGKey(options.seed), round_index)
  for k in range(options.sampled if clean else 0):
    texts = sampled_answers(params, model_cfg, clean, tokenizer, options,
                            jax.random.fold_in(key, k))
    for i, text in enumerate(texts):
      answers[i].append((f"sampled{k}", text))
  return [(chat, a) for (_, chat), a in zip(kept, answers)]


def pairs_of(chat, answers: Sequence[tuple[str, str]], tally: Tally) -> list:
  """The Preference samples of one chat's rejected answers; drops counted in `tally`."""
  chosen = normalise(chat.turns[1])
  seen, out = set(), []
  for kind, text in answers:
    pair_id = f"{chat.id}/{kind}"
    key = normalise(text)
    if key == chosen and text.strip():
      tally.drop("same_as_chosen", pair_id, repr(text))
      continue
    if key in seen and text.strip():
      tally.drop("duplicate", pair_id, repr(text))
      continue
    try:
      pair = schema.Preference(prompt=chat.turns[0], chosen=chat.turns[1], rejected=text,
                               images=chat.images, system=chat.system, id=pair_id)
    except schema.InvalidSample as e:  # empty answer, a literal <image>, ...
      tally.drop(e.reason, pair_id, e.message)
      continue
    seen.add(key)
    tally.written["sampled" if kind.startswith("sampled") else kind] += 1
    out.append(pair)
  return out


def make_preferences(params, model_cfg, tokenizer, source, writer, options: Options,
                     limit: int = 0, progress=None) -> Tally:
  """Writes the pairs of `source` (chat record bytes) to `writer` (not committed).

  Rounds of `batch_size` x _BATCHES_PER_ROUND chats: prompts built, answered, their
  pairs written in input order, the crops dropped before the next round.
  """
  tally = Tally()
  chats = single_turn_chats(source, limit, tally)
  round_size = options.batch_size * _BATCHES_PER_ROUND
  round_index = 0
  while True:
    read_before = tally.read
    this_round = [c for _, c in zip(range(round_size), chats)]
    if not this_round:
      break
    for chat, answers in answer_round(params, model_cfg, tokenizer, this_round, options,
                                      round_index, tally):
      for pair in pairs_of(chat, answers, tally):
        writer.write(schema.encode(pair))
    if progress is not None:
      progress(tally.read - read_before)
    round_index += 1
  return tally
