r"""Two small benchmarks in the official file formats, made of the bundled digits.

  python tools/make_digits_benchmarks.py --output=/tmp/digits_bench [--num_eval=200]
  python -m bliperax.evaluate --checkpoint=/tmp/digits_run/pretrain_params \
      --benchmark=coco_val2014 --data_dir=/tmp/digits_bench/coco \
      --image_dir=/tmp/digits_bench/images --shots=0,4,8

For trying few-shot evaluation end to end without downloading COCO: the layouts,
names and fields are the released ones (VQAv2: `v2_OpenEnded_mscoco_{split}_questions.json`
+ `v2_mscoco_{split}_annotations.json`; COCO: `captions_{split}.json`), the contents
are digits (tools/make_digits.py's split: eval = held-out digits, train = training
digits):

  vqa/   "What digit is this?", ten human answers, all the digit ("7"); answer
         type "number".
  coco/  five reference captions per digit, the main job's caption wordings
         ("A handwritten digit seven.", "The number 7.", ...).
  images/val2014/COCO_val2014_<id>.jpg, images/train2014/COCO_train2014_<id>.jpg:
         16 px digit images (PNG data under COCO's names; PIL reads either).

Prints a JSON summary last.
"""
import json
import pathlib

from absl import app, flags

from bliperax import cli



def _define_flags():
  """The command line's flags, defined only when run as a script: the tests import
  this file for `write`, beside other tools whose flags share these names."""
  return (flags.DEFINE_string("output", None, "Folder to write (vqa/, coco/, images/)."),
          flags.DEFINE_integer("num_eval", 200, "Eval images (held-out digits).",
                               lower_bound=1),
          flags.DEFINE_integer("num_train", 200, "Train images (demonstrations).",
                               lower_bound=1))

_V2_INFO = {"description": "This is v2.0 of the VQA dataset (digits stand-in).",
            "version": "2.0"}


def _image_name(subtype: str, image_id: int) -> str:
  return f"{subtype}/COCO_{subtype}_{image_id:012d}.jpg"


def _vqa(folder: pathlib.Path, subtype: str, labels) -> None:
  questions = {"info": _V2_INFO, "task_type": "Open-Ended", "data_type": "mscoco",
               "data_subtype": subtype, "license": {}, "questions": [
                   {"image_id": i, "question": "What digit is this?", "question_id": 10 * i}
                   for i in range(len(labels))]}
  annotations = {"info": _V2_INFO, "license": {}, "data_subtype": subtype, "annotations": [
      {"question_id": 10 * i, "image_id": i, "question_type": "what",
       "answer_type": "number", "multiple_choice_answer": str(label),
       "answers": [{"answer": str(label), "answer_confidence": "yes", "answer_id": j + 1}
                   for j in range(10)]} for i, label in enumerate(labels)]}
  (folder / f"v2_OpenEnded_mscoco_{subtype}_questions.json").write_text(json.dumps(questions))
  (folder / f"v2_mscoco_{subtype}_annotations.json").write_text(json.dumps(annotations))


def _coco(folder: pathlib.Path, subtype: str, labels) -> None:
  from bliperax.data import digits  # pylint: disable=g-import-not-at-top
  images = [{"id": i, "file_name": _image_name(subtype, i).split("/")[1], "height": 16,
             "width": 16} for i in range(len(labels))]
  annotations = [{"image_id": i, "id": 10 * i + j,
                  "caption": template.format(name=digits.NAMES[label], digit=int(label))}
                 for i, label in enumerate(labels)
                 for j, template in enumerate(digits.CAPTIONS)]
  (folder / f"captions_{subtype}.json").write_text(json.dumps(
      {"info": {}, "licenses": [], "images": images, "annotations": annotations}))


def write(out: pathlib.Path, num_eval: int, num_train: int) -> dict:
  """Writes vqa/, coco/ and images/ under `out`; returns a summary."""
  from bliperax.data import digits  # pylint: disable=g-import-not-at-top
  train, held = digits.load_splits()
  splits = {"val2014": (held, min(num_eval, len(held.labels))),
            "train2014": (train, min(num_train, len(train.labels)))}
  for name in ("vqa", "coco", "images/val2014", "images/train2014"):
    (out / name).mkdir(parents=True, exist_ok=True)
  for subtype, (split, n) in splits.items():
    for i in range(n):
      digits.digit_image(split.images[i]).save(out / "images" / _image_name(subtype, i),
                                               format="PNG")
    labels = [int(x) for x in split.labels[:n]]
    _vqa(out / "vqa", subtype, labels)
    _coco(out / "coco", subtype, labels)
  return {"output": str(out), "eval": splits["val2014"][1], "train": splits["train2014"][1],
          "vqa": str(out / "vqa"), "coco": str(out / "coco"), "images": str(out / "images")}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _OUTPUT.value:
    cli.fail("give --output=DIR")
  print(json.dumps(write(pathlib.Path(_OUTPUT.value), _NUM_EVAL.value, _NUM_TRAIN.value)))
  return 0


if __name__ == "__main__":
  _OUTPUT, _NUM_EVAL, _NUM_TRAIN = _define_flags()
  cli.run(main)
