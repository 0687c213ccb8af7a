"""Which released file a parsed JSON document is, so a wrong file is named as such.

Readers call `expect(path, data, kind)` before reading fields: a file that is
recognisably another benchmark's (the OK-VQA annotations given for VQAv2, a
predictions file given as annotations) fails with one line saying what it is and
which benchmark reads it. A document not recognised at all passes, and the reader's
field checks report what is missing.
"""
from __future__ import annotations

import pathlib
from typing import Any, Optional

from bliperax.benchmarks.records import BenchmarkError

# kind -> (description, the --benchmark that reads it or None)
KINDS = {
    "vqav2_questions": ("the VQAv2 questions file", "vqav2"),
    "vqav2_annotations": ("the VQAv2 annotations file", "vqav2"),
    "okvqa_questions": ("the OK-VQA questions file", "okvqa"),
    "okvqa_annotations": ("the OK-VQA annotations file", "okvqa"),
    "vqav1_questions": ("a VQA v1 questions file", None),
    "vqav1_annotations": ("a VQA v1 annotations file", None),
    "vqa_questions": ("a VQA-format questions file", None),
    "vqa_annotations": ("a VQA-format annotations file", None),
    "textvqa": ("a TextVQA file", "textvqa"),
    "textcaps": ("a TextCaps file", "textcaps"),
    "vizwiz": ("a VizWiz VQA annotations file", "vizwiz"),
    "coco_captions": ("a COCO captions file", "coco_val2014"),
    "nocaps_captions": ("a NoCaps captions file", "nocaps"),
    "coco_instances": ("a COCO detection/keypoints file (no captions)", None),
    "karpathy_coco": ("the Karpathy COCO split file", "coco"),
    "karpathy_other": ("a Karpathy split file of another dataset", None),
    "vqa_predictions": ("a VQA predictions file", None),
    "caption_predictions": ("a captions predictions file", None),
}


def _first(items: Any) -> Any:
  return items[0] if isinstance(items, list) and items else None


def _version(doc: dict) -> str:
  info = doc.get("info")
  return str(info.get("description", "")) if isinstance(info, dict) else ""


def identify(doc: Any) -> Optional[str]:
  """The kind (a KINDS key) of a parsed official file, or None if not recognised."""
  if isinstance(doc, list):
    first = _first(doc)
    if not isinstance(first, dict):
      return None
    if "image" in first and ("answers" in first or "question" in first):
      return "vizwiz"
    if ("question_id" in first or "image" in first) and "answer" in first:
      return "vqa_predictions"
    if "image_id" in first and "caption" in first:
      return "caption_predictions"
    return None
  if not isinstance(doc, dict):
    return None
  version = _version(doc)
  if isinstance(doc.get("questions"), list):
    if "OK-VQA" in version:
      return "okvqa_questions"
    if "v2.0" in version and "VQA" in version:
      return "vqav2_questions"
    if "v1.0" in version and "VQA" in version:
      return "vqav1_questions"
    return "vqa_questions"
  annotation = _first(doc.get("annotations"))
  if isinstance(annotation, dict):
    if "answers" in annotation:
      answer = _first(annotation["answers"])
      if "OK-VQA" in version or (isinstance(answer, dict) and "raw_answer" in answer):
        return "okvqa_annotations"
      if "v2.0" in version and "VQA" in version:
        return "vqav2_annotations"
      if "v1.0" in version and "VQA" in version:
        return "vqav1_annotations"
      return "vqa_annotations"
    if "caption" in annotation:
      image = _first(doc.get("images"))
      return "nocaps_captions" if isinstance(image, dict) and "domain" in image \
          else "coco_captions"
    if any(k in annotation for k in ("bbox", "segmentation", "keypoints")):
      return "coco_instances"
  image = _first(doc.get("images"))
  if isinstance(image, dict) and "sentences" in image:
    return "karpathy_coco" if doc.get("dataset", "coco") == "coco" else "karpathy_other"
  if isinstance(image, dict) and "domain" in image:
    return "nocaps_captions"
  if isinstance(doc.get("data"), list):
    name = str(doc.get("dataset_name", "")).lower()
    entry = _first(doc["data"])
    if name == "textcaps" or isinstance(entry, dict) and ("caption_str" in entry
                                                          or "reference_strs" in entry):
      return "textcaps"
    if name == "textvqa" or isinstance(entry, dict) and "question" in entry:
      return "textvqa"
  return None


def expect(path: pathlib.Path, doc: Any, *kinds: str) -> None:
  """Raises if `doc` is recognisably a kind of file other than `kinds`."""
  found = identify(doc)
  if found is None or found in kinds:
    return
  what, reader = KINDS[found]
  wanted = " or ".join(KINDS[k][0] for k in kinds)
  hint = f" (--benchmark={reader} reads it)" if reader else ""
  raise BenchmarkError(f"{path} is {what}{hint}, not {wanted}")
