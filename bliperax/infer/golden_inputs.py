"""How the golden fixture built its token inputs, for checking against it.

The fixture (bliperax/DESIGN.md §11) tokenized each prompt part and answer
part as its own string and concatenated them, where `chat.render_chat`
tokenizes the whole conversation; its rows are padded as `pad_batch` does.
Used by `logit_check` and the tests.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from bliperax.data.batch_spec import IGNORE
from bliperax.data.chat import RenderedText, rendered_text
from bliperax.data.tokenizer import ASSISTANT_TAG, END_TAG, SYSTEM_TAG, USER_TAG, Tokenizer


def render_separately(parts: Sequence[tuple[str, bool]],
                      tokenizer: Tokenizer) -> RenderedText:
  """Tokenizes each `(text, trainable)` part as its own string, then joins.

  Each part gets its own dummy prefix, so a part starting with a space gets
  a lone `▁` (29871) in front; this is how the golden fixture built its
  samples.
  """
  ids, trainable = [], []
  for text, is_trainable in parts:
    part_ids = tokenizer.encode(text)
    ids.extend(part_ids)
    trainable.extend([is_trainable] * len(part_ids))
  return rendered_text(tokenizer, ids, trainable)


def render_fewshot(text: str, tokenizer: Tokenizer,
                   answer: str | None = None) -> RenderedText:
  """Base-model few-shot sample: `text` then `answer`, loss on both.

  `text` holds the shots, e.g. `<image>{instruction}{answer}<|endofchunk|>`
  repeated, then `<image>{instruction}` for the query; `answer` (tokenized as
  its own string, as in the golden fixture) completes it. Omit `answer` for
  a generation prompt.
  """
  parts = [(text, True)]
  if answer is not None:
    parts.append((answer, True))
  return render_separately(parts, tokenizer)


def golden_sample_ids(sample: dict, tokenizer: Tokenizer, system_prompt: str,
                      with_answer: bool = True
                      ) -> tuple[np.ndarray, np.ndarray]:
  """Rebuilds one sample of a golden fixture's `meta.json`.

  Follows the fixture format (bliperax/DESIGN.md §11): the prompt part and the answer part are
  tokenized as separate strings and concatenated.

  Args:
    sample: one entry of `meta["samples"]` (kind "chat", "text" or
      "fewshot").
    tokenizer: use `Tokenizer.reference()` for bit-exact ids.
    system_prompt: `meta["system_prompt"]`.
    with_answer: False gives the generation prompt alone.

  Returns:
    `(ids, labels)`, int32[T] each; labels are -100 off the loss.
  """
  kind = sample["kind"]
  if kind in ("chat", "text"):
    prompt = (f"{SYSTEM_TAG}\n{system_prompt}{END_TAG}\n"
              f"{USER_TAG}\n{sample['user']}{END_TAG}\n{ASSISTANT_TAG}\n")
    parts = [(prompt, False), (f"{sample['answer']}{END_TAG}\n", True)]
  elif kind == "fewshot":
    parts = [(sample["text"], True), (sample["answer"], True)]
  else:
    raise ValueError(f"unknown sample kind {kind!r}")
  rendered = render_separately(parts if with_answer else parts[:1], tokenizer)
  return rendered.ids, rendered.labels()


def pad_batch(ids: Sequence[Sequence[int]],
              labels: Sequence[Sequence[int]] | None,
              pad_id: int, side: str = "right", length: int | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
  """Pads rows to one length.

  Training batches are right-padded; generation prompts left-padded.

  Args:
    ids: B rows of token ids.
    labels: B rows of labels matching `ids`, or None.
    pad_id: the id written into padding (`<pad>`, 32011).
    side: "right" or "left".
    length: the padded length; defaults to the longest row. Rows are never
      truncated (cutting could split an image block): a longer row raises.

  Returns:
    `(ids, attention_mask, labels)`: int32[B, L], bool[B, L] (True on real
    tokens) and int32[B, L] with -100 on padding (None without `labels`).
  """
  if side not in ("right", "left"):
    raise ValueError(f"side must be 'right' or 'left', not {side!r}")
  if labels is not None and len(labels) != len(ids):
    raise ValueError(f"{len(ids)} id rows but {len(labels)} label rows")
  longest = max((len(row) for row in ids), default=0)
  length = longest if length is None else length
  if longest > length:
    raise ValueError(f"a row has {longest} tokens, more than {length}")
  out_ids = np.full((len(ids), length), pad_id, np.int32)
  mask = np.zeros((len(ids), length), bool)
  out_labels = None if labels is None else np.full_like(out_ids, IGNORE)
  for b, row in enumerate(ids):
    n = len(row)
    cols = slice(0, n) if side == "right" else slice(length - n, length)
    out_ids[b, cols] = row
    mask[b, cols] = True
    if labels is not None:
      if len(labels[b]) != n:
        raise ValueError(f"row {b}: {n} ids but {len(labels[b])} labels")
      out_labels[b, cols] = labels[b]
  return out_ids, mask, out_labels
