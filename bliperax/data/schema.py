"""Training sample kinds: their fields, their rules, and their versioned byte encoding.

Every training sample is one of five frozen dataclasses:

* `Caption`: one image and its text; `task` says whether the text is a plain
  caption, OCR text or a grounding caption. Grounding and OCR boxes stay in
  the text as `<bbox>x1, y1, x2, y2</bbox>` spans (bliperax/DESIGN.md §9).
* `Interleaved`: a document of text chunks (`str`) and images (`bytes`) in
  reading order (MINT-1T, OBELICS).
* `Chat`: a conversation for (multi-image) SFT. Turns alternate user,
  assistant, user, ... and end with an answer; user turns carry one `<image>`
  marker per image, in image order.
* `Preference`: a DPO pair: prompt (with `<image>` markers) and images, the
  chosen and the rejected answer.
* `Text`: text only.

Images are kept as the encoded bytes of their files (JPEG, PNG, ...): decoding
happens in the host pipeline, where crops are made at training resolution.

A record is `msgpack({"v": 1, "kind": ..., "id": ..., <fields>})` with images
as msgpack binaries, so a record decodes without knowing the schema's Python
types. `decode` checks the version, the kind, every field's presence and type,
and the sample's invariants, and names what is wrong in the error.

Records are stored in ArrayRecord shards: see `records`.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Sequence, Union

import msgpack

VERSION = 1
IMAGE_MARKER = "<image>"
CAPTION_TASKS = ("caption", "ocr", "grounding")

# Why a sample is invalid. The shard builder counts skips under these names.
MALFORMED_RECORD = "malformed_record"
EMPTY_TEXT = "empty_text"
IMAGE_MARKER_MISMATCH = "image_marker_mismatch"
BAD_TURN_ORDER = "bad_turn_order"
MALFORMED_BBOX = "malformed_bbox"
IDENTICAL_PAIR = "identical_pair"

_BBOX_OPEN, _BBOX_CLOSE = "<bbox>", "</bbox>"
_NUMBER = r"\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*"
_BBOX_BODY = re.compile(",".join([_NUMBER] * 4))


class RecordError(ValueError):
  """A record cannot be decoded, or a sample breaks its kind's rules."""


class InvalidSample(RecordError):
  """A sample breaks its kind's rules; `reason` is one of the skip reasons."""

  def __init__(self, reason: str, message: str):
    super().__init__(f"{reason}: {message}")
    self.reason = reason
    self.message = message


# ---------------------------------------------------------------------------
# Sample kinds
# ---------------------------------------------------------------------------


# The msgpack type each field must decode to (a tuple: any of these).
_STR, _BYTES, _OPT_STR = (str,), (bytes,), (str, type(None))
_FIELD_TYPES = {
    "id": _STR, "text": _STR, "task": _STR, "image": _BYTES, "prompt": _STR,
    "chosen": _STR, "rejected": _STR, "system": _OPT_STR,
}
_LIST_ITEM_TYPES = {"turns": _STR, "images": _BYTES, "items": (str, bytes)}


def _check_types(sample) -> None:
  """Every field holds the type the schema stores (lists as tuples)."""
  kind = type(sample).__name__
  for field in dataclasses.fields(sample):
    value = getattr(sample, field.name)
    if field.name in _LIST_ITEM_TYPES:
      if not isinstance(value, (list, tuple)):
        raise InvalidSample(MALFORMED_RECORD, f"{kind}.{field.name} is "
                            f"{type(value).__name__}, not a list")
      for i, item in enumerate(value):
        if not isinstance(item, _LIST_ITEM_TYPES[field.name]):
          raise InvalidSample(MALFORMED_RECORD,
                              f"{kind}.{field.name}[{i}] is {type(item).__name__}")
      object.__setattr__(sample, field.name, tuple(value))
    elif not isinstance(value, _FIELD_TYPES[field.name]):
      raise InvalidSample(MALFORMED_RECORD, f"{kind}.{field.name} is {type(value).__name__}")


def _require_text(text: str, what: str) -> None:
  if not text.strip():
    raise InvalidSample(EMPTY_TEXT, f"{what} is empty")


