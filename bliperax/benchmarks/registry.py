"""The benchmarks by name: their files, metric, results format and images.

Each benchmark reads its official files from one folder (`--data_dir`), under their
released names, and has two splits: "eval", what is scored (the validation split,
or Karpathy's test split for COCO), and "train", where few-shot demonstrations come
from. NoCaps has no training captions: its demonstrations are COCO's (Karpathy
train), as NoCaps intends.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Callable, Dict, List, Mapping, Sequence, Tuple, Union

from bliperax.benchmarks import coco_captions, karpathy, textcaps, textvqa, vizwiz, vqa_coco
from bliperax.benchmarks.records import BenchmarkError, Sample

SPLITS = ("eval", "train")
Reader = Callable[[Sequence[pathlib.Path], str], List[Sample]]


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """name: the --benchmark value; title: as papers print it; task: 'vqa' or 'caption';
  metric: the headline metric's name; files: split -> file names under --data_dir;
  images: where the images are, relative to --image_dir; id_keys: the keys naming the
  sample in a predictions file (the first is the official one); text_key: the
  predicted text's key."""
  name: str
  title: str
  task: str
  files: Mapping[str, Tuple[str, ...]]
  images: str
  reader: Reader
  id_keys: Tuple[str, ...]

  @property
  def metric(self) -> str:
    return "accuracy" if self.task == "vqa" else "CIDEr"

  @property
  def text_key(self) -> str:
    return "answer" if self.task == "vqa" else "caption"

  def paths(self, data_dir: Union[str, pathlib.Path], split: str = "eval"
            ) -> List[pathlib.Path]:
    if split not in SPLITS:
      raise BenchmarkError(f"unknown split {split!r} (one of {', '.join(SPLITS)})")
    return [pathlib.Path(data_dir) / f for f in self.files[split]]

  def read(self, data_dir: Union[str, pathlib.Path], split: str = "eval") -> List[Sample]:
    """The split's samples; a BenchmarkError names a missing file or field."""
    paths = self.paths(data_dir, split)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
      raise BenchmarkError(
          f"missing file {', '.join(missing)}: {self.title}'s {split} split reads "
          f"{' and '.join(self.files[split])} from --data_dir, under the released names")
    return self.reader(paths, split)


def _vqa(benchmark: str, title: str) -> Reader:
  return lambda paths, split: vqa_coco.read(
      paths[0], paths[1], benchmark, title, "val2014" if split == "eval" else "train2014")


def _karpathy(paths, split):
  return karpathy.read(paths[0], {"test"} if split == "eval" else {"train", "restval"})


BENCHMARKS: Dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("vqav2", "VQAv2", "vqa",
              {"eval": ("v2_OpenEnded_mscoco_val2014_questions.json",
                        "v2_mscoco_val2014_annotations.json"),
               "train": ("v2_OpenEnded_mscoco_train2014_questions.json",
                         "v2_mscoco_train2014_annotations.json")},
              "COCO 2014: val2014/, train2014/", _vqa("vqav2", "VQAv2"), ("question_id",)),
    Benchmark("okvqa", "OK-VQA", "vqa",
              {"eval": ("OpenEnded_mscoco_val2014_questions.json",
                        "mscoco_val2014_annotations.json"),
               "train": ("OpenEnded_mscoco_train2014_questions.json",
                         "mscoco_train2014_annotations.json")},
              "COCO 2014: val2014/, train2014/", _vqa("okvqa", "OK-VQA"), ("question_id",)),
    Benchmark("textvqa", "TextVQA", "vqa",
              {"eval": ("TextVQA_0.5.1_val.json",), "train": ("TextVQA_0.5.1_train.json",)},
              "train_images/ (train_val_images.zip)",
              lambda paths, split: textvqa.read(paths[0]), ("question_id",)),
    Benchmark("vizwiz", "VizWiz", "vqa",
              {"eval": ("val.json",), "train": ("train.json",)}, "val/, train/",
              lambda paths, split: vizwiz.read(paths[0], "val" if split == "eval" else "train"),
              ("image", "question_id")),
    Benchmark("coco", "COCO", "caption",
              {"eval": ("dataset_coco.json",), "train": ("dataset_coco.json",)},
              "COCO 2014: val2014/, train2014/ (Karpathy test: 5,000 val2014 images)",
              _karpathy, ("image_id",)),
    Benchmark("coco_val2014", "COCO val2014", "caption",
              {"eval": ("captions_val2014.json",), "train": ("captions_train2014.json",)},
              "COCO 2014: val2014/, train2014/",
              lambda paths, split: coco_captions.read(paths[0], "coco_captions", "COCO"),
              ("image_id",)),
    Benchmark("nocaps", "NoCaps", "caption",
              {"eval": ("nocaps_val_4500_captions.json",), "train": ("dataset_coco.json",)},
              "the Open Images validation files, by file_name; train: COCO 2014",
              lambda paths, split: (coco_captions.read(paths[0], "nocaps_captions", "NoCaps")
                                    if split == "eval" else _karpathy(paths, split)),
              ("image_id",)),
    Benchmark("textcaps", "TextCaps", "caption",
              {"eval": ("TextCaps_0.1_val.json",), "train": ("TextCaps_0.1_train.json",)},
              "train_images/ (train_val_images.zip)",
              lambda paths, split: textcaps.read(paths[0]), ("image_id",)),
]}


def get(name: str) -> Benchmark:
  if name not in BENCHMARKS:
    raise BenchmarkError(f"unknown benchmark {name!r}; one of {', '.join(BENCHMARKS)}")
  return BENCHMARKS[name]
