"""Few-shot benchmark evaluation: prompts token by token, the demonstrations' draw, a
tiny run of a checkpoint on hand-made official-format files, bad inputs."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import sentencepiece as spm

from bliperax import benchmarks
from bliperax.benchmarks import fewshot, predictions
from bliperax.benchmarks.records import BenchmarkError, Sample
from bliperax.data import tokenizer as tokenizer_lib
from bliperax.infer import checkpoints
from bliperax.infer import evaluate as eval_lib
from bliperax.infer import fewshot as fewshot_run
from conftest import GOLDEN, require
from digits_run import ROOT, digits_benchmarks, short_run

IMAGE, CHUNK = 32012, 32014  # <image>, <|endofchunk|>


def _pieces(ids):
  """SentencePiece pieces of ids; the added tokens as their ids."""
  sp = spm.SentencePieceProcessor(model_file=str(tokenizer_lib.DEFAULT_MODEL_PATH))
  return [sp.id_to_piece(i) if i < 32000 else i for i in ids]


def _vqa(qid, question, answers, image="a.jpg"):
  return Sample(id=qid, image=image, question=question, answers=tuple(answers))


def test_vqa_prompt_token_by_token():
  demo = _vqa(1, "What is it?", ["cat"] * 3 + ["kitten"], image="train/1.jpg")
  query = _vqa(2, "Is it red? ", ["yes"], image="val/2.jpg")
  prompt = fewshot.render(query, [demo])
  assert prompt.text == ("<image>Question: What is it? Short answer: cat<|endofchunk|>"
                         "<image>Question: Is it red? Short answer:")
  assert prompt.images == ("train/1.jpg", "val/2.jpg")  # demonstrations first
  # No BOS and no lone '▁' before the leading <image>; text right after an added token
  # has no dummy prefix ('Question', not '▁Question'); the answer's space is its '▁'.
  assert _pieces(tokenizer_lib.Tokenizer().encode(prompt.text)) == [
      IMAGE, "Question", ":", "▁What", "▁is", "▁it", "?", "▁Short", "▁answer", ":",
      "▁cat", CHUNK,
      IMAGE, "Question", ":", "▁Is", "▁it", "▁red", "?", "▁Short", "▁answer", ":"]


def test_caption_prompt_token_by_token_with_its_vision_slots():
  """The prompt as the model gets it: each <image> becomes its image's L slots."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from bliperax.models import presets  # pylint: disable=g-import-not-at-top
  cfg = presets.get("digits")
  demo = Sample(id=7, image="d.png", question=None, answers=("The number 7.", "Seven."))
  query = Sample(id=8, image="q.png", question=None, answers=("x",))
  prompt = fewshot.render(query, [demo])
  tokenizer = tokenizer_lib.Tokenizer()
  instruction = ["A", "▁short", "▁description", "▁of", "▁this", "▁image", "▁in", "▁one",
                 "▁sentence", ":"]
  ids = tokenizer.encode(prompt.text)
  assert _pieces(ids) == ([IMAGE] + instruction + ["▁The", "▁number", "▁", "7", ".", CHUNK]
                          + [IMAGE] + instruction)
  images = [Image.new("RGB", (16, 16), c) for c in ("white", "black")]
  example = eval_lib.text_example(prompt.text, images, cfg, tokenizer, anyres=False)
  latents = cfg.resampler.num_latents
  expanded = []
  for t in ids:
    expanded.extend([IMAGE] * latents if t == IMAGE else [t])
  np.testing.assert_array_equal(example.tokens, expanded)
  starts = [i for i, t in enumerate(ids) if t == IMAGE]  # slot blocks, in image order
  first, second = starts[0], starts[1] + latents - 1
  np.testing.assert_array_equal(example.vision_slots,
                                list(range(first, first + latents))
                                + list(range(second, second + latents)))
  assert example.crops.shape[0] == 2  # one base crop per image
  with pytest.raises(ValueError, match="2 <image> marker"):
    eval_lib.text_example(prompt.text, images[:1], cfg, tokenizer, anyres=False)


def test_caption_prompt_equals_the_reference_fixture():
  """The golden fixture's few-shot sample is this layout; the reference tokenizer's ids
  of its prompt are ours."""
  meta = json.loads((require(GOLDEN) / "meta.json").read_text())
  sample = next(s for s in meta["samples"] if s["kind"] == "fewshot")
  demo_caption = sample["text"].split(": ", 1)[1].split("<|endofchunk|>")[0]
  prompt = fewshot.render(Sample(2, "street.png", None, ("-",)),
                          [Sample(1, sample["images"][0], None, (demo_caption,))])
  assert prompt.text == sample["text"]
  assert list(prompt.images) == sample["images"]
  expected = np.load(GOLDEN / "expected.npz")["prompt_ids"][meta["samples"].index(sample)]
  expected = expected[np.argmax(expected != 32011):]  # left padding off
  assert tokenizer_lib.Tokenizer().encode(prompt.text) == expected.tolist()


