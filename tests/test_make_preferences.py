"""Noised-image negatives: the diffusion noise, the pair rules, tools/make_preferences.py.

The end-to-end test runs the tool on a tiny random-weight checkpoint and a few chat
records (single-turn with one and two images, text-only, multi-turn, not a chat),
then recomputes answers through the library (prompt, noise, greedy decode) and
compares them with what the shards hold. About 30 s on 2 cores, mostly compiling.
"""
import dataclasses
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from bliperax.data import example_shards
from bliperax.data import noise
from bliperax.data import records
from bliperax.data import schema
from bliperax.infer import preferences

ROOT = pathlib.Path(__file__).resolve().parents[1]
SEED, LEVEL, MAX_NEW = 3, 0.5, 5


def _image_like(seed: int, shape=(4, 28, 28, 3)) -> np.ndarray:
  return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


# ---------------------------------------------------------------------------
# The noise
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", noise.SCHEDULES)
def test_level_zero_is_the_image_itself(schedule):
  x = _image_like(0)
  assert noise.alpha_bar(0.0, schedule) == 1.0
  np.testing.assert_array_equal(noise.add_noise(x, 0.0, noise.sample_rng(0, 0), schedule), x)


@pytest.mark.parametrize("schedule,bound", [("cosine", 1e-30), ("linear", 5e-5)])
def test_level_one_is_pure_noise(schedule, bound):
  assert noise.alpha_bar(1.0, schedule) < bound
  x = _image_like(1, (64, 32, 32, 3))  # 196,608 values: standard error ~0.0023
  y = noise.add_noise(x, 1.0, noise.sample_rng(0, 0), schedule)
  assert abs(float(y.mean())) < 0.012 and abs(float(y.std()) - 1.0) < 0.01
  # Nothing of the image is left (at ᾱ = 0.01 the correlation would be ~0.06).
  assert abs(np.corrcoef(x.ravel(), y.ravel())[0, 1]) < 0.012


@pytest.mark.parametrize("schedule,expected", [("cosine", 0.49384), ("linear", 0.078587)])
def test_alpha_bar_follows_the_schedule(schedule, expected):
  # cosine: cos²((0.5 + s)/(1 + s)·π/2) / cos²(s/(1 + s)·π/2), s = 0.008;
  # linear: Π (1 − β_t) over DDPM's first 500 of 1000 β ∈ [1e-4, 0.02].
  assert noise.alpha_bar(0.5, schedule) == pytest.approx(expected, rel=1e-4)
  levels = np.linspace(0, 1, 21)
  values = [noise.alpha_bar(l, schedule) for l in levels]
  assert all(a > b for a, b in zip(values, values[1:])), values
  x = _image_like(2, (64, 32, 32, 3))
  y = noise.add_noise(x, 0.5, noise.sample_rng(0, 0), schedule)
  residual = y - np.sqrt(expected) * x  # = sqrt(1 − ᾱ)·ε
  assert float(residual.std()) == pytest.approx(np.sqrt(1 - expected), rel=0.01)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    noise.alpha_bar(1.5, schedule)


def test_noise_is_determined_by_seed_and_position():
  x = _image_like(3)
  first = noise.add_noise(x, 0.3, noise.sample_rng(7, 2))
  np.testing.assert_array_equal(first, noise.add_noise(x, 0.3, noise.sample_rng(7, 2)))
  assert not np.array_equal(first, noise.add_noise(x, 0.3, noise.sample_rng(8, 2)))
  assert not np.array_equal(first, noise.add_noise(x, 0.3, noise.sample_rng(7, 3)))
  assert first.dtype == np.float32 and first.shape == x.shape


# ---------------------------------------------------------------------------
# Which answers become pairs
# ---------------------------------------------------------------------------


