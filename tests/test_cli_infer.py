"""Inference on the short digits run: KV-cache decoding, the generate CLI, bad CLI input."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bliperax.data import batch as batch_lib
from bliperax.data import batch_spec
from bliperax.data import digits
from bliperax.data import tokenizer as tokenizer_lib
from bliperax.infer import checkpoints
from bliperax.infer import evaluate as eval_lib
from bliperax.infer import generate as generate_lib
from bliperax.models.xgenmm import XGenMM
from digits_run import ROOT, short_run

_ENV = dict(os.environ, JAX_PLATFORMS="cpu")


def _cli(*args, timeout=300):
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=_ENV,
                        capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def trained():
  run = short_run()
  params, cfg = checkpoints.load(run["sft"])
  return run, params, cfg


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  folder = tmp_path_factory.mktemp("images")
  train, _ = digits.load_splits()
  paths = []
  for i in range(2):
    path = folder / f"digit{i}.png"
    digits.digit_image(train.images[i]).save(path)
    paths.append(str(path))
  wide = folder / "wide.png"
  digits.row_image(train.images[:4]).save(wide)
  broken = folder / "broken.png"
  broken.write_bytes(b"\x89PNG this is not an image")
  return {"digits": paths, "wide": str(wide), "broken": str(broken)}


def test_load_accepts_workdir_step_and_params(trained):
  run, params, cfg = trained
  step_dir = max((run["sft"] / "checkpoints").glob("[0-9]*"), key=lambda p: int(p.name))
  for path in (run["sft"] / "checkpoints", step_dir):
    other, other_cfg = checkpoints.load(path)
    assert other_cfg == cfg
    for a, b in zip(jax.tree.leaves(other), jax.tree.leaves(params)):
      np.testing.assert_array_equal(a, b)
  exported, exported_cfg = checkpoints.load(run["pretrain_params"])
  assert exported_cfg == cfg
  assert set(exported) == set(params)
  with pytest.raises(checkpoints.CheckpointNotFound):
    checkpoints.load(run["work"] / "nope")
  with pytest.raises(checkpoints.CheckpointNotFound):
    checkpoints.load(run["data"])


@pytest.mark.slow  # the default suite's 15-minute budget on 2 cores
def test_kv_cache_generate_equals_full_recomputation(trained, images):
  """Greedy decoding with the cache = argmax of a full forward after every token."""
  _, params, cfg = trained
  tokenizer = tokenizer_lib.Tokenizer()
  from PIL import Image
  examples = [
      eval_lib.prompt_example("<image>\nRead the number.", [Image.open(images["wide"])],
                              cfg, tokenizer, anyres=True),
      eval_lib.prompt_example("<image>\n<image>\nWhat is the sum of these digits?",
                              [Image.open(p) for p in images["digits"]], cfg, tokenizer,
                              anyres=False),
  ]
  prompt = batch_lib.collate(examples, cfg, tokenizer.pad_id, side="left")
  steps = 6
  cached = generate_lib.generate(params, cfg, prompt, steps, eos_ids=())
  inputs = {k: jnp.asarray(prompt[k]) for k in batch_spec.MODEL_KEYS}
  # Unused group slots point one past the prompt (dropped); appending tokens would
  # bring that slot into range, so point them far away instead.
  t = prompt["tokens"].shape[1]
  inputs["vision_slots"] = jnp.where(inputs["vision_slots"] >= t, 1 << 20,
                                     inputs["vision_slots"])
  model = XGenMM(cfg)
  expected = []
  for _ in range(steps):
    logits = model.apply({"params": params}, **inputs)
    nxt = np.asarray(jnp.argmax(logits[:, -1], axis=-1)).astype(np.int32)
    expected.append(nxt)
    b = nxt.shape[0]
    inputs["tokens"] = jnp.concatenate([inputs["tokens"], nxt[:, None]], axis=1)
    inputs["positions"] = jnp.concatenate([inputs["positions"],
                                           inputs["positions"][:, -1:] + 1], axis=1)
    inputs["segment_ids"] = jnp.concatenate([inputs["segment_ids"],
                                             jnp.ones((b, 1), jnp.int32)], axis=1)
  np.testing.assert_array_equal(cached, np.stack(expected, axis=1))


def test_bfloat16_inference_keeps_weights_and_cache_in_bfloat16(trained, images):
  """for_inference('bfloat16') casts every float weight and switches the compute (and
  so the KV cache) to bfloat16; 'auto' picks it on accelerators only; float32 is the
  identity; a bf16 decode runs end to end."""
  _, params, cfg = trained
  assert checkpoints.inference_dtype("auto", "cpu") == "float32"
  assert checkpoints.inference_dtype("auto", "gpu") == "bfloat16"
  assert checkpoints.inference_dtype("auto", "tpu") == "bfloat16"
  with pytest.raises(ValueError, match="float16"):
    checkpoints.inference_dtype("float16", "cpu")
  same, same_cfg = checkpoints.for_inference(params, cfg, "float32")
  assert same is params and same_cfg == cfg
  half, half_cfg = checkpoints.for_inference(params, cfg, "bfloat16")
  assert {str(p.dtype) for p in jax.tree.leaves(half)} == {"bfloat16"}
  assert half_cfg.numerics.dtype == half_cfg.numerics.param_dtype == "bfloat16"
  cache = generate_lib.init_cache(half_cfg, 1, 16)
  assert {str(c.dtype) for path, c in jax.tree_util.tree_flatten_with_path(cache)[0]
          if "cached_key" in jax.tree_util.keystr(path)
          or "cached_value" in jax.tree_util.keystr(path)} == {"bfloat16"}
  tokenizer = tokenizer_lib.Tokenizer()
  from PIL import Image
  example = eval_lib.prompt_example("<image>\nRead the number.", [Image.open(images["wide"])],
                                    half_cfg, tokenizer, anyres=True)
  prompt = batch_lib.collate_prompts([example], half_cfg, tokenizer.pad_id)
  out = generate_lib.generate(half, half_cfg, prompt, 4, eos_ids=())
  assert out.shape == (1, 4) and ((out >= 0) & (out < 32015)).all()


@pytest.mark.slow  # the default suite's 15-minute budget on 2 cores
def test_batched_bucketed_answers_equal_one_by_one(trained, images):
  """evaluate.answer in sorted, bucketed batches (a short last batch filled up) gives
  each prompt the answer it gets alone, in the order given."""
  _, params, cfg = trained
  tokenizer = tokenizer_lib.Tokenizer()
  from PIL import Image
  digit = [Image.open(p) for p in images["digits"]]
  prompts = [("<image>\nRead the number.", [Image.open(images["wide"])], True),
             ("<image>\n<image>\nWhat is the sum of these digits?", digit, False),
             ("<image>\nWhich digit is this?", digit[:1], False),
             ("What is two plus two?", [], False),
             ("<image>\nWhich digit is this? Answer with one word, please.", digit[1:], True)]
  examples = [eval_lib.prompt_example(text, imgs, cfg, tokenizer, anyres=anyres)
              for text, imgs, anyres in prompts]
  batched = eval_lib.answer(params, cfg, examples, tokenizer, 6, batch_size=3)
  alone = [eval_lib.answer(params, cfg, [e], tokenizer, 6, batch_size=1)[0]
           for e in examples]
  assert batched == alone
  assert len(set(alone)) > 1  # the prompts get different answers: order is checked


@pytest.mark.slow  # two CLI compiles; the decoding itself is covered above
def test_generate_cli_streams_greedy_and_sampled(trained, images):
  run, _, _ = trained
  greedy = _cli("bliperax.generate", f"--checkpoint={run['sft']}",
                f"--image={images['digits'][0]}", f"--image={images['digits'][1]}",
                "--prompt=What is the sum of these digits?", "--max_new_tokens=4")
  assert greedy.returncode == 0, greedy.stderr[-3000:]
  sampled = _cli("bliperax.generate", f"--checkpoint={run['sft']}",
                 f"--image={images['wide']}", "--prompt=<image>\nRead the number.",
                 "--max_new_tokens=4", "--temperature=1.0", "--top_k=5", "--seed=3")
  assert sampled.returncode == 0, sampled.stderr[-3000:]


def test_generate_cli_bad_input(trained, images, tmp_path):
  run, _, _ = trained
  missing = _cli("bliperax.generate", f"--checkpoint={tmp_path / 'none'}",
                 f"--image={images['wide']}", "--prompt=Read the number.")
  assert missing.returncode != 0
  assert "cannot load --checkpoint" in missing.stderr and "does not exist" in missing.stderr
  broken = _cli("bliperax.generate", f"--checkpoint={run['sft']}",
                f"--image={images['broken']}", "--prompt=What digit is this?")
  assert broken.returncode != 0
  assert "undecodable image" in broken.stderr and "broken.png" in broken.stderr
  markers = _cli("bliperax.generate", f"--checkpoint={run['sft']}",
                 f"--image={images['wide']}", "--prompt=<image>\n<image>\nRead.")
  assert markers.returncode != 0
  assert "2 <image> marker(s) but 1 image(s)" in markers.stderr
  unreadable = _cli("bliperax.generate", f"--checkpoint={run['sft']}",
                    f"--image={tmp_path / 'absent.png'}", "--prompt=Read.")
  assert unreadable.returncode != 0 and "cannot read --image" in unreadable.stderr


def test_evaluate_cli_bad_input(trained, tmp_path):
  run, _, _ = trained
  config = f"--config=experiments/digits/sft.py:root={run['data']}"
  missing = _cli("bliperax.evaluate", config, f"--checkpoint={tmp_path / 'none'}")
  assert missing.returncode != 0 and "cannot load --checkpoint" in missing.stderr
  no_task = _cli("bliperax.evaluate", config, f"--checkpoint={run['sft']}", "--tasks=poetry")
  assert no_task.returncode != 0 and "no held-out shards for task 'poetry'" in no_task.stderr


def _error_line(result) -> str:
  """The one line a refused command printed on stderr (absl's help hint aside)."""
  lines = [l for l in result.stderr.splitlines()
           if l.strip() and not l.startswith("Pass --helpshort")]
  assert result.returncode != 0, result.stdout[-2000:]
  assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  return lines[0]


def test_generate_cli_text_only_prompt(trained):
  run, _, _ = trained
  out = _cli("bliperax.generate", f"--checkpoint={run['sft']}", "--prompt=What is 2+2?",
             "--max_new_tokens=3")
  assert out.returncode == 0, out.stderr[-3000:]


def test_generate_cli_refuses_bad_max_new_tokens(trained):
  run, _, cfg = trained
  for value, expected in (("0", "positive"), ("-3", "positive"),
                          (str(cfg.text.max_positions), "max_positions")):
    line = _error_line(_cli("bliperax.generate", f"--checkpoint={run['sft']}",
                            "--prompt=Hi", f"--max_new_tokens={value}"))
    assert "max_new_tokens" in line and expected in line, line


def test_generate_checks_max_new_tokens_before_allocating(trained):
  _, params, cfg = trained
  tokenizer = tokenizer_lib.Tokenizer()
  example = eval_lib.prompt_example("What is 2+2?", [], cfg, tokenizer, anyres=False)
  prompt = batch_lib.collate([example], cfg, tokenizer.pad_id, side="left")
  for bad in (0, -1, cfg.text.max_positions):
    with pytest.raises(ValueError, match="max_new_tokens"):
      generate_lib.generate(params, cfg, prompt, bad)
  room = cfg.text.max_positions - len(example.tokens)
  with pytest.raises(ValueError, match=f"at most {room} new tokens"):
    generate_lib.generate(params, cfg, prompt, room + 1)


def test_evaluate_text_only_and_mixed_questions(trained, images):
  """Text-only questions evaluate alone and batched with image questions."""
  _, params, cfg = trained
  tokenizer = tokenizer_lib.Tokenizer()
  with open(images["digits"][0], "rb") as f:
    png = f.read()
  text_q = eval_lib.Question("t0", (), "What is 2+2?", "4")
  image_q = eval_lib.Question("i0", (png,), "<image>\nWhat digit is this?", "0")
  alone = eval_lib.evaluate_task(params, cfg, [text_q], tokenizer, anyres=False,
                                 max_new_tokens=2, batch_size=2)
  mixed = eval_lib.evaluate_task(params, cfg, [text_q, image_q], tokenizer, anyres=True,
                                 max_new_tokens=2, batch_size=2)
  assert alone["total"] == 1 and mixed["total"] == 2
  # The text-only row's greedy answer does not depend on what shares its batch.
  assert alone["predictions"][0]["prediction"] == mixed["predictions"][0]["prediction"]


def test_evaluate_names_the_question_with_an_undecodable_image(trained, images):
  _, params, cfg = trained
  with open(images["broken"], "rb") as f:
    broken = f.read()
  bad = eval_lib.Question("heldout-17", (broken,), "<image>\nWhat digit is this?", "3")
  with pytest.raises(ValueError, match="question 'heldout-17': undecodable image"):
    eval_lib.evaluate_task(params, cfg, [bad], tokenizer_lib.Tokenizer(), anyres=False)


def test_evaluate_cli_names_the_sample_with_an_undecodable_image(trained, images, tmp_path):
  from bliperax.data import records, schema  # pylint: disable=g-import-not-at-top
  run, _, _ = trained
  with open(images["broken"], "rb") as f:
    broken = f.read()
  with records.ShardSetWriter(tmp_path / "heldout" / "vqa", "vqa", 1) as writer:
    writer.write(schema.encode(schema.Chat(turns=("<image>\nWhat digit is this?", "3"),
                                           images=(broken,), id="heldout-vqa-42")))
    writer.commit()
  out = _cli("bliperax.evaluate", f"--config=experiments/digits/sft.py:root={tmp_path}",
             f"--checkpoint={run['sft']}", "--tasks=vqa", f"--output={tmp_path / 'e.json'}")
  line = _error_line(out)
  assert "heldout-vqa-42" in line and "undecodable image" in line, line
  assert not (tmp_path / "e.json").exists()
  (tmp_path / "heldout" / "sum").mkdir()  # a task folder without shards
  line = _error_line(_cli("bliperax.evaluate", f"--config=experiments/digits/sft.py:root={tmp_path}",
                          f"--checkpoint={run['sft']}", "--tasks=sum"))
  assert "no .array_record shards" in line and "sum" in line, line
