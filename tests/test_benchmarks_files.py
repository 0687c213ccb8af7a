"""Benchmark readers on tiny files in the released layouts, predictions files scored
through `python -m bliperax.evaluate`, and the one-line errors for bad inputs."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from bliperax import benchmarks
from bliperax.benchmarks import BenchmarkError, caption_metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
V2 = {"description": "This is v2.0 of the VQA dataset.", "version": "2.0"}
OK = {"description": "This is v1.0 of the OK-VQA dataset.", "version": "1.0"}


def _answers(texts, okvqa=False):
  out = [{"answer": t, "answer_confidence": "yes", "answer_id": i + 1}
         for i, t in enumerate(texts)]
  for a in out if okvqa else ():
    a["raw_answer"] = a["answer"]
  return out


def _vqa_files(folder, info, prefix, subtype, rows, okvqa=False):
  """rows: (question_id, image_id, question, answers, answer_type, question_type)."""
  questions = {"info": info, "task_type": "Open-Ended", "data_type": "mscoco",
               "data_subtype": subtype, "license": {},
               "questions": [{"image_id": r[1], "question": r[2], "question_id": r[0]}
                             for r in rows]}
  annotations = {"info": info, "license": {}, "data_subtype": subtype, "annotations": [
      {"question_id": r[0], "image_id": r[1], "answers": _answers(r[3], okvqa),
       "answer_type": r[4], "question_type": r[5], "multiple_choice_answer": r[3][0]}
      for r in rows]}
  q_name, a_name = prefix
  (folder / q_name.format(subtype)).write_text(json.dumps(questions))
  (folder / a_name.format(subtype)).write_text(json.dumps(annotations))


VQA_ROWS = [  # accuracies: 1.0, 0.9, 0.0 (see test_benchmarks_vqa.py)
    (10, 1, "What color is the car?", ["red"] * 4 + ["dark red"] * 6, "other", "what color is the"),
    (11, 1, "How many dogs?", ["2"] * 2 + ["two"] + ["3"] * 7, "number", "how many"),
    (20, 2, "Is it sunny?", ["yes"] * 10, "yes/no", "is it"),
]
VQA_PREDICTIONS = {10: "Red.", 11: "two", 20: "Yes"}
REFS = [["A man riding a wave on top of a surfboard.", "A surfer rides a large wave."],
        ["Two dogs playing with a frisbee in the park.", "A couple of dogs running on grass."],
        ["A plate of food with broccoli and rice.", "A white plate with rice and broccoli."]]
CAPTIONS = ["a man riding a wave on a surfboard", "two dogs playing in the park",
            "a plate of rice and broccoli."]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """One folder per benchmark with its eval (and train) files under the released names."""
  root = tmp_path_factory.mktemp("benchmarks")
  dirs = {name: root / name for name in benchmarks.BENCHMARKS}
  for d in dirs.values():
    d.mkdir()
  v2_names = ("v2_OpenEnded_mscoco_{}_questions.json", "v2_mscoco_{}_annotations.json")
  ok_names = ("OpenEnded_mscoco_{}_questions.json", "mscoco_{}_annotations.json")
  _vqa_files(dirs["vqav2"], V2, v2_names, "val2014", VQA_ROWS)
  _vqa_files(dirs["vqav2"], V2, v2_names, "train2014",
             [(5, 9, "What is it?", ["cat"] * 10, "other", "what is")])
  _vqa_files(dirs["okvqa"], OK, ok_names, "val2014",
             [(r[0], r[1], r[2], r[3], "other", "one") for r in VQA_ROWS], okvqa=True)
  textvqa = {"dataset_name": "textvqa", "dataset_type": "val", "data": [
      {"question_id": r[0], "question": r[2], "image_id": f"img{r[1]:04d}", "answers": r[3],
       "image_classes": [], "flickr_original_url": ""} for r in VQA_ROWS]}
  (dirs["textvqa"] / "TextVQA_0.5.1_val.json").write_text(json.dumps(textvqa))
  vizwiz = [{"image": f"VizWiz_val_{r[0]:08d}.jpg", "question": r[2], "answer_type": r[4],
             "answerable": 1, "answers": [{"answer": a, "answer_confidence": "yes"}
                                          for a in r[3]]} for r in VQA_ROWS]
  (dirs["vizwiz"] / "val.json").write_text(json.dumps(vizwiz))
  (dirs["vizwiz"] / "train.json").write_text(json.dumps(vizwiz[:1]))

  splits = ["test", "train", "test", "restval", "test", "val"]
  karpathy = {"dataset": "coco", "images": [
      {"filepath": "val2014" if s != "train" else "train2014", "split": s, "cocoid": 100 + i,
       "filename": f"COCO_{'val2014' if s != 'train' else 'train2014'}_{100 + i:012d}.jpg",
       "imgid": i, "sentids": [],
       "sentences": [{"raw": c, "tokens": c.lower().split(), "imgid": i, "sentid": 0}
                     for c in REFS[(i // 2) % 3]]} for i, s in enumerate(splits)]}
  for name in ("coco", "nocaps"):  # NoCaps' demonstrations are COCO's
    (dirs[name] / "dataset_coco.json").write_text(json.dumps(karpathy))

  def coco_format(ids, file_names, domains=None):
    images = [{"id": i, "file_name": f, "height": 1, "width": 1} for i, f in zip(ids, file_names)]
    for image, domain in zip(images, domains or ()):
      image["domain"] = domain
    return {"info": {}, "licenses": [], "images": images, "annotations": [
        {"image_id": i, "id": 10 * i + j, "caption": c}
        for i, refs in zip(ids, REFS) for j, c in enumerate(refs)]}
  (dirs["coco_val2014"] / "captions_val2014.json").write_text(json.dumps(coco_format(
      [100, 102, 104], [f"COCO_val2014_{i:012d}.jpg" for i in (100, 102, 104)])))
  (dirs["nocaps"] / "nocaps_val_4500_captions.json").write_text(json.dumps(coco_format(
      [0, 1, 2], ["0013ea2087020901.jpg", "00223d4b2f8e47b4.jpg", "0041df1a33cc5ca2.jpg"],
      ["in-domain", "near-domain", "near-domain"])))
  textcaps = {"dataset_name": "textcaps", "dataset_type": "val", "data": [
      {"image_id": f"tc{i}", "image_name": f"tc{i}", "caption_id": j, "caption_str": c,
       "reference_strs": refs} for i, refs in enumerate(REFS) for j, c in enumerate(refs)]}
  (dirs["textcaps"] / "TextCaps_0.1_val.json").write_text(json.dumps(textcaps))
  return dirs


def test_vqa_readers_yield_uniform_samples(data):
  v2 = benchmarks.get("vqav2").read(data["vqav2"])
  assert [s.id for s in v2] == [10, 11, 20]
  assert v2[0] == benchmarks.Sample(
      id=10, image="val2014/COCO_val2014_000000000001.jpg", question="What color is the car?",
      answers=tuple(VQA_ROWS[0][3]), answer_type="other", question_type="what color is the")
  train = benchmarks.get("vqav2").read(data["vqav2"], "train")
  assert train[0].image == "train2014/COCO_train2014_000000000009.jpg"
  assert train[0].answers == ("cat",) * 10
  ok = benchmarks.get("okvqa").read(data["okvqa"])
  assert ok[2].question_type == "one" and ok[2].answers == ("yes",) * 10
  text = benchmarks.get("textvqa").read(data["textvqa"])
  assert text[1].image == "train_images/img0001.jpg" and text[1].answer_type is None
  wiz = benchmarks.get("vizwiz").read(data["vizwiz"])
  assert wiz[2].id == "VizWiz_val_00000020.jpg" and wiz[2].image == "val/VizWiz_val_00000020.jpg"
  assert wiz[2].answer_type == "yes/no"
  assert benchmarks.get("vizwiz").read(data["vizwiz"], "train")[0].image.startswith("train/")


def test_caption_readers_yield_uniform_samples(data):
  coco = benchmarks.get("coco").read(data["coco"])  # Karpathy test split
  assert [s.id for s in coco] == [100, 102, 104]
  assert coco[0].image == "val2014/COCO_val2014_000000000100.jpg"
  assert coco[0].question is None and coco[0].answers == tuple(REFS[0])
  train = benchmarks.get("coco").read(data["coco"], "train")  # train + restval
  assert [s.id for s in train] == [101, 103]
  assert train[0].image == "train2014/COCO_train2014_000000000101.jpg"
  assert [s.id for s in benchmarks.get("nocaps").read(data["nocaps"], "train")] == [101, 103]
  val2014 = benchmarks.get("coco_val2014").read(data["coco_val2014"])
  assert val2014[1].image == "val2014/COCO_val2014_000000000102.jpg"
  nocaps = benchmarks.get("nocaps").read(data["nocaps"])
  assert [s.domain for s in nocaps] == ["in-domain", "near-domain", "near-domain"]
  assert nocaps[0].image == "0013ea2087020901.jpg"
  textcaps = benchmarks.get("textcaps").read(data["textcaps"])
  assert [s.id for s in textcaps] == ["tc0", "tc1", "tc2"]
  assert textcaps[2].answers == tuple(REFS[2]) and textcaps[2].image == "train_images/tc2.jpg"


def _cli(*args, env=None):
  return subprocess.run([sys.executable, "-m", "bliperax.evaluate", *args], cwd=ROOT,
                        env=dict(env or os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                        text=True, timeout=300, check=False)


def _error_line(result) -> str:
  lines = [l for l in result.stderr.splitlines()
           if l.strip() and not l.startswith("Pass --helpshort")]
  assert result.returncode != 0, result.stdout[-2000:]
  assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  return lines[0]


def _predictions(name, tmp_path, drop=0, extra=()):
  bench = benchmarks.get(name)
  samples = bench.read(_predictions.data[name])
  if bench.task == "vqa":
    texts = [VQA_PREDICTIONS[r[0]] for r in VQA_ROWS]
  else:
    texts = CAPTIONS
  rows = [{bench.id_keys[0]: s.id, bench.text_key: t} for s, t in zip(samples, texts)]
  rows = rows[drop:] + list(extra)
  path = tmp_path / f"{name}_predictions.json"
  path.write_text(json.dumps(rows))
  return path


@pytest.mark.parametrize("name", list(benchmarks.BENCHMARKS))
def test_predictions_round_trip_through_the_cli(name, data, tmp_path):
  _predictions.data = data
  bench = benchmarks.get(name)
  if bench.task == "caption":
    pytest.importorskip("pycocoevalcap")
  path = _predictions(name, tmp_path)
  out = _cli(f"--benchmark={name}", f"--data_dir={data[name]}", f"--predictions={path}",
             "--tokenizer=python", f"--output={tmp_path / 'scores.json'}")
  assert out.returncode == 0, out.stderr[-3000:]
  last = json.loads(out.stdout.strip().splitlines()[-1])
  full = json.loads((tmp_path / "scores.json").read_text())
  assert last["benchmark"] == name and last["output"] == str(tmp_path / "scores.json")
  if bench.task == "vqa":
    # 1.0, 0.9 and 0.0 (all ten answers 'yes', prediction 'Yes': not normalized).
    assert last["accuracy"] == 63.33 and last["questions"] == 3
    types = {"vqav2": {"other": 100.0, "number": 90.0, "yes/no": 0.0},
             "okvqa": {"other": 63.33}, "textvqa": {},
             "vizwiz": {"other": 100.0, "number": 90.0, "yes/no": 0.0}}[name]
    assert last["perAnswerType"] == types
    assert "perQuestion" not in last and len(full["perQuestion"]) == 3
    assert "overall            63.33" in out.stdout
  else:
    expected = caption_metrics.score(REFS, CAPTIONS, "python")
    assert last["CIDEr"] == expected["CIDEr"] and last["Bleu_4"] == expected["Bleu_4"]
    assert last["images"] == 3 and last["tokenizer"].startswith("python")
    assert f"{100 * expected['CIDEr']:.2f}" in out.stdout
    if name == "nocaps":
      assert set(last["perDomain"]) == {"in-domain", "near-domain"}
      assert last["perDomain"]["near-domain"]["images"] == 2


def test_caption_cli_says_which_tokenizer_ran(data, tmp_path):
  pytest.importorskip("pycocoevalcap")
  _predictions.data = data
  path = _predictions("coco", tmp_path)
  no_java = _cli("--benchmark=coco", f"--data_dir={data['coco']}", f"--predictions={path}",
                 env=dict(os.environ, PATH=str(tmp_path / "empty")))
  assert no_java.returncode == 0, no_java.stderr[-3000:]
  assert json.loads(no_java.stdout.splitlines()[-1])["tokenizer"].startswith("python")
  assert "tokenizer: python" in no_java.stdout
  if shutil.which("java"):
    java = _cli("--benchmark=coco", f"--data_dir={data['coco']}", f"--predictions={path}")
    assert java.returncode == 0, java.stderr[-3000:]
    result = json.loads(java.stdout.splitlines()[-1])
    assert result["tokenizer"].startswith("ptb")
    # Ordinary captions: the same tokens, so the same scores as the fallback.
    assert result["CIDEr"] == json.loads(no_java.stdout.splitlines()[-1])["CIDEr"]


def test_bad_predictions_are_one_clear_line(data, tmp_path):
  _predictions.data = data
  flags = ["--benchmark=vqav2", f"--data_dir={data['vqav2']}"]
  unknown = _predictions("vqav2", tmp_path, extra=[{"question_id": 999, "answer": "x"}])
  line = _error_line(_cli(*flags, f"--predictions={unknown}"))
  assert "1 prediction(s) for question_ids that are not in VQAv2" in line and "999" in line
  assert "v2_mscoco_val2014_annotations.json" in line
  missing = _predictions("vqav2", tmp_path, drop=2)
  line = _error_line(_cli(*flags, f"--predictions={missing}"))
  assert "no prediction for 2 of the 3 VQAv2 questions (question_id 10, 11)" in line
  assert "--partial" in line
  partial = _cli(*flags, f"--predictions={missing}", "--partial")
  result = json.loads(partial.stdout.splitlines()[-1])
  assert result["questions"] == 1 and result["partial"] == "1 of 3" and result["accuracy"] == 0.0
  swapped = _error_line(_cli(*flags, f"--predictions={data['vqav2']}/"
                                      "v2_mscoco_val2014_annotations.json"))
  assert "is the VQAv2 annotations file, not a predictions file" in swapped


@pytest.mark.parametrize("rows, message", [
    ({"question_id": 10}, "expected a list of {\"question_id\", \"answer\"} objects"),
    ([{"id": 10, "answer": "x"}], "entry 0 has no 'question_id'"),
    ([{"question_id": 10, "answer": 3}], "entry 0 (question_id 10) has a int as its 'answer'"),
    ([{"question_id": 10, "answer": "a"}, {"question_id": "10", "answer": "b"}],
     "more than one prediction for question_id '10' (entries 0 and 1)"),
])
def test_malformed_predictions(data, tmp_path, rows, message):
  path = tmp_path / "p.json"
  path.write_text(json.dumps(rows))
  with pytest.raises(BenchmarkError) as e:
    benchmarks.score_file(benchmarks.get("vqav2"), data["vqav2"], path)
  assert message in str(e.value) and str(path) in str(e.value)


def test_missing_and_wrong_files_are_named(data, tmp_path):
  # Missing files: every one, by path.
  with pytest.raises(BenchmarkError, match=r"missing file .*/v2_OpenEnded_mscoco_val2014_"
                                           r"questions\.json, .*/v2_mscoco_val2014_annotations"
                                           r"\.json: VQAv2's eval split reads"):
    benchmarks.get("vqav2").read(tmp_path)
  with pytest.raises(BenchmarkError, match=r"missing file .*/TextCaps_0\.1_train\.json"):
    benchmarks.get("textcaps").read(data["textcaps"], "train")
  # OK-VQA's files under VQAv2's names: said so, with the benchmark that reads them.
  wrong = tmp_path / "wrong"
  wrong.mkdir()
  shutil.copy(data["okvqa"] / "OpenEnded_mscoco_val2014_questions.json",
              wrong / "v2_OpenEnded_mscoco_val2014_questions.json")
  shutil.copy(data["vqav2"] / "v2_mscoco_val2014_annotations.json", wrong)
  with pytest.raises(BenchmarkError, match="is the OK-VQA questions file "
                                           r"\(--benchmark=okvqa reads it\), not the VQAv2"):
    benchmarks.get("vqav2").read(wrong)
  shutil.copy(data["textcaps"] / "TextCaps_0.1_val.json", wrong / "TextVQA_0.5.1_val.json")
  with pytest.raises(BenchmarkError, match="is a TextCaps file .*, not a TextVQA file"):
    benchmarks.get("textvqa").read(wrong)
  shutil.copy(data["nocaps"] / "nocaps_val_4500_captions.json", wrong / "captions_val2014.json")
  with pytest.raises(BenchmarkError, match="is a NoCaps captions file"):
    benchmarks.get("coco_val2014").read(wrong)
  # A missing field: the file, the record and the field.
  doc = json.loads((data["vqav2"] / "v2_mscoco_val2014_annotations.json").read_text())
  del doc["annotations"][1]["answer_type"]
  (wrong / "v2_mscoco_val2014_annotations.json").write_text(json.dumps(doc))
  shutil.copy(data["vqav2"] / "v2_OpenEnded_mscoco_val2014_questions.json", wrong)
  with pytest.raises(BenchmarkError, match=r"annotations\.json: annotation 1 "
                                           r"\(question_id 11\) has no field 'answer_type'"):
    benchmarks.get("vqav2").read(wrong)
  (wrong / "val.json").write_text(json.dumps([{"image": "a.jpg", "question": "q?"}]))
  with pytest.raises(BenchmarkError, match=r"val\.json: entry 0 \(image 'a\.jpg'\) has no "
                                           "field 'answers'"):
    benchmarks.get("vizwiz").read(wrong)
  (wrong / "val.json").write_text("{not json")
  with pytest.raises(BenchmarkError, match=r"val\.json: not a readable JSON file"):
    benchmarks.get("vizwiz").read(wrong)


def test_cli_modes_and_usage_errors(data, tmp_path):
  line = _error_line(_cli("--benchmark=vqav2", f"--predictions={tmp_path / 'p.json'}"))
  assert "scoring predictions needs --data_dir too" in line
  line = _error_line(_cli(f"--predictions={tmp_path / 'p.json'}"))
  assert "scoring predictions needs --benchmark and --data_dir too" in line
  line = _error_line(_cli("--benchmark=vqav2", f"--data_dir={data['vqav2']}"))
  assert "--checkpoint" in line and "--predictions" in line
  line = _error_line(_cli("--benchmark=vqav2", f"--data_dir={data['vqav2']}",
                          f"--predictions={tmp_path / 'p.json'}", "--checkpoint=/x"))
  assert "scored without a model" in line
  line = _error_line(_cli())
  assert "--config and --checkpoint" in line and "--predictions" in line
  line = _error_line(_cli("--benchmark=mmmu", f"--data_dir={tmp_path}"))
  assert "vqav2" in line and "textcaps" in line  # absl names the valid values
  line = _error_line(_cli("--benchmark=vqav2", f"--data_dir={tmp_path / 'none'}",
                          f"--predictions={tmp_path / 'p.json'}"))
  assert "missing file" in line and "v2_OpenEnded_mscoco_val2014_questions.json" in line