def test_demonstrations_fixed_seed_and_answers():
  draws = [fewshot.draw_demos(50, 8, seed=0, index=i) for i in range(20)]
  assert draws == [fewshot.draw_demos(50, 8, seed=0, index=i) for i in range(20)]
  assert all(len(set(d)) == 8 and all(0 <= j < 50 for j in d) for d in draws)
  assert len({tuple(d) for d in draws}) == 20  # each query its own draw
  assert draws[0] != fewshot.draw_demos(50, 8, seed=1, index=0)
  assert fewshot.draw_demos(50, 0, 0, 3) == []
  assert sorted(fewshot.draw_demos(3, 3, 0, 0)) == [0, 1, 2]
  with pytest.raises(BenchmarkError, match="4 shots need 4 train samples; the train split has 3"):
    fewshot.draw_demos(3, 4, 0, 0)
  queries = [_vqa(i, f"q{i}?", ["a"]) for i in range(6)]
  train = [_vqa(100 + i, f"t{i}?", [str(i)]) for i in range(10)]
  # --limit keeps each remaining query's prompt: draws depend on the seed and index only.
  assert fewshot.prompts(queries[:2], train, 4, 0) == fewshot.prompts(queries, train, 4, 0)[:2]
  assert fewshot.demo_answer(_vqa(1, "q", ["2", "two", "two", "2", "3"])) == "2"  # tie: earliest
  assert fewshot.demo_answer(_vqa(1, "q", ["no", "yes", "yes"])) == "yes"
  assert fewshot.demo_answer(Sample(1, "a", None, (" A dog. ", "A cat."))) == "A dog."


def test_postprocess_keeps_the_first_line_stripped():
  assert fewshot.postprocess(" two dogs \nQuestion: what?") == "two dogs"
  assert fewshot.postprocess("\n\n a cat\n") == "a cat"
  assert fewshot.postprocess("") == ""
  tokenizer = tokenizer_lib.Tokenizer()
  ids = tokenizer.encode(" a cat") + [CHUNK] + tokenizer.encode("<image>more")
  stops = (CHUNK, *tokenizer.eos_ids)
  assert eval_lib.answer_text(ids, tokenizer, stops) == "a cat"


@pytest.fixture(scope="module")
def bench_files(tmp_path_factory):
  """tools/make_digits_benchmarks.py's VQAv2 and COCO files: 4 eval, 6 train digits."""
  return digits_benchmarks(tmp_path_factory.mktemp("digits_bench"), num_eval=4, num_train=6)


@pytest.fixture(scope="module")
def base_model():
  params, cfg = checkpoints.load(short_run()["pretrain_params"])
  return params, cfg


def test_fewshot_run_on_official_files(base_model, bench_files, tmp_path):
  """0 and 2 shots on 3 VQAv2 questions: the answers are those `evaluate.answer` gives
  the rendered prompts (batched == one by one is tests/test_cli_infer.py's), stopped at
  <|endofchunk|> and post-processed; the written predictions re-score the same."""
  params, cfg = base_model
  tokenizer = tokenizer_lib.Tokenizer()
  bench = benchmarks.get("vqav2")
  results = fewshot_run.evaluate(params, cfg, tokenizer, bench, bench_files / "vqa",
                                 bench_files / "images", (0, 2), limit=3, batch_size=2,
                                 max_new_tokens=4)
  assert list(results) == [0, 2]
  queries = bench.read(bench_files / "vqa")[:3]
  train = bench.read(bench_files / "vqa", "train")
  for k, result in results.items():
    assert [s.id for s in result["samples"]] == [s.id for s in queries]
    prompts = fewshot.prompts(queries, train, k, seed=0)
    assert all(len(p.images) == k + 1 for p in prompts)
    examples = [eval_lib.text_example(
        p.text, [(bench_files / "images" / f).read_bytes() for f in p.images], cfg,
        tokenizer, anyres=False) for p in prompts]
    texts = eval_lib.answer(params, cfg, examples, tokenizer, 4, batch_size=2,
                            eos_ids=(CHUNK, *tokenizer.eos_ids))
    assert result["texts"] == [fewshot.postprocess(t) for t in texts]
    path = tmp_path / f"{k}.json"
    path.write_text(json.dumps(predictions.records(bench, queries, result["texts"])))
    rescored = benchmarks.score_file(bench, bench_files / "vqa", path, partial=True)
    assert rescored["accuracy"] == result["accuracy"]
    assert rescored["perQuestion"] == result["perQuestion"]


