"""VQA accuracy as the official VQA evaluation computes it.

The official code is `vqaEval.py` of GT-Vision-Lab/VQA (its current version, after
the 2021 "Fixed processing answers bug" commit), which the OpenFlamingo evaluation
the xGen-MM paper reports with also uses, for VQAv2, OK-VQA, TextVQA and VizWiz.
Per question, with `answers` the human answers (usually 10):

1. The prediction and every human answer have `\\n` and `\\t` replaced by spaces and
   are stripped.
2. Only if the human answers are not all the same string (after step 1) are the
   prediction and the answers normalized: punctuation (`process_punctuation`), then
   number words, articles and contractions (`process_digit_article`). When all
   answers agree, the prediction must equal them exactly: `Yes` or `yes.` scores 0
   against ten `yes`.
3. For each human answer i, acc_i = min(1, #{j != i : answer_j == prediction} / 3);
   the question scores the mean of the acc_i (one answer left out in turn).

The overall accuracy is `round(100 * sum / count, 2)` over the questions in the
annotation file's order, and the same per answer type and per question type. The
official code is Python 2, whose `round` takes exact halves away from zero
(3.125 -> 3.13); Python 3 ports (OpenFlamingo, LAVIS) round them to even (3.12).
`official_round` rounds as the official code.

Two details of the official code that this module keeps: `process_punctuation`
tests for "punctuation next to a space" and "a comma between digits" on the text as
it was before any replacement, and its period removal passes `re.UNICODE` (32) where
`re.sub` takes its count, so at most 32 periods go. One it does not: the official
leave-one-out removes every answer dict equal to the left-out one, which is one
answer when answers carry distinct `answer_id`s (VQAv2, OK-VQA); here it is always
one answer, by position (the VizWiz and TextVQA files have no answer ids).
"""
from __future__ import annotations

import decimal
import re
from typing import Dict, List, Mapping, Optional, Sequence

# The official contraction table, as written (keys with capitals never match: the
# text is lower-cased first; `somebody'd` maps to `somebodyd`, as in the original).
CONTRACTIONS: Mapping[str, str] = dict(item.split("=") for item in """
    aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't
    couldn'tve=couldn't've couldnt've=couldn't've didnt=didn't doesnt=doesn't
    dont=don't hadnt=hadn't hadnt've=hadn't've hadn'tve=hadn't've hasnt=hasn't
    havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's howd=how'd
    howll=how'll hows=how's Id've=I'd've I'dve=I'd've Im=I'm Ive=I've isnt=isn't
    itd=it'd itd've=it'd've it'dve=it'd've itll=it'll let's=let's maam=ma'am
    mightnt=mightn't mightnt've=mightn't've mightn'tve=mightn't've mightve=might've
    mustnt=mustn't mustve=must've neednt=needn't notve=not've oclock=o'clock
    oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at 'ow'sat='ow's'at shant=shan't
    shed've=she'd've she'dve=she'd've she's=she's shouldve=should've
    shouldnt=shouldn't shouldnt've=shouldn't've shouldn'tve=shouldn't've
    somebody'd=somebodyd somebodyd've=somebody'd've somebody'dve=somebody'd've
    somebodyll=somebody'll somebodys=somebody's someoned=someone'd
    someoned've=someone'd've someone'dve=someone'd've someonell=someone'll
    someones=someone's somethingd=something'd somethingd've=something'd've
    something'dve=something'd've somethingll=something'll thats=that's
    thered=there'd thered've=there'd've there'dve=there'd've therere=there're
    theres=there's theyd=they'd theyd've=they'd've they'dve=they'd've theyll=they'll
    theyre=they're theyve=they've twas='twas wasnt=wasn't wed've=we'd've
    we'dve=we'd've weve=we've werent=weren't whatll=what'll whatre=what're
    whats=what's whatve=what've whens=when's whered=where'd wheres=where's
    whereve=where've whod=who'd whod've=who'd've who'dve=who'd've wholl=who'll
    whos=who's whove=who've whyll=why'll whyre=why're whys=why's wont=won't
    wouldve=would've wouldnt=wouldn't wouldnt've=wouldn't've wouldn'tve=wouldn't've
    yall=y'all yall'll=y'all'll y'allll=y'all'll yall'd've=y'all'd've
    y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've
    you'dve=you'd've youll=you'll youre=you're youve=you've""".split())
