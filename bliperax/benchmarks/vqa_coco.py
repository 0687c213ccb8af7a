"""VQAv2 and OK-VQA: a questions file and an annotations file, in the VQA format.

questions: {"info", "task_type", "data_type", "data_subtype": "val2014",
  "questions": [{"image_id": 262148, "question": "...", "question_id": 262148000}]}
annotations: {"info", "data_subtype", "annotations": [{"question_id", "image_id",
  "question_type", "answer_type", "multiple_choice_answer",
  "answers": [{"answer", "answer_confidence", "answer_id"}, ... 10]}]}
(OK-VQA's answers also carry "raw_answer"; its question types are knowledge
categories.) One Sample per annotation, in the annotation file's order, which is
the order the official evaluation sums in. Images are COCO's:
`val2014/COCO_val2014_000000262148.jpg` (the folder is the file's data_subtype).
"""
from __future__ import annotations

import pathlib
from typing import Dict, List, Tuple

from bliperax.benchmarks import identify
from bliperax.benchmarks.records import (BenchmarkError, Sample, describe, field,
                                         load_json)


def read(questions_path: pathlib.Path, annotations_path: pathlib.Path, benchmark: str,
         title: str, default_subtype: str) -> List[Sample]:
  """`benchmark` is 'vqav2' or 'okvqa' (the kind of file expected), `title` its name."""
  generic = ("vqa_questions", "vqa_annotations")
  qdoc = load_json(questions_path, f"the {title} questions file")
  identify.expect(questions_path, qdoc, f"{benchmark}_questions", generic[0])
  adoc = load_json(annotations_path, f"the {title} annotations file")
  identify.expect(annotations_path, adoc, f"{benchmark}_annotations", generic[1])
  subtype = qdoc.get("data_subtype") if isinstance(qdoc, dict) else None
  subtype = subtype if isinstance(subtype, str) and subtype else default_subtype

  questions: Dict[int, Tuple[str, int]] = {}
  for i, q in enumerate(field(qdoc, "questions", questions_path, "the file", list)):
    where = describe(q, "question_id", i)
    qid = field(q, "question_id", questions_path, f"question {where}", int)
    questions[qid] = (field(q, "question", questions_path, f"question {where}", str),
                      field(q, "image_id", questions_path, f"question {where}", int))

  samples = []
  for i, a in enumerate(field(adoc, "annotations", annotations_path, "the file", list)):
    where = f"annotation {describe(a, 'question_id', i)}"
    qid = field(a, "question_id", annotations_path, where, int)
    if qid not in questions:
      raise BenchmarkError(f"{annotations_path}: {where} has no question in {questions_path}")
    question, image_id = questions[qid]
    if field(a, "image_id", annotations_path, where, int) != image_id:
      raise BenchmarkError(f"{annotations_path}: {where} is about image {a['image_id']}, "
                           f"its question in {questions_path} about image {image_id}")
    answers = field(a, "answers", annotations_path, where, list)
    if not answers:
      raise BenchmarkError(f"{annotations_path}: {where} has no answers")
    texts = tuple(field(x, "answer", annotations_path, f"{where} answer {j}", str)
                  for j, x in enumerate(answers))
    samples.append(Sample(
        id=qid, image=f"{subtype}/COCO_{subtype}_{image_id:012d}.jpg", question=question,
        answers=texts, answer_type=field(a, "answer_type", annotations_path, where, str),
        question_type=field(a, "question_type", annotations_path, where, str)))
  if not samples:
    raise BenchmarkError(f"{annotations_path}: no annotations")
  return samples
