"""Text layouts to token ids and loss spans: the chat template and pre-training text.

`render_chat` tokenizes a conversation in the chat template with the loss on
each answer and its `<|end|>`; `render_pretrain` tokenizes text with the loss
on every token. Both give `RenderedText`: ids and a loss mask (labels are
`IGNORE` off the loss). `<pad>` and the VLM tokens never carry loss.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from bliperax.data.batch_spec import IGNORE
from bliperax.data.tokenizer import ASSISTANT_TAG, END_TAG, SYSTEM_TAG, USER_TAG, Tokenizer

SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's "
    "questions.")


@dataclasses.dataclass(frozen=True)
class RenderedText:
  """Token ids of one sample and where the loss applies.

  Attributes:
    ids: int32[T] token ids, no padding.
    loss_mask: bool[T], True where the token is a training target (labels
      are not shifted: position t predicts ids[t] from ids[<t]).
  """
  ids: np.ndarray
  loss_mask: np.ndarray

  def labels(self, ignore_index: int = IGNORE) -> np.ndarray:
    """int32[T]: `ids` on the loss, `ignore_index` elsewhere."""
    return np.where(self.loss_mask, self.ids, ignore_index).astype(np.int32)


def rendered_text(tokenizer: Tokenizer, ids: Sequence[int],
                  trainable: Sequence[bool]) -> RenderedText:
  """Packs ids; `<pad>` and VLM tokens never carry loss."""
  ids = np.asarray(ids, np.int32).reshape(-1)
  never = np.isin(ids, list(tokenizer.no_loss_ids))
  loss_mask = np.asarray(trainable, bool).reshape(-1) & ~never
  return RenderedText(ids=ids, loss_mask=loss_mask)


def chat_parts(turns: Sequence[str], system: str | None = SYSTEM_PROMPT
               ) -> list[tuple[str, bool]]:
  """The chat template as `(text, is_answer)` parts.

  Layout: `<|system|>\\n{system}<|end|>\\n<|user|>\\n{q}<|end|>\\n
  <|assistant|>\\n{a}<|end|>\\n…`. The `<|assistant|>\\n` tag belongs to the
  user part; each answer part is `{a}<|end|>\\n`.

  Args:
    turns: user, assistant, user, … strings. An odd count ends with a
      generation prompt (the text stops after `<|assistant|>\\n`).
    system: the system text, or None for no system turn.
  """
  if not turns:
    raise ValueError("a chat needs at least one user turn")
  parts = []
  if system is not None:
    parts.append((f"{SYSTEM_TAG}\n{system}{END_TAG}\n", False))
  for i, turn in enumerate(turns):
    if i % 2 == 0:
      parts.append((f"{USER_TAG}\n{turn}{END_TAG}\n{ASSISTANT_TAG}\n", False))
    else:
      parts.append((f"{turn}{END_TAG}\n", True))
  return parts


def render_chat(turns: Sequence[str], tokenizer: Tokenizer, *,
                system: str | None = SYSTEM_PROMPT) -> RenderedText:
  """Tokenizes a conversation; loss on each answer and its `<|end|>`.

  The conversation is tokenized as one string (as the reference's SFT
  pipeline does), and each id is attributed to the template part that
  produced it, so the spans come from the real token sequence. Because the
  part boundaries follow whitespace-swallowing tokens, the ids equal those
  of the whole string, and a generation prompt (odd `turns`) is an exact
  prefix of the training ids of the same conversation.

  Note: this differs from the golden fixture's chat sample in one id. The
  fixture tokenized the answer as a separate string, which gives it a dummy
  prefix (`▁A`, 319), while the whole conversation gives `A` (29909), as in
  the reference's training. Use `golden_inputs.golden_sample_ids` for the
  fixture.

  Args:
    turns: user, assistant, user, … strings (see `chat_parts`).
    tokenizer: the tokenizer.
    system: the system text, or None for no system turn.
  """
  parts = chat_parts(turns, system)
  ids, owners = tokenizer.encode_parts([text for text, _ in parts])
  trainable = [parts[owner][1] for owner in owners]
  return rendered_text(tokenizer, ids, trainable)


def render_pretrain(text: str, tokenizer: Tokenizer) -> RenderedText:
  """Tokenizes interleaved pre-training text; loss on every text token."""
  ids = tokenizer.encode(text)
  return rendered_text(tokenizer, ids, [True] * len(ids))
