r"""Compares bliperax's VQA accuracy with the official VQA evaluation code, run as is.

  git clone https://github.com/GT-Vision-Lab/VQA /tmp/VQA
  python tools/crosscheck_vqa_eval.py --official=/tmp/VQA --python2=python2.7 --cases=300

Writes random VQA-format question, annotation and results files (answers drawn from
a pool of strings that exercise every normalization rule: punctuation next to
spaces or not, commas between digits, periods, number words, articles,
contractions, case, tabs and newlines, ten identical answers that are never
normalized, non-ASCII digits, more than 32 periods), runs the official
`vqaEval.py` with its `vqa.py` under Python 2 (the code is Python 2) on each, and
compares overall, per-answer-type and per-question-type accuracies and every
per-question score with `bliperax.benchmarks.vqa_accuracy`. The first case is the
rounding one: 1 of 32 questions right, 3.125%, which Python 2 rounds to 3.13.
Prints mismatches and, last, one JSON line; exit status 1 on any mismatch.
"""
import json
import pathlib
import random
import subprocess
import tempfile

from absl import flags

from bliperax import cli
from bliperax.benchmarks import vqa_accuracy

_OFFICIAL = flags.DEFINE_string("official", None, "A clone of GT-Vision-Lab/VQA.")
_PYTHON2 = flags.DEFINE_string("python2", "python2", "A Python 2.7 interpreter.")
_CASES = flags.DEFINE_integer("cases", 100, "Random annotation files to compare.", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
flags.mark_flag_as_required("official")

POOL = [
    "yes", "Yes", "yes.", "YES", "no", "No!", "2", "two", "Two", "2.", "the dog", "a dog",
    "dog", "Dog.", "dogs", "red, white", "red,white", "1,000", "1000", "1, 000", "3.5",
    "3.5.", ".5", "don't", "dont", "do not", "isnt", "isn't", "it's", "its", "left-side",
    "left side", "left - side", "t-shirt", "tshirt", "t shirt", "u.s.a.", "usa", "u.s.a",
    "none", "0", "zero", "None", "new york", "New York!", " new york ", "new\tyork",
    "new\nyork", "(a) cat", "a/b", "a / b", "a /b", "50%", "$5", "&", "a.b.c", "yes!!!",
    "hello?", "snow board", "snowboard", "...", "", " ", "an apple", "apple", "the the",
    "ten", "10", "10.", "'quoted'", "quoted", '"quoted"', "5:30", "a_b", "a b", "a-b",
    "a+b", "@home", "<3", "caf\u00e9", "\u0663", "3", "1\u0663,2", "wouldnt've", "whats",
    "what's", "somebody'd", "somebodyd", "Im", "i'm", "yall", "y'all", "oclock", "o'clock",
    "." * 40 + "x", "x" + "." * 40, "a.b;c", "a; b", "2,3", "a,b", "a, b", "one two", "1 2",
    "[x]", "{x}", "x=y", "back\\slash", "grey`s", "greys", "a\u00a0b", "A Dog", "THE DOG",
    "mr. smith", "mr smith", "1.5.2", "1.5", "15"]

RUNNER = r'''
import json, os, sys
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[2])
import vqa, vqaEval
ann, ques, res, out = sys.argv[3:7]
stdout, sys.stdout = sys.stdout, open(os.devnull, "w")
v = vqa.VQA(ann, ques)
e = vqaEval.VQAEval(v, v.loadRes(res, ques), n=2)
e.evaluate()
sys.stdout = stdout
json.dump({"accuracy": e.accuracy, "evalQA": dict((str(k), x) for k, x in e.evalQA.items())},
          open(out, "w"))
'''


def _case(rng: random.Random, n: int, rounding: bool):
  questions, annotations, results = [], [], []
  for q in range(n):
    qid = rng.randint(1, 10 ** 9)
    variants = rng.sample(POOL, rng.choice([1, 1, 2, 3, 4, 10]))
    answers = [rng.choice(variants) for _ in range(10)]
    prediction = rng.choice(variants + [rng.choice(POOL)])
    if rounding:
      answers, prediction = ["yes"] * 10, "yes" if q == 0 else "no"
    questions.append({"image_id": q, "question": "?", "question_id": qid})
    annotations.append({
        "question_id": qid, "image_id": q, "multiple_choice_answer": answers[0],
        "answer_type": rng.choice(["yes/no", "number", "other"]),
        "question_type": rng.choice(["what is", "how many", "is the", "none of the above"]),
        "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                    for i, a in enumerate(answers)]})
    results.append({"question_id": qid, "answer": prediction})
  rng.shuffle(results)
  return ({"info": {}, "task_type": "Open-Ended", "data_type": "mscoco",
           "data_subtype": "val2014", "license": {}, "questions": questions},
          {"annotations": annotations}, results)


def main(argv):
  del argv
  official = pathlib.Path(_OFFICIAL.value)
  helper = official / "PythonHelperTools" / "vqaTools"
  evaluation = official / "PythonEvaluationTools" / "vqaEvaluation"
  if not (helper / "vqa.py").is_file() or not (evaluation / "vqaEval.py").is_file():
    cli.fail(f"--official={official} is not a clone of GT-Vision-Lab/VQA (no "
             "PythonHelperTools/vqaTools/vqa.py or PythonEvaluationTools/vqaEvaluation/vqaEval.py)")
  rng = random.Random(_SEED.value)
  work = pathlib.Path(tempfile.mkdtemp(prefix="vqa_crosscheck_"))
  (work / "runner.py").write_text(RUNNER)
  same_cases = same_questions = questions = 0
  for c in range(_CASES.value):
    qdoc, adoc, results = _case(rng, 32 if c == 0 else rng.randint(1, 60), rounding=c == 0)
    paths = [work / f for f in ("q.json", "a.json", "r.json", "o.json")]
    for path, doc in zip(paths, (qdoc, adoc, results)):
      path.write_text(json.dumps(doc))
    run = subprocess.run([_PYTHON2.value, str(work / "runner.py"), str(helper), str(evaluation),
                          str(paths[1]), str(paths[0]), str(paths[2]), str(paths[3])],
                         capture_output=True, text=True, check=False)
    if run.returncode != 0:
      cli.fail(f"the official code failed under {_PYTHON2.value}: "
               f"{run.stderr.strip().splitlines()[-1] if run.stderr.strip() else run.returncode}")
    official_result = json.loads(paths[3].read_text())
    anns = adoc["annotations"]
    by_id = {r["question_id"]: r["answer"] for r in results}
    ours = vqa_accuracy.accuracy([by_id[a["question_id"]] for a in anns],
                                 [[x["answer"] for x in a["answers"]] for a in anns],
                                 [a["answer_type"] for a in anns],
                                 [a["question_type"] for a in anns])
    acc = official_result["accuracy"]
    tables = (acc["overall"] == ours["overall"] and acc["perAnswerType"] == ours["perAnswerType"]
              and acc["perQuestionType"] == ours["perQuestionType"])
    per = [official_result["evalQA"][str(a["question_id"])] == v
           for a, v in zip(anns, ours["perQuestion"])]
    questions += len(per)
    same_questions += sum(per)
    same_cases += tables and all(per)
    if not (tables and all(per)):
      print(f"case {c}: official {acc['overall']}, bliperax {ours['overall']}")
      for ok, a in zip(per, anns):
        if not ok:
          print(f"  answers {[x['answer'] for x in a['answers']]!r} prediction "
                f"{by_id[a['question_id']]!r}: official "
                f"{official_result['evalQA'][str(a['question_id'])]}")
    if c == 0:
      print(f"rounding case (1 of 32 right): official {acc['overall']}, bliperax {ours['overall']}")
  print(json.dumps({"cases": _CASES.value, "identical_cases": same_cases,
                    "questions": questions, "identical_questions": same_questions,
                    "seed": _SEED.value}))
  return 0 if same_cases == _CASES.value else 1


if __name__ == "__main__":
  cli.run(main)
