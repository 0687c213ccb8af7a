"""TFDS datasets prepared as `array_record`, read through `tfds.data_source`.

`open_source` opens the random-access source (images left encoded:
`tfds.decode.SkipDecoding` on every top-level `Image` feature, so the pipeline
decodes them once, like shard images). `FieldMapping` turns one TFDS example
into a `schema` sample by a field map; it runs in the pipeline's per-sample
stage, so an example the map cannot use is skipped and counted, not fatal.

Field paths walk nested features with `/`; a number indexes a sequence:
`captions/text/0` is the first caption of COCO-style `captions`. Per kind:

  caption:    image, text              (option: task)
  chat:       images or image, turns   (a list: user, assistant, ...)
              or question and answer   (one exchange)
  text:       text
  preference: images or image, prompt, chosen, rejected

Chat and preference prompts without an `<image>` marker get `<image>\\n` per
image in front of the first user turn (how LLaVA-style data marks them).
TensorFlow is not needed: TFDS reads `array_record` datasets with numpy.
"""
from __future__ import annotations

import dataclasses
import io
from typing import Any, Mapping, Optional

import numpy as np

from bliperax.data import schema

_KIND_FIELDS = {
    "caption": ({"image", "text"}, set()),
    "chat": (set(), {"images", "image", "turns", "question", "answer"}),
    "text": ({"text"}, set()),
    "preference": ({"prompt", "chosen", "rejected"}, {"images", "image"}),
}


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
  """A TFDS source.

  Attributes:
    name: the dataset name (with config/version if needed: "coco_captions:1.0.0").
    split: e.g. "train" or "train[:90%]".
    data_dir: where the prepared dataset lives (empty: TFDS's default).
    kind: the sample kind each example becomes (see the module docstring).
    fields: sample field -> feature path.
    task: caption task ("caption", "ocr", "grounding").
  """
  name: str
  split: str
  kind: str
  fields: Mapping[str, str]
  data_dir: str = ""
  task: str = "caption"


def _image_decoders(features) -> Optional[dict]:
  """SkipDecoding for every Image feature reachable through FeaturesDicts."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if isinstance(features, tfds.features.Image):
    return tfds.decode.SkipDecoding()
  if isinstance(features, tfds.features.FeaturesDict):
    out = {k: d for k, f in features.items() if (d := _image_decoders(f)) is not None}
    return out or None
  return None


def open_source(spec: TfdsSpec):
  """`tfds.data_source` of the spec with images kept encoded (never downloads)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  data_dir = spec.data_dir or None
  builder = tfds.builder(spec.name, data_dir=data_dir)
  return tfds.data_source(spec.name, split=spec.split, data_dir=data_dir, download=False,
                          decoders=_image_decoders(builder.info.features))


def _get(example: Any, path: str) -> Any:
  value = example
  for part in path.split("/"):
    if isinstance(value, Mapping):
      if part not in value:
        raise schema.RecordError(f"TFDS example has no feature {path!r} (at {part!r})")
      value = value[part]
    elif part.isdigit():
      items = list(value)
      if int(part) >= len(items):
        raise schema.RecordError(f"{path!r}: index {part} of {len(items)} items")
      value = items[int(part)]
    else:
      raise schema.RecordError(f"{path!r}: cannot take {part!r} of a {type(value).__name__}")
  return value


def _text(value: Any, path: str) -> str:
  if isinstance(value, np.ndarray) and value.ndim == 0:
    value = value.item()
  if isinstance(value, (bytes, np.bytes_)):
    return bytes(value).decode("utf-8")
  if isinstance(value, str):
    return value
  raise schema.RecordError(f"{path!r} is a {type(value).__name__}, not text")


def _image(value: Any, path: str) -> bytes:
  """Encoded bytes as stored, or a decoded uint8 array re-encoded losslessly (PNG)."""
  if isinstance(value, np.ndarray) and value.dtype == object and value.ndim == 0:
    value = value.item()
  if isinstance(value, (bytes, np.bytes_)):
    return bytes(value)
  if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 3:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    buffer = io.BytesIO()
    Image.fromarray(value[..., 0] if value.shape[-1] == 1 else value).save(buffer, "PNG")
    return buffer.getvalue()
  raise schema.RecordError(f"{path!r} is not an image ({type(value).__name__})")


def _with_markers(prompt: str, n_images: int) -> str:
  if n_images and schema.IMAGE_MARKER not in prompt:
    return f"{schema.IMAGE_MARKER}\n" * n_images + prompt
  return prompt


class FieldMapping:
  """TFDS example -> `schema` sample (picklable; runs in the pipeline workers)."""

  def __init__(self, kind: str, fields: Mapping[str, str], task: str = "caption"):
    if kind not in _KIND_FIELDS:
      raise ValueError(f"TFDS kind {kind!r} is not one of {sorted(_KIND_FIELDS)}")
    required, optional = _KIND_FIELDS[kind]
    fields = dict(fields)
    if missing := required - fields.keys():
      raise ValueError(f"TFDS {kind} mapping lacks field(s) {sorted(missing)}")
    if unknown := fields.keys() - required - optional:
      raise ValueError(f"TFDS {kind} mapping has unknown field(s) {sorted(unknown)}")
    if kind == "chat" and "turns" not in fields and not {"question", "answer"} <= fields.keys():
      raise ValueError("TFDS chat mapping needs 'turns', or 'question' and 'answer'")
    self.kind, self.fields, self.task = kind, fields, task

  def _images(self, example) -> tuple[bytes, ...]:
    if "images" in self.fields:
      path = self.fields["images"]
      return tuple(_image(v, path) for v in _get(example, path))
    if "image" in self.fields:
      return (_image(_get(example, self.fields["image"]), self.fields["image"]),)
    return ()

  def _str(self, example, field: str) -> str:
    return _text(_get(example, self.fields[field]), self.fields[field])

  def __call__(self, example: Mapping[str, Any]) -> schema.Sample:
    """Raises RecordError (InvalidSample for rule violations) on unusable examples."""
    if self.kind == "caption":
      return schema.Caption(image=self._images(example)[0], text=self._str(example, "text"),
                            task=self.task)
    if self.kind == "text":
      return schema.Text(text=self._str(example, "text"))
    images = self._images(example)
    if self.kind == "preference":
      return schema.Preference(prompt=_with_markers(self._str(example, "prompt"), len(images)),
                               chosen=self._str(example, "chosen"),
                               rejected=self._str(example, "rejected"), images=images)
    if "turns" in self.fields:
      path = self.fields["turns"]
      turns = [_text(t, path) for t in _get(example, path)]
    else:
      turns = [self._str(example, "question"), self._str(example, "answer")]
    if turns:
      turns[0] = _with_markers(turns[0], len(images))
    return schema.Chat(turns=tuple(turns), images=images)


def mapping_of(spec: TfdsSpec) -> FieldMapping:
  return FieldMapping(spec.kind, spec.fields, spec.task)
