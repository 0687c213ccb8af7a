"""Image references in input records, and reading + validating their bytes.

Inputs name images in several ways: bytes in hand (a tar member, a parquet
binary column, a base64 `data:` URI, HF's `{"bytes": ...}`), a file path
(relative to the image folder), or a URL. URLs are not fetched: a build is
reproducible only from files on disk, so a URL is a skip reason.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import os
import warnings

from PIL import Image

from bliperax.data import schema
from bliperax.data.sources import base

MISSING_IMAGE = "missing_image"
MISSING_IMAGE_FILE = "missing_image_file"
IMAGE_NOT_FETCHABLE = "image_not_fetchable"
UNREADABLE_IMAGE = "unreadable_image"

CHECKS = ("decode", "header", "none")
_URL_SCHEMES = ("http://", "https://", "ftp://", "s3://", "gs://")


@dataclasses.dataclass(frozen=True)
class ImageRef:
  """One image of a draft: exactly one of `data`, `path`, `url` is set."""
  data: bytes | None = None
  path: str | None = None
  url: str | None = None


def _b64(text: str) -> bytes:
  try:
    return base64.b64decode(text, validate=True)
  except (binascii.Error, ValueError) as e:
    raise base.malformed(f"bad base64 image data: {e}") from e


def ref_from_json(value, root: str) -> ImageRef:
  """Parses an image entry of a JSON record.

  Accepted: `"path/rel/to/root.jpg"`, `"/abs/path.png"`, `"https://..."`
  (unfetchable), `"data:image/png;base64,..."`, and objects
  `{"bytes": base64}`, `{"path": ...}`, `{"url": ...}`.

  Raises:
    InvalidSample: MISSING_IMAGE for null/empty, malformed_record otherwise.
  """
  if isinstance(value, dict):
    if value.get("bytes"):
      return ImageRef(data=_b64(value["bytes"]))
    value = value.get("path") or value.get("url") or value.get("src")
  if value is None or value == "":
    raise schema.InvalidSample(MISSING_IMAGE, "image entry is empty")
  if not isinstance(value, str):
    raise base.malformed(f"image entry is a {type(value).__name__}")
  if value.startswith("data:"):
    header, _, payload = value.partition(",")
    if not header.endswith(";base64"):
      raise base.malformed("data: URI image is not base64")
    return ImageRef(data=_b64(payload))
  if value.lower().startswith(_URL_SCHEMES):
    return ImageRef(url=value)
  return ImageRef(path=os.path.join(root, value))


def check(data: bytes, level: str) -> None:
  """Raises UNREADABLE_IMAGE unless PIL reads `data` ("decode": every pixel,
  which catches truncated files; "header": format and size only)."""
  if level == "none":
    return
  try:
    with warnings.catch_warnings():
      # Huge images only warn; the pipeline resizes them anyway.
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      with Image.open(io.BytesIO(data)) as im:
        if level == "decode":
          im.load()
        width, height = im.size
  except Image.UnidentifiedImageError as e:
    raise schema.InvalidSample(UNREADABLE_IMAGE, f"not an image format PIL knows "
                               f"({len(data)} bytes)") from e
  except Exception as e:  # PIL raises many types (OSError, SyntaxError, ...).
    raise schema.InvalidSample(UNREADABLE_IMAGE, f"{type(e).__name__}: {e}") from e
  if width < 1 or height < 1:
    raise schema.InvalidSample(UNREADABLE_IMAGE, f"image is {width}x{height}")


def load(ref: ImageRef, level: str) -> bytes:
  """The checked bytes of an image.

  Raises:
    InvalidSample: IMAGE_NOT_FETCHABLE, MISSING_IMAGE_FILE or UNREADABLE_IMAGE.
  """
  if ref.url is not None:
    raise schema.InvalidSample(IMAGE_NOT_FETCHABLE, f"{ref.url} (URLs are not downloaded)")
  data = ref.data
  if data is None:
    try:
      with open(ref.path, "rb") as f:
        data = f.read()
    except FileNotFoundError as e:
      raise schema.InvalidSample(MISSING_IMAGE_FILE, f"{ref.path} not found") from e
    except OSError as e:
      raise schema.InvalidSample(MISSING_IMAGE_FILE, f"{ref.path}: {e}") from e
  if not data:
    raise schema.InvalidSample(UNREADABLE_IMAGE, "image file is empty")
  check(bytes(data), level)
  return bytes(data)
