"""VQA accuracy as the official VQA evaluation (GT-Vision-Lab/VQA vqaEval.py) computes it.

Each expected value below is worked out by hand from the official code's rules
(bliperax/benchmarks/vqa_accuracy.py restates them), so a change of rule fails here.
"""
import pytest

from bliperax.benchmarks import vqa_accuracy as vqa


@pytest.mark.parametrize("text, expected", [
    ("Yes.", "yes"),                  # period not before a digit goes, lower-cased
    ("3.5", "3.5"),                   # period before a digit stays
    ("5.", "5"),
    (".5", ".5"),
    ("u.s.a.", "usa"),
    ("red, white", "red white"),      # ', ' in the text: commas removed
    ("red,white", "red white"),       # comma not next to a space: becomes a space
    ("1,000", "1000"),                # a comma between digits: all punctuation removed
    ("1,000 (approx)", "1000 approx"),
    ("left-side", "left side"),       # hyphen inside a word: a space
    ("left - side", "left side"),     # ' -' in the text: removed; split() eats the spaces
    ("t-shirt", "t shirt"),
    ("hello?", "hello"),
    ("x/y", "x y"),
    ("a/b", "b"),                     # ... and then "a" is an article
    ("Two dogs", "2 dogs"),           # number words 0..10
    ("none", "0"),
    ("ten", "10"),
    ("eleven", "eleven"),
    ("The dog", "dog"),               # articles dropped
    ("an apple a day", "apple day"),
    ("dont", "don't"),                # contractions table
    ("whats", "what's"),
    ("don't", "don't"),               # the apostrophe is not punctuation here
    ("it's", "it's"),
    ("its", "its"),
    ("Im", "im"),                     # table key 'Im' is never reached: text is lower-cased first
    ("somebody'd", "somebodyd"),      # the table maps this one backwards
    ("$5", "$5"),                     # '$', '%', '&', '#', '*', ':' are not in the list
    ("50%", "50%"),
    ("5:30", "5:30"),
    ("mr. smith", "mr smith"),
    ("\u0663,\u0663", "\u0663 \u0663"),  # Arabic-Indic digits are not \d in Python 2's re
    ("." * 40, "." * 8),              # re.UNICODE passed as the count: 32 periods go
])
def test_normalize_follows_the_official_rules(text, expected):
  assert vqa.normalize(text) == expected


def test_punctuation_conditions_are_tested_on_the_input_text():
  # '(' has no space next to it, but ') ' does: each mark is judged on its own, so
  # '(' becomes a space and ')' disappears.
  assert vqa.process_punctuation("a(b) c") == "a b c"
  # A comma between digits anywhere removes every listed mark without a space.
  assert vqa.process_punctuation("1,2 a-b") == "12 ab"


TEN_YES = ["yes"] * 10


@pytest.mark.parametrize("prediction, answers, expected", [
    # All ten answers identical: nothing is normalized, the prediction must match as is
    # (whitespace aside).
    ("yes", TEN_YES, 1.0),
    ("Yes", TEN_YES, 0.0),
    ("yes.", TEN_YES, 0.0),
    (" yes\n", TEN_YES, 1.0),                       # \n, \t and ends stripped always
    ("yes", ["Yes."] * 10, 0.0),
    ("2", ["two"] * 10, 0.0),
    ("yes", ["yes"] * 9 + ["yes "], 1.0),           # identical once stripped: still raw
    ("Yes", ["yes"] * 9 + ["yes "], 0.0),
    # Answers differ: prediction and answers are normalized.
    ("YES", ["yes"] * 9 + ["Yes"], 1.0),            # 9 matches without each one: 1
    ("2", ["two"] * 9 + ["2"], 1.0),
    # Counting, min(#other answers matching / 3, 1) averaged over the 10 left out:
    # 1 of 10: the 9 others see 1 match (1/3), the one itself 0 -> 9 * 1/3 / 10 = 0.3
    ("red", ["red"] + ["blue"] * 9, 0.3),
    # 2 of 10: 2 * (1/3) + 8 * (2/3) = 6 -> 0.6
    ("red", ["red"] * 2 + ["blue"] * 8, 0.6),
    # 3 of 10: 3 * (2/3) + 7 * 1 = 9 -> 0.9
    ("red", ["red"] * 3 + ["blue"] * 7, 0.9),
    ("red", ["red"] * 4 + ["blue"] * 6, 1.0),
    # 'two' and '2' normalize alike: 3 of 10 -> 0.9
    ("two", ["2"] * 2 + ["two"] + ["3"] * 7, 0.9),
    ("Red.", ["red"] * 4 + ["dark red"] * 6, 1.0),
    ("4", ["2"] * 2 + ["two"] + ["3"] * 7, 0.0),
    # Fewer than 10 answers: the same formula over however many there are.
    ("a", ["a", "b", "a"], (1 / 3 + 2 / 3 + 1 / 3) / 3),
])
def test_question_accuracy(prediction, answers, expected):
  assert vqa.question_accuracy(prediction, answers) == pytest.approx(expected, abs=1e-12)


def test_overall_and_per_type_accuracy_rounded_as_python2():
  answers = [["red"] * 4 + ["dark red"] * 6, ["2"] * 2 + ["two"] + ["3"] * 7, TEN_YES]
  result = vqa.accuracy(["Red.", "two", "Yes"], answers,
                        ["other", "number", "yes/no"], ["what color", "how many", "is"])
  # (1 + 0.9 + 0) / 3 = 63.333...
  assert result["overall"] == 63.33
  assert result["perAnswerType"] == {"other": 100.0, "number": 90.0, "yes/no": 0.0}
  assert result["perQuestionType"] == {"what color": 100.0, "how many": 90.0, "is": 0.0}
  assert result["perQuestion"] == [100.0, 90.0, 0.0]
  # 1 right of 32: 100 / 32 = 3.125 exactly; Python 2's round (the official code's)
  # gives 3.13, Python 3's round would give 3.12.
  result = vqa.accuracy(["yes"] + ["no"] * 31, [TEN_YES] * 32)
  assert result["overall"] == 3.13 and round(3.125, 2) == 3.12
  assert vqa.official_round(2.675) == 2.67  # not a half: the float is below 2.675
  assert vqa.official_round(-0.125) == -0.13
  # Questions without a type stay out of the per-type tables only.
  result = vqa.accuracy(["yes", "no"], [TEN_YES, TEN_YES], ["yes/no", None])
  assert result["overall"] == 50.0 and result["perAnswerType"] == {"yes/no": 100.0}


def test_accuracy_refuses_mismatched_or_empty_input():
  with pytest.raises(ValueError, match="2 predictions for 1 questions"):
    vqa.accuracy(["a", "b"], [TEN_YES])
  with pytest.raises(ValueError, match="no questions"):
    vqa.accuracy([], [])
  with pytest.raises(ValueError, match="at least one human answer"):
    vqa.question_accuracy("a", [])