NUMBER_WORDS: Mapping[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ("a", "an", "the")
# Removed (next to a space, or anywhere when a comma sits between digits) or else
# replaced by a space. Not in the list: `'`, `:`, `.`, `*`, `#`, `$`, `%`, `&`.
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
               ">", "<", "@", "`", ",", "?", "!")
# The official pattern is "(?!<=\d)(\.)(?!\d)": its first group is a lookahead (not
# a lookbehind) that never fails before a period, so a period goes unless a digit
# follows it: `3.5` and `.5` keep theirs, `5.` and `u.s.a.` lose them.
_PERIOD = re.compile(r"\.(?!\d)", re.ASCII)  # Python 2 patterns: \\d is [0-9]
_COMMA_BETWEEN_DIGITS = re.compile(r"\d,\d", re.ASCII)
_MAX_PERIODS = 32  # re.UNICODE, passed as re.sub's count by the official code


def prepare(text: str) -> str:
  """Step 1, applied to every prediction and human answer: whitespace only."""
  return text.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str) -> str:
  out = text
  digit_comma = _COMMA_BETWEEN_DIGITS.search(text) is not None
  for p in PUNCTUATION:
    if digit_comma or p + " " in text or " " + p in text:  # tested on the input text
      out = out.replace(p, "")
    else:
      out = out.replace(p, " ")
  return _PERIOD.sub("", out, count=_MAX_PERIODS)


def process_digit_article(text: str) -> str:
  words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
  return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize(text: str) -> str:
  """Step 2 of an answer: what it is compared as when the human answers differ."""
  return process_digit_article(process_punctuation(text))


def question_accuracy(prediction: str, answers: Sequence[str]) -> float:
  """One question's accuracy in [0, 1] (steps 1-3 of the module docstring)."""
  if not answers:
    raise ValueError("a question needs at least one human answer")
  prediction = prepare(prediction)
  answers = [prepare(a) for a in answers]
  if len(set(answers)) > 1:
    answers = [normalize(a) for a in answers]
    prediction = normalize(prediction)
  accs = []
  for i in range(len(answers)):
    matches = sum(1 for j, a in enumerate(answers) if j != i and a == prediction)
    accs.append(min(1, float(matches) / 3))
  return float(sum(accs)) / len(accs)


def official_round(x: float, digits: int = 2) -> float:
  """Python 2's round(x, digits): nearest, exact halves away from zero."""
  quantum = decimal.Decimal(1).scaleb(-digits)
  return float(decimal.Decimal(x).quantize(quantum, rounding=decimal.ROUND_HALF_UP))


def _percent(values: List[float]) -> float:
  return official_round(100 * float(sum(values)) / len(values))


def accuracy(predictions: Sequence[str], answers: Sequence[Sequence[str]],
             answer_types: Optional[Sequence[Optional[str]]] = None,
             question_types: Optional[Sequence[Optional[str]]] = None) -> Dict:
  """Accuracy in percent over questions, in the order given (the annotation file's).

  Returns {"overall", "perAnswerType", "perQuestionType", "perQuestion"} as the
  official `vqaEval.accuracy` and `evalQA` (per-question accuracies in percent,
  rounded, in input order). Questions whose type is None are left out of the
  per-type tables.
  """
  if len(predictions) != len(answers):
    raise ValueError(f"{len(predictions)} predictions for {len(answers)} questions")
  if not answers:
    raise ValueError("no questions to score")
  scores = [question_accuracy(p, a) for p, a in zip(predictions, answers)]
  out = {"overall": _percent(scores)}
  for key, types in (("perAnswerType", answer_types), ("perQuestionType", question_types)):
    groups: Dict[str, List[float]] = {}
    for t, s in zip(types or (), scores):
      if t is not None:
        groups.setdefault(t, []).append(s)
    out[key] = {t: _percent(v) for t, v in groups.items()}
  out["perQuestion"] = [official_round(100 * s) for s in scores]
  return out