def _check_bboxes(text: str) -> None:
  """Every `<bbox>` span is closed and holds four numbers `x1, y1, x2, y2`."""
  rest = text
  while True:
    start = rest.find(_BBOX_OPEN)
    stray_close = rest.find(_BBOX_CLOSE)
    if start < 0:
      if stray_close >= 0:
        raise InvalidSample(MALFORMED_BBOX, f"{_BBOX_CLOSE} without {_BBOX_OPEN}")
      return
    if 0 <= stray_close < start:
      raise InvalidSample(MALFORMED_BBOX, f"{_BBOX_CLOSE} without {_BBOX_OPEN}")
    end = rest.find(_BBOX_CLOSE, start)
    if end < 0:
      raise InvalidSample(MALFORMED_BBOX, f"{_BBOX_OPEN} is never closed")
    body = rest[start + len(_BBOX_OPEN):end]
    if not _BBOX_BODY.fullmatch(body):
      raise InvalidSample(MALFORMED_BBOX,
                          f"box {body!r} is not four numbers 'x1, y1, x2, y2'")
    rest = rest[end + len(_BBOX_CLOSE):]


def _no_markers(text: str, what: str) -> None:
  # Image positions of captions and documents come from the structure; a
  # literal marker in the text would become an image slot with no image.
  if IMAGE_MARKER in text:
    raise InvalidSample(IMAGE_MARKER_MISMATCH, f"{what} contains a literal {IMAGE_MARKER}")


def _check_images(images: tuple) -> None:
  for i, image in enumerate(images):
    if not image:
      raise InvalidSample(MALFORMED_RECORD, f"image {i} has no bytes")


