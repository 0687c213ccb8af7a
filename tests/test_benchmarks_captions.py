"""CIDEr-D and BLEU-4 equal pycocoevalcap's; the Java-free tokenizer equals PTB's.

The expected tokens below are what pycocoevalcap's PTB step (Stanford PTBTokenizer
3.4.1, -lowerCase -preserveLines, then its PUNCTUATIONS dropped) returned for these
captions, one file in this order. Without Java, the scores are compared with
pycocoevalcap's own pipeline fed the Python tokens; with Java, with the real one.
"""
import importlib
import json
import os
import shutil

import pytest

from bliperax.benchmarks import caption_metrics, ptb_tokenizer

_CI = os.environ.get("CI", "").lower() in ("1", "true")


def _require(module):
  if _CI:  # CI installs the test extras: a missing scorer is a failure there
    return importlib.import_module(module)
  pytest.importorskip(module)
  return importlib.import_module(module)


def _require_java():
  if shutil.which("java") is None:
    pytest.skip("java is not on the PATH")


PTB_CASES = [  # (caption, PTB tokens after pycocoevalcap drops punctuation)
    ("A man riding a wave on top of a surfboard.",
     "a man riding a wave on top of a surfboard"),
    ("A man's dog isn't running; it's sitting (quietly) on the \"grass\".",
     "a man 's dog is n't running it 's sitting -lrb- quietly -rrb- on the grass"),
    ("Two dogs can't play -- they're tired... I'm sure we'll see.",
     "two dogs ca n't play they 're tired i 'm sure we 'll see"),
    ("A cat sitting on a 3.5-inch laptop, next to $5 and 50% off.",
     "a cat sitting on a 3.5-inch laptop next to $ 5 and 50 % off"),
    ("A black-and-white photo of a train at 10:30 a.m.",
     "a black-and-white photo of a train at 10:30 a.m."),
    ("He said `hello' and 'goodbye' to Mr. Smith's kids.",
     "he said hello and goodbye to mr. smith 's kids"),
    ("A [red] {blue} bus?", "a -lsb- red -rsb- -lcb- blue -rcb- bus"),
    ("People gonna cannot wanna do it", "people gon na can not wan na do it"),
    ("The dog's toys' box; the kids' room.", "the dog 's toys box the kids room"),
    ("1,000 people at the N.Y. show, etc.", "1,000 people at the n.y. show etc."),
    ('A sign that reads "STOP" in front of a building!!!',
     "a sign that reads stop in front of a building !!!"),
    ("A street sign for Main St. and 5th Ave.", "a street sign for main st. and 5th ave."),
    ("It\u2019s a \u201cbig\u201d dog\u2019s \u2018toy\u2019 \u2013 really\u2026",
     "it 's a big dog 's toy really"),
    ("An e-mail from john@example.com at www.google.com.",
     "an e-mail from john@example.com at www.google.com"),
    ("I'd've thought the U.S.... flag", "i 'd 've thought the u.s. flag"),
    ("A no. 2 pencil and a T-shirt.", "a no. 2 pencil and a t-shirt"),
    # One letter + '.' is an initial unless a sentence starts next, even on the next line.
    ("Vitamin C. It is good.", "vitamin c it is good"),
    ("A keyboard with keys A, S, D and F.", "a keyboard with keys a s d and f"),
    ("The end", "the end"),
]


def test_python_tokenizer_gives_the_ptb_tokens():
  captions = [c for c, _ in PTB_CASES]
  assert ptb_tokenizer.tokenize(captions) == [t for _, t in PTB_CASES]
  # The initial keeps its period when nothing (or no sentence start) follows.
  assert ptb_tokenizer.tokenize_line("A keyboard with keys A, S, D and F.") == \
      "a keyboard with keys a s d and f."
  assert ptb_tokenizer.tokenize(["plan B.", "the cat"])[0] == "plan b."


def test_python_tokenizer_equals_java_ptb_live():
  _require("pycocoevalcap")
  _require_java()
  captions = [c for c, _ in PTB_CASES] + [
      "A group of people standing around a kitchen.", "There's a man who's by the door.",
      "We can't see the people's faces.", "A woman wearing a 1920's style dress.",
      "A collection of items -- keys, coins, and a wallet.", "Is this a dog or a cat?",
      "A plate of spaghetti & meatballs.", "A sign to the airport/train station.",
      "Two men playing Frisbee at 5 p.m.", "A chocolate chip cookie, half-eaten.",
      "A small dog ; looking at the camera .", "A man with a beard   and glasses.",
      "The scoreboard shows 3-2 in the 9th inning.", "A price tag that reads $19.99.",
      "A bottle labeled \"100% Pure Orange Juice\".", "THE DOG'S BONE", "Dr. Who",
  ]
  java = caption_metrics.ptb_tokenize([captions])[0]
  assert caption_metrics.python_tokenize([captions])[0] == java


# Five images, references as COCO annotators write them; predictions as a model might.
REFERENCES = [
    ["A man riding a wave on top of a surfboard.", "A surfer rides a large wave.",
     "A person on a surfboard riding a wave in the ocean.", "a man surfing a big wave"],
    ["Two dogs playing with a frisbee in the park.", "A couple of dogs running on grass.",
     "Dogs chasing a frisbee on a green field.", "Two dogs play in a park."],
    ["A plate of food with broccoli, rice and chicken.",
     "A white plate topped with rice, meat and broccoli.",
     "A dinner plate with chicken, rice, and vegetables."],
    ["A red double-decker bus driving down the street.", "A bus on a city street.",
     "A double decker bus that's red, driving on the road."],
    ["A cat sleeping on a laptop's keyboard.", "A cat is lying on a laptop computer.",
     "The cat isn't letting anyone use the laptop!"],
]
PREDICTIONS = ["a man riding a wave on a surfboard", "Two dogs playing with a frisbee.",
               "A plate of rice and broccoli.", "a red bus driving down a street",
               "A cat laying on a laptop."]


