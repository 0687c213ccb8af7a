"""Samples to token ids, labels and images: the text layout of each sample kind.

One function, `render`, turns any `schema` sample into `Rendered`: the token
ids (one `<image>` per image, not yet expanded), the labels (-100 off the
loss) and the encoded images in the order of their `<image>` tokens.

Layouts (bliperax/DESIGN.md §5):

* `Caption` (captions, OCR, grounding; pre-training):
  `<image>{text}<|endofchunk|><|endoftext|>`, loss on every text token.
* `Interleaved` (MINT-1T, OBELICS; pre-training): the items in reading order,
  each image as `<image>`, consecutive texts joined by a newline, then
  `<|endofchunk|><|endoftext|>`; loss on every text token.
* `Text`: `{text}<|endoftext|>`, loss on every token.
* `Chat` (SFT): the Phi-3 chat template; loss on each answer and its
  `<|end|>` only.
* `Preference`: the chat `[prompt, chosen]` (so a DPO set can double as SFT
  data); for DPO, `render_pair` gives both chats `[prompt, chosen]` and
  `[prompt, rejected]`, loss on each answer and its `<|end|>`, which the
  pipeline packs as pairs (bliperax/data/pairs.py).

`<|endofchunk|>` and `<image>` never carry loss (`tokenizer.Tokenizer.no_loss_ids`).
Images over the per-sample cap (the reference skips training samples with
more than 4, bliperax/DESIGN.md §7): a document keeps its first `max_images` images and
all its text (`Rendered.capped`); a chat or preference sample is skipped,
since its text refers to every image.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from bliperax.data import chat as chat_lib
from bliperax.data import schema
from bliperax.data import tokenizer as tokenizer_lib

TOO_MANY_IMAGES = "too_many_images"
UNSUPPORTED_KIND = "unsupported_kind"


class SkipSample(Exception):
  """A valid record the pipeline will not train on; `reason` names why."""

  def __init__(self, reason: str, message: str = ""):
    super().__init__(f"{reason}: {message}" if message else reason)
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class RenderOptions:
  """How samples become text.

  Attributes:
    max_images: the per-sample image cap (0: no cap).
    system: the system text of chats that bring none (None: no system turn).
    caption_template: the caption layout; `{text}` is the caption.
    text_separator: what joins consecutive texts of a document.
  """
  max_images: int = 4
  system: str | None = chat_lib.SYSTEM_PROMPT
  caption_template: str = (f"{tokenizer_lib.IMAGE_TOKEN}{{text}}{tokenizer_lib.ENDOFCHUNK_TOKEN}"
                           f"{tokenizer_lib.ENDOFTEXT_TOKEN}")
  text_separator: str = "\n"


@dataclasses.dataclass(frozen=True)
class Rendered:
  """One sample as tokens, before its images are expanded into slots.

  Attributes:
    ids: int32[T] token ids with one `<image>` (32012) per image.
    labels: int32[T], the id where it is a target, -100 elsewhere.
    images: the encoded image files, in the order of their `<image>` ids.
    capped: images beyond the cap were dropped.
  """
  ids: np.ndarray
  labels: np.ndarray
  images: tuple[bytes, ...]
  capped: bool = False


def _from_text(rendered: chat_lib.RenderedText, images: Sequence[bytes],
               capped: bool = False) -> Rendered:
  return Rendered(rendered.ids, rendered.labels(), tuple(images), capped)


def _document_text(items: Sequence[str | bytes], separator: str) -> str:
  """Joins a document's items; an image becomes `<image>`."""
  out = []
  previous_is_text = False
  for item in items:
    if isinstance(item, bytes):
      out.append(tokenizer_lib.IMAGE_TOKEN)
      previous_is_text = False
    else:
      if previous_is_text:
        out.append(separator)
      out.append(item)
      previous_is_text = True
  return "".join(out)


def _cap_document(items: tuple, max_images: int) -> tuple[tuple, bool]:
  """Drops images after the first `max_images`; keeps every text."""
  if not max_images or sum(isinstance(x, bytes) for x in items) <= max_images:
    return items, False
  kept, seen = [], 0
  for item in items:
    if isinstance(item, bytes):
      seen += 1
      if seen > max_images:
        continue
    kept.append(item)
  return tuple(kept), True


def _check_cap(images: Sequence[bytes], max_images: int) -> None:
  if max_images and len(images) > max_images:
    raise SkipSample(TOO_MANY_IMAGES, f"{len(images)} images, the cap is {max_images}")


def render(sample: schema.Sample, tokenizer: tokenizer_lib.Tokenizer,
           options: RenderOptions = RenderOptions()) -> Rendered:
  """Token ids, labels and images of one sample (layouts: module docstring).

  Raises:
    SkipSample: a chat or preference sample over the image cap.
  """
  end_of_text = tokenizer_lib.ENDOFCHUNK_TOKEN + tokenizer_lib.ENDOFTEXT_TOKEN
  if isinstance(sample, schema.Caption):
    text = options.caption_template.format(text=sample.text)
    return _from_text(chat_lib.render_pretrain(text, tokenizer), [sample.image])
  if isinstance(sample, schema.Interleaved):
    items, capped = _cap_document(sample.items, options.max_images)
    text = _document_text(items, options.text_separator) + end_of_text
    images = [x for x in items if isinstance(x, bytes)]
    return _from_text(chat_lib.render_pretrain(text, tokenizer), images, capped)
  if isinstance(sample, schema.Text):
    text = sample.text + tokenizer_lib.ENDOFTEXT_TOKEN
    return _from_text(chat_lib.render_pretrain(text, tokenizer), [])
  if isinstance(sample, (schema.Chat, schema.Preference)):
    if isinstance(sample, schema.Chat):
      turns = sample.turns
    else:
      turns = (sample.prompt, sample.chosen)
    _check_cap(sample.images, options.max_images)
    system = options.system if sample.system is None else sample.system
    return _from_text(chat_lib.render_chat(turns, tokenizer, system=system), sample.images)
  raise SkipSample(UNSUPPORTED_KIND, type(sample).__name__)


def render_pair(sample: schema.Sample, tokenizer: tokenizer_lib.Tokenizer,
                options: RenderOptions = RenderOptions()) -> tuple[Rendered, Rendered]:
  """A preference pair as two chats with one prompt and the same images: `[prompt,
  chosen]` and `[prompt, rejected]`, labels on the answer and its `<|end|>` only.

  The prompt's ids are the same in both: the chat tokens end it, and the tokenizer
  cuts the text at them (bliperax/DESIGN.md §5).

  Raises:
    SkipSample: not a preference pair (a DPO mixture trains on pairs only), or over
      the image cap.
  """
  if not isinstance(sample, schema.Preference):
    raise SkipSample(UNSUPPORTED_KIND, f"{type(sample).__name__} in a preference (DPO) mixture")
  _check_cap(sample.images, options.max_images)
  system = options.system if sample.system is None else sample.system
  chosen, rejected = (
      _from_text(chat_lib.render_chat((sample.prompt, answer), tokenizer, system=system),
                 sample.images)
      for answer in (sample.chosen, sample.rejected))
  return chosen, rejected