def _check_marker_count(user_texts: Sequence[str], n_images: int) -> None:
  count = sum(t.count(IMAGE_MARKER) for t in user_texts)
  if count != n_images:
    raise InvalidSample(IMAGE_MARKER_MISMATCH,
                        f"{count} {IMAGE_MARKER} marker(s) for {n_images} image(s)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Caption:
  """One image and its text.

  Attributes:
    image: the encoded image file.
    text: caption, OCR text or grounding caption (boxes as `<bbox>` spans).
    task: "caption", "ocr" or "grounding".
    id: where the sample came from (key, file:line), for error messages.
  """
  image: bytes
  text: str
  task: str = "caption"
  id: str = ""

  def __post_init__(self):
    _check_types(self)
    if self.task not in CAPTION_TASKS:
      raise InvalidSample(MALFORMED_RECORD, f"task {self.task!r} is not one of {CAPTION_TASKS}")
    _check_images((self.image,))
    _require_text(self.text, "caption")
    _no_markers(self.text, "caption")
    _check_bboxes(self.text)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Interleaved:
  """A document: text chunks (`str`) and images (`bytes`) in reading order.

  Attributes:
    items: the chunks; at least one text is not blank, and no text holds a
      literal `<image>` (the pipeline puts one where each image is).
    id: where the sample came from.
  """
  items: tuple[Union[str, bytes], ...]
  id: str = ""

  def __post_init__(self):
    _check_types(self)
    _check_images(self.images)
    if not any(isinstance(x, str) and x.strip() for x in self.items):
      raise InvalidSample(EMPTY_TEXT, "document has no text")
    for text in self.texts:
      _no_markers(text, "document text")

  @property
  def images(self) -> tuple[bytes, ...]:
    return tuple(x for x in self.items if isinstance(x, bytes))

  @property
  def texts(self) -> tuple[str, ...]:
    return tuple(x for x in self.items if isinstance(x, str))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Chat:
  """A conversation: user, assistant, user, ... turns ending with an answer.

  Attributes:
    turns: the turn texts; user turns hold one `<image>` per image.
    images: encoded images, in the order of their markers.
    system: system text, or None for the pipeline's default.
    id: where the sample came from.
  """
  turns: tuple[str, ...]
  images: tuple[bytes, ...] = ()
  system: str | None = None
  id: str = ""

  def __post_init__(self):
    _check_types(self)
    if not self.turns or len(self.turns) % 2:
      raise InvalidSample(BAD_TURN_ORDER, f"{len(self.turns)} turns; a chat needs user/"
                          "assistant pairs")
    _check_images(self.images)
    for i, turn in enumerate(self.turns):
      # A user turn of images alone ("<image>") is a valid question.
      _require_text(turn, f"turn {i}")
    for i in range(1, len(self.turns), 2):
      _no_markers(self.turns[i], f"assistant turn {i}")
    _no_markers(self.system or "", "system text")
    _check_marker_count(self.turns[0::2], len(self.images))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Preference:
  """A preference pair for DPO: one prompt, a chosen and a rejected answer.

  Attributes:
    prompt: the user turn; one `<image>` per image.
    chosen: the preferred answer.
    rejected: the other answer (different from `chosen`).
    images: encoded images, in the order of their markers.
    system: system text, or None for the pipeline's default.
    id: where the sample came from.
  """
  prompt: str
  chosen: str
  rejected: str
  images: tuple[bytes, ...] = ()
  system: str | None = None
  id: str = ""

  def __post_init__(self):
    _check_types(self)
    _check_images(self.images)
    _require_text(self.prompt, "prompt")
    _require_text(self.chosen, "chosen answer")
    _require_text(self.rejected, "rejected answer")
    _no_markers(self.chosen, "chosen answer")
    _no_markers(self.rejected, "rejected answer")
    _no_markers(self.system or "", "system text")
    _check_marker_count([self.prompt], len(self.images))
    if self.chosen.strip() == self.rejected.strip():
      raise InvalidSample(IDENTICAL_PAIR, "chosen and rejected answers are the same")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Text:
  """Text only."""
  text: str
  id: str = ""

  def __post_init__(self):
    _check_types(self)
    _require_text(self.text, "text")


Sample = Union[Caption, Interleaved, Chat, Preference, Text]
KINDS = {"caption": Caption, "interleaved": Interleaved, "chat": Chat,
         "preference": Preference, "text": Text}
_KIND_OF = {cls: name for name, cls in KINDS.items()}


def kind_of(sample: Sample) -> str:
  """The kind name stored in a sample's record ("caption", "chat", ...)."""
  return _KIND_OF[type(sample)]


# ---------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------


def encode(sample: Sample) -> bytes:
  """Serializes a sample to a versioned record."""
  if type(sample) not in _KIND_OF:
    raise TypeError(f"not a sample: {type(sample).__name__}")
  record = {"v": VERSION, "kind": kind_of(sample)}
  for field in dataclasses.fields(sample):
    value = getattr(sample, field.name)
    record[field.name] = list(value) if isinstance(value, tuple) else value
  return msgpack.packb(record, use_bin_type=True)


def decode(record: bytes) -> Sample:
  """Reads a record written by `encode`.

  Raises:
    RecordError: the bytes are not a record, the version or kind is unknown,
      a field is missing, extra or of the wrong type; `InvalidSample` (a
      RecordError) when the fields break the kind's rules.
  """
  try:
    obj = msgpack.unpackb(record, raw=False, strict_map_key=True)
  except Exception as e:  # msgpack raises several unrelated types on bad bytes.
    raise RecordError(f"corrupt record ({len(record)} bytes): {type(e).__name__}: {e}") from e
  if not isinstance(obj, dict):
    raise RecordError(f"corrupt record: a {type(obj).__name__}, not a map")
  version = obj.pop("v", None)
  if version != VERSION or isinstance(version, bool):
    raise RecordError(f"record version {version!r} is not supported (this bliperax reads "
                      f"version {VERSION}); rebuild the shards with tools/build_shards.py")
  kind = obj.pop("kind", None)
  if kind not in KINDS:
    raise RecordError(f"unknown record kind {kind!r} (known: {', '.join(KINDS)})")
  names = {f.name for f in dataclasses.fields(KINDS[kind])}
  if missing := names - obj.keys():
    raise RecordError(f"{kind} record: missing field(s) {sorted(missing)}")
  if extra := obj.keys() - names:
    raise RecordError(f"{kind} record: unknown field(s) {sorted(extra)}")
  return KINDS[kind](**obj)