def _coco_eval(tmp_path, tokenizer_class=None):
  """CIDEr and Bleu_4 from pycocoevalcap's own COCOEvalCap over COCO-format files."""
  _require("pycocotools")
  pycocoevalcap_eval = _require("pycocoevalcap.eval")
  from pycocotools.coco import COCO  # pylint: disable=g-import-not-at-top

  class Skipped:  # METEOR, ROUGE-L and SPICE are not compared here
    def compute_score(self, gts, res):
      return 0.0, [0.0] * len(gts)

    def method(self):
      return "skipped"

  images = [{"id": i + 1, "file_name": f"{i + 1}.jpg"} for i in range(len(REFERENCES))]
  annotations = [{"image_id": i + 1, "id": 10 * (i + 1) + j, "caption": c}
                 for i, refs in enumerate(REFERENCES) for j, c in enumerate(refs)]
  (tmp_path / "refs.json").write_text(json.dumps(
      {"images": images, "annotations": annotations, "info": {}, "licenses": []}))
  (tmp_path / "preds.json").write_text(json.dumps(
      [{"image_id": i + 1, "caption": p} for i, p in enumerate(PREDICTIONS)]))
  coco = COCO(str(tmp_path / "refs.json"))
  results = coco.loadRes(str(tmp_path / "preds.json"))
  saved = {k: getattr(pycocoevalcap_eval, k) for k in ("Meteor", "Rouge", "Spice",
                                                       "PTBTokenizer")}
  try:
    pycocoevalcap_eval.Meteor = pycocoevalcap_eval.Rouge = pycocoevalcap_eval.Spice = Skipped
    if tokenizer_class is not None:
      pycocoevalcap_eval.PTBTokenizer = tokenizer_class
    evaluator = pycocoevalcap_eval.COCOEvalCap(coco, results)
    evaluator.params["image_id"] = results.getImgIds()
    evaluator.evaluate()
  finally:
    for k, v in saved.items():
      setattr(pycocoevalcap_eval, k, v)
  return evaluator.eval["CIDEr"], evaluator.eval["Bleu_4"]


class _PythonPTB:
  """pycocoevalcap's PTBTokenizer interface over the Python tokenizer."""

  def tokenize(self, captions_for_image):
    keys = list(captions_for_image)
    groups = [[c["caption"] for c in captions_for_image[k]] for k in keys]
    return dict(zip(keys, caption_metrics.python_tokenize(groups)))


def test_scores_equal_pycocoevalcap_with_python_tokens(tmp_path):
  cider, bleu4 = _coco_eval(tmp_path, _PythonPTB)
  ours = caption_metrics.score(REFERENCES, PREDICTIONS, tokenizer="python")
  assert ours["CIDEr"] == cider and ours["Bleu_4"] == bleu4
  assert ours["tokenizer"].startswith("python") and ours["images"] == 5
  assert 0.5 < cider < 3.0 and 0.1 < bleu4 < 0.9  # a real score, not a degenerate one


def test_scores_equal_pycocoevalcap_with_java_ptb(tmp_path):
  _require_java()
  cider, bleu4 = _coco_eval(tmp_path)
  ours = caption_metrics.score(REFERENCES, PREDICTIONS, tokenizer="auto")
  assert ours["tokenizer"].startswith("ptb")
  assert ours["CIDEr"] == cider and ours["Bleu_4"] == bleu4
  # On these ordinary captions the fallback gives the same tokens, so the same scores.
  python = caption_metrics.score(REFERENCES, PREDICTIONS, tokenizer="python")
  assert (python["CIDEr"], python["Bleu_4"]) == (cider, bleu4)


def test_per_group_scores_use_the_group_alone():
  _require("pycocoevalcap")
  from pycocoevalcap.cider.cider import Cider  # pylint: disable=g-import-not-at-top
  groups = ["in-domain", "in-domain", "out-domain", "out-domain", None]
  result = caption_metrics.score(REFERENCES, PREDICTIONS, "python", groups=groups)
  refs, preds, _ = caption_metrics.tokenize_all(REFERENCES, PREDICTIONS, "python")
  expected, _ = Cider().compute_score({i: refs[i] for i in (2, 3)},
                                      {i: preds[i] for i in (2, 3)})
  assert result["perGroup"]["out-domain"]["CIDEr"] == expected
  assert result["perGroup"]["out-domain"]["images"] == 2
  assert set(result["perGroup"]) == {"in-domain", "out-domain"} and result["images"] == 5


def test_auto_tokenizer_falls_back_without_java(monkeypatch):
  monkeypatch.setattr(caption_metrics, "java_available", lambda: False)
  assert caption_metrics.resolve_tokenizer("auto") == "python"
  with pytest.raises(caption_metrics.CaptionMetricError, match="needs java"):
    caption_metrics.resolve_tokenizer("ptb")
  with pytest.raises(ValueError, match="tokenizer must be one of"):
    caption_metrics.resolve_tokenizer("spacy")