def test_pairs_drop_answers_equal_to_the_chosen_one_or_to_each_other():
  chat = schema.Chat(turns=("<image>\nHow many dogs?", "Two dogs."),
                     images=example_shards.generated_images(1), id="c")
  tally = preferences.Tally()
  pairs = preferences.pairs_of(chat, [
      ("noised", " two  DOGS "), ("sampled0", "A cat."), ("sampled1", "a cat"),
      ("sampled2", ""), ("sampled3", "Three dogs.")], tally)
  assert [(p.id, p.rejected) for p in pairs] == [("c/sampled0", "A cat."),
                                                 ("c/sampled3", "Three dogs.")]
  assert all(p.chosen == "Two dogs." and p.prompt == chat.turns[0] and
             p.images == chat.images for p in pairs)
  assert tally.dropped == {"same_as_chosen": 1, "duplicate": 1, "empty_text": 1}
  assert tally.written == {"sampled": 2}


def _chat(i: int) -> schema.Chat:
  return schema.Chat(turns=(f"Q{i}?", f"A{i}."), id=f"c{i}")


def test_limit_counts_single_turn_chats_and_positions_are_record_indices():
  multi = schema.Chat(turns=("Q?", "A.", "Q?", "A."), id="m")
  source = [schema.encode(s) for s in (schema.Text(text="T.", id="t"), _chat(0), multi,
                                       _chat(1), _chat(2))]
  source.insert(2, b"not a record")
  tally = preferences.Tally()
  got = [(position, c.id) for position, c in preferences.single_turn_chats(source, 2, tally)]
  assert got == [(1, "c0"), (4, "c1")]
  assert tally.read == 5 and tally.used == 2
  assert tally.skipped == {"not_a_chat": 1, "corrupt_record": 1, "multi_turn": 1}


# ---------------------------------------------------------------------------
# The tool, end to end
# ---------------------------------------------------------------------------


@pytest.fixture(name="model", scope="module")
def _model(tmp_path_factory):
  """A tiny random-weight parameter checkpoint: (path, params, model config)."""
  from bliperax.convert import layout  # pylint: disable=g-import-not-at-top
  from bliperax.convert import params_io  # pylint: disable=g-import-not-at-top
  from bliperax.models import presets  # pylint: disable=g-import-not-at-top
  from bliperax.models import xgenmm  # pylint: disable=g-import-not-at-top
  cfg = presets.get("tiny")
  rng = np.random.default_rng(0)
  flat = layout.flatten(params_io.flax_unbox(xgenmm.abstract_params(cfg)))
  # Wider than an init's 0.02, so the answers depend visibly on the image.
  params = layout.unflatten({k: (0.5 * rng.standard_normal(v.shape)).astype(v.dtype)
                             for k, v in flat.items()})
  path = params_io.save_params(tmp_path_factory.mktemp("ckpt") / "tiny", params, cfg)
  return path, params, cfg


def _answers(params, cfg, chats_at, level: float):
  """Greedy answers through the library: prompt, noise by (SEED, position), decode."""
  from bliperax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from bliperax.infer import evaluate as eval_lib  # pylint: disable=g-import-not-at-top
  tokenizer = tokenizer_lib.Tokenizer()
  examples = []
  for position, chat in chats_at:
    example = eval_lib.prompt_example(chat.turns[0], chat.images, cfg, tokenizer, True)
    crops = noise.add_noise(example.crops, level, noise.sample_rng(SEED, position))
    examples.append(dataclasses.replace(example, crops=crops))
  return eval_lib.answer(params, cfg, examples, tokenizer, MAX_NEW, batch_size=1)