def test_fewshot_bad_inputs(base_model, bench_files, tmp_path):
  params, cfg = base_model
  tokenizer = tokenizer_lib.Tokenizer()
  bench = benchmarks.get("vqav2")
  with pytest.raises(BenchmarkError, match="9 shots need 9 train samples; the train split has 6"):
    fewshot_run.evaluate(params, cfg, tokenizer, bench, bench_files / "vqa",
                         bench_files / "images", (0, 9))
  images = tmp_path / "images"
  shutil.copytree(bench_files / "images", images)
  (images / "val2014" / "COCO_val2014_000000000001.jpg").unlink()
  with pytest.raises(BenchmarkError, match=r"missing image .*COCO_val2014_000000000001\.jpg "
                                           r"\(its image, for VQAv2 question_id 10;"):
    fewshot_run.evaluate(params, cfg, tokenizer, bench, bench_files / "vqa", images, (0,))
  (images / "val2014" / "COCO_val2014_000000000001.jpg").write_bytes(b"not an image")
  with pytest.raises(BenchmarkError, match="VQAv2 question_id 10 .*undecodable image"):
    fewshot_run.evaluate(params, cfg, tokenizer, bench, bench_files / "vqa", images, (0,))
  wrong = tmp_path / "wrong"  # a file of another benchmark under COCO's name
  wrong.mkdir()
  shutil.copy(bench_files / "vqa" / "v2_OpenEnded_mscoco_val2014_questions.json",
              wrong / "captions_val2014.json")
  with pytest.raises(BenchmarkError, match="is the VQAv2 questions file .*not a COCO captions"):
    fewshot_run.evaluate(params, cfg, tokenizer, benchmarks.get("coco_val2014"), wrong,
                         images, (0,))


def _cli(*args, timeout=300):
  return subprocess.run([sys.executable, "-m", "bliperax.evaluate", *args], cwd=ROOT,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                        text=True, timeout=timeout, check=False)


def _error_line(result) -> str:
  lines = [l for l in result.stderr.splitlines()
           if l.strip() and not l.startswith("Pass --helpshort")]
  assert result.returncode != 0, result.stdout[-2000:]
  assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  return lines[0]


def test_fewshot_cli_usage_errors(bench_files, tmp_path):
  """Refused before any model is loaded: one line each."""
  base = ["--benchmark=vqav2", f"--data_dir={bench_files / 'vqa'}", "--checkpoint=/x"]
  assert "needs --image_dir too" in _error_line(_cli(*base))
  line = _error_line(_cli(*base, f"--image_dir={tmp_path / 'none'}"))
  assert "--image_dir" in line and "is not a folder" in line
  line = _error_line(_cli(*base, f"--image_dir={bench_files}", "--shots=0,four"))
  assert "--shots takes counts like 0,4,8; got 0,four" in line
  line = _error_line(_cli(*base, f"--image_dir={bench_files}", "--shots=4,4"))
  assert "distinct counts" in line
  line = _error_line(_cli(*base, f"--image_dir={bench_files}", "--config=experiments/tiny.py"))
  assert "drop --config" in line
  line = _error_line(_cli(*base, f"--image_dir={bench_files}"))
  assert "cannot load --checkpoint" in line and "/x" in line


@pytest.mark.slow  # a CLI process: imports, loads and compiles again (~30 s)
def test_fewshot_cli_writes_rescorable_predictions(bench_files, tmp_path):
  ckpt = short_run()["pretrain_params"]
  out = _cli(f"--checkpoint={ckpt}", "--benchmark=coco_val2014",
             f"--data_dir={bench_files / 'coco'}", f"--image_dir={bench_files / 'images'}",
             "--shots=0,2", "--batch_size=2", "--max_new_tokens=6", "--tokenizer=python",
             f"--output={tmp_path / 'r.json'}")
  assert out.returncode == 0, out.stderr[-3000:]
  summary = json.loads(out.stdout.strip().splitlines()[-1])
  doc = json.loads((tmp_path / "r.json").read_text())
  assert "| model | COCO val2014 CIDEr, 0/2 shots |" in out.stdout
  for k in ("0", "2"):
    path = doc["shots"][k]["predictions"]
    assert path == str(tmp_path / f"r_{k}shot_predictions.json")
    assert [p["image_id"] for p in json.loads(pathlib.Path(path).read_text())] == [0, 1, 2, 3]
    rescored = _cli("--benchmark=coco_val2014", f"--data_dir={bench_files / 'coco'}",
                    f"--predictions={path}", "--tokenizer=python")
    assert rescored.returncode == 0, rescored.stderr[-3000:]
    cider = json.loads(rescored.stdout.strip().splitlines()[-1])["CIDEr"]
    assert cider == doc["shots"][k]["CIDEr"]
    assert summary["headline"][k] == pytest.approx(100 * cider, rel=1e-12)