def _run(*args, timeout=300):
  return subprocess.run([sys.executable, str(ROOT / "tools" / "make_preferences.py"), *args],
                        capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.slow  # the default suite's 15-minute budget on 2 cores
def test_make_preferences_end_to_end(model, tmp_path):
  path, params, cfg = model
  images = example_shards.generated_images(3, seed=5)
  q0 = schema.Chat(turns=("<image>\nWhat is shown?", "placeholder"), images=images[:1],
                   id="q0")
  # q0's answer is the model's own on its noised image: that pair must be dropped.
  (q0_noised,) = _answers(params, cfg, [(0, q0)], LEVEL)
  assert q0_noised, "the tiny model answered q0 with nothing; pick another seed"
  q0 = schema.Chat(turns=(q0.turns[0], q0_noised), images=q0.images, id="q0")
  q1 = schema.Chat(turns=("<image>\n<image>\nSame place?", "Yes."), images=images[1:],
                   id="q1")
  q2 = schema.Chat(turns=("Say hello.", "Hello."), id="q2")  # no image to noise
  q3 = schema.Chat(turns=("<image>\nWhich colour?", "Red."), images=images[2:], id="q3")
  multi = schema.Chat(turns=("<image>\nA?", "B.", "C?", "D."), images=images[:1], id="m0")
  records_in = [q0, q1, schema.Text(text="Not a chat.", id="t0"), q2, multi, q3]
  # One shard: a record's position (which seeds its noise) is its place in this list.
  example_shards.write(tmp_path, "chats", records_in, num_shards=1)

  out = tmp_path / "pairs"
  result = _run(f"--input={tmp_path / 'chats'}", f"--checkpoint={path}", f"--output={out}",
                f"--noise_level={LEVEL}", f"--seed={SEED}", f"--max_new_tokens={MAX_NEW}",
                "--batch_size=2", "--sampled=1", "--num_shards=2", "--progress=false")
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary["questions_read"] == 6 and summary["questions_used"] == 4
  assert summary["questions_skipped"] == {"multi_turn": 1, "not_a_chat": 1}
  assert summary["dropped"] == {"no_image": 1, "same_as_chosen": 1}
  assert summary["pairs_by_kind"] == {"noised": 2, "sampled": 4}
  assert summary["pairs_written"] == 6 and summary["pairs_dropped"] == 2
  assert summary["examples"]["same_as_chosen"] == [f"q0/noised: {q0_noised!r}"]
  assert json.loads((out / "preference.summary.json").read_text()) == summary
  assert [s["samples"] for s in summary["shards"]] == [3, 3]

  pairs = {p.id: p for p in records.read_samples(out)}
  assert sorted(pairs) == ["q0/sampled0", "q1/noised", "q1/sampled0", "q2/sampled0",
                           "q3/noised", "q3/sampled0"]
  chats = {c.id: c for c in (q0, q1, q2, q3)}
  for pair_id, pair in pairs.items():
    chat = chats[pair_id.split("/")[0]]
    assert isinstance(pair, schema.Preference)
    assert (pair.prompt, pair.chosen, pair.images) == (chat.turns[0], chat.turns[1],
                                                       chat.images), pair_id
    assert preferences.normalise(pair.rejected) != preferences.normalise(pair.chosen)
  # rejected = the model's greedy answer on the noised images, recomputed one by one
  # (the tool decoded them two to a batch), and not its answer on the clean images.
  noised = _answers(params, cfg, [(1, q1), (5, q3)], LEVEL)
  assert [pairs["q1/noised"].rejected, pairs["q3/noised"].rejected] == noised
  assert _answers(params, cfg, [(1, q1), (5, q3)], 0.0) != noised


def test_make_preferences_names_a_missing_input_or_checkpoint(model, tmp_path):
  path, _, _ = model
  result = _run(f"--input={tmp_path / 'nope'}", f"--checkpoint={path}",
                f"--output={tmp_path / 'out'}")
  assert result.returncode == 2
  assert result.stderr.strip() == f"error: --input: no .array_record shards match " \
                                  f"'{tmp_path / 'nope'}'"
  example_shards.write(tmp_path, "chats", [schema.Chat(turns=("Hi?", "Hello."), id="c")])
  result = _run(f"--input={tmp_path / 'chats'}", f"--checkpoint={tmp_path / 'no_ckpt'}",
                f"--output={tmp_path / 'out'}")
  assert result.returncode == 2
  assert result.stderr.strip().startswith("error: cannot load --checkpoint: ")
  assert str(tmp_path / "no_ckpt") in result.stderr
  assert not (tmp_path / "out").exists()
