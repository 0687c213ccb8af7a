"""Tests for bliperax.data.tokenizer, bliperax.data.chat (chat template, loss spans)
and bliperax.infer.golden_inputs (the fixture's construction, padding)."""
import json

import numpy as np
import pytest

from bliperax.data import batch_spec
from bliperax.data import chat as chat_lib
from bliperax.data import tokenizer as tokenizer_lib
from bliperax.infer import golden_inputs

# Ids of the reference tokenizer (slow LlamaTokenizer, legacy=False, no BOS,
# transformers 4.41.2, VLM tokens added as additional special tokens), run on
# these strings once; each pins one quirk of it.
REFERENCE_IDS = [
    ("<|system|>\nA chat", [29871, 32006, 29909, 13563]),
    (" A man", [29871, 319, 767]),
    ("Hello world", [15043, 3186]),
    (" <image>", [259, 32012]),
    ("\n<image>", [29871, 13, 32012]),
    ("<|endoftext|>hi", [32000, 2918]),
    ("<pad><|user|>", [32011, 32010]),
    ("<|end|>\n\n  x", [29871, 32007, 29916]),
    ("<|user|> \t\u3000Hi", [29871, 32010, 18567]),
    ("a<|assistant|>\n b", [263, 32001, 29890]),
    ("\u2581x<image> y", [29871, 921, 32012, 343]),
    ("</s> hi <s>x<unk> y", [29871, 2, 2918, 29871, 1, 29916, 0, 343]),
    ("<image placeholder><image placeholder>\n", [32013, 32013, 13]),
    ("<|endofchunk|>\n", [32014, 13]),
    ("x\n<|end|>", [921, 13, 32007]),
    ("", []),
    ("  ", [1678]),
    ("<|placeholder3|>\n5", [29871, 32004, 29945]),
]

PLAIN_STRINGS = [
    "Hello world",
    " A man with a skateboard that is jumping in the air.",
    "  two  spaces ",
    "A short description of this image in one sentence:",
    "h\u00e9llo \U0001F642 \u65e5\u672c\u8a9e\t\ttab",
    "Line one\nLine two\r\n\n",
    "<bbox>12, 34, 56, 78</bbox> 3.14159 don't",
    "\u03a9\u03bc\u03ad\u03b3\u03b1 \u0645\u0631\u062d\u0628\u0627 \u200b zero-width",
]


@pytest.fixture(scope="module")
def ref_tok():
  return tokenizer_lib.Tokenizer.reference()


@pytest.fixture(scope="module")
def tok():
  return tokenizer_lib.Tokenizer()


def _golden(golden_dir):
  meta = json.loads((golden_dir / "meta.json").read_text())
  return meta, np.load(golden_dir / "expected.npz")


# --- golden fixture -------------------------------------------------------------


def test_golden_training_batch(golden_dir, ref_tok):
  meta, expected = _golden(golden_dir)
  rows = [golden_inputs.golden_sample_ids(s, ref_tok, meta["system_prompt"])
          for s in meta["samples"]]
  ids, mask, labels = golden_inputs.pad_batch([r[0] for r in rows], [r[1] for r in rows],
                                              ref_tok.pad_id, side="right")
  np.testing.assert_array_equal(ids, expected["input_ids"])
  np.testing.assert_array_equal(mask, expected["attention_mask"])
  np.testing.assert_array_equal(labels, expected["labels"])


def test_golden_prompt_batch(golden_dir, ref_tok):
  meta, expected = _golden(golden_dir)
  rows = [golden_inputs.golden_sample_ids(s, ref_tok, meta["system_prompt"],
                                          with_answer=False)
          for s in meta["samples"]]
  ids, mask, _ = golden_inputs.pad_batch([r[0] for r in rows], None, ref_tok.pad_id,
                                         side="left")
  np.testing.assert_array_equal(ids, expected["prompt_ids"])
  np.testing.assert_array_equal(mask, expected["prompt_attention_mask"])


def test_golden_special_ids(golden_dir, tok):
  meta, _ = _golden(golden_dir)
  for name, token_id in meta["special_tokens"].items():
    assert tok.token_id(name) == token_id
  assert tok.vocab_size == meta["logit_width"]


def test_render_fewshot_is_the_golden_construction(golden_dir, ref_tok):
  meta, expected = _golden(golden_dir)
  sample = meta["samples"][1]
  rendered = golden_inputs.render_fewshot(sample["text"], ref_tok, sample["answer"])
  n = len(rendered.ids)
  np.testing.assert_array_equal(rendered.ids, expected["input_ids"][1, :n])
  np.testing.assert_array_equal(rendered.labels(), expected["labels"][1, :n])


def test_render_chat_differs_from_golden_chat_in_first_answer_id(
    golden_dir, ref_tok):
  """The fixture tokenized the answer alone (`▁A`); a whole chat gives `A`."""
  meta, expected = _golden(golden_dir)
  sample = meta["samples"][0]
  rendered = chat_lib.render_chat([sample["user"], sample["answer"]], ref_tok,
                                  system=meta["system_prompt"])
  golden_ids = expected["input_ids"][0]
  assert len(rendered.ids) == len(golden_ids)
  differs = np.flatnonzero(rendered.ids != golden_ids)
  first_answer = int(np.argmax(expected["labels"][0] != batch_spec.IGNORE))
  assert differs.tolist() == [first_answer]
  assert golden_ids[first_answer] == ref_tok.token_id("\u2581A")
  assert rendered.ids[first_answer] == ref_tok.token_id("A")
  np.testing.assert_array_equal(rendered.loss_mask,
                                expected["labels"][0] != batch_spec.IGNORE)


# --- tokenizer ------------------------------------------------------------------


def test_spec_example(tok, ref_tok):
  prompt = "<|user|>\n<image>\nWhat is this?<|end|>\n<|assistant|>\n"
  want = [29871, 32010, 32012, 13, 5618, 338, 445, 29973, 32007, 32001]
  assert ref_tok.encode(prompt) == want
  assert tok.encode(prompt) == want


@pytest.mark.parametrize("string,want", REFERENCE_IDS)
def test_reference_quirks(ref_tok, string, want):
  assert ref_tok.encode(string) == want


@pytest.mark.parametrize("string,want", REFERENCE_IDS)
def test_default_mode_differs_only_on_control_strings(tok, string, want):
  if any(c in string for c in ("<s>", "</s>", "<unk>")):
    ids = tok.encode(string)
    assert not {0, 1, 2} & set(ids)
    assert tok.decode(ids) == string
  else:
    assert tok.encode(string) == want


def test_vocabulary(tok):
  assert tok.vocab_size == 32015
  assert tok.pad_id == 32011
  assert tok.eos_ids == (32007, 32000)
  assert (tok.image_id, tok.image_placeholder_id, tok.endofchunk_id) == (
      32012, 32013, 32014)
  names = ["<|endoftext|>", "<|assistant|>", "<|placeholder1|>",
           "<|placeholder2|>", "<|placeholder3|>", "<|placeholder4|>",
           "<|system|>", "<|end|>", "<|placeholder5|>", "<|placeholder6|>",
           "<|user|>", "<pad>", "<image>", "<image placeholder>",
           "<|endofchunk|>"]
  assert [tok.token_id(n) for n in names] == list(range(32000, 32015))
  assert tok.token_id("\u2581") == 29871
  with pytest.raises(KeyError):
    tok.token_id("<|nope|>")


@pytest.mark.parametrize("string", PLAIN_STRINGS + [
    "<image>A short description: a cat.<|endofchunk|><image>Another:",
    "<|endoftext|> after eos",
    "<pad><pad>tail",
])
def test_round_trip(tok, string):
  assert tok.decode(tok.encode(string)) == string


def test_literal_underline_reads_as_a_space(tok):
  # SentencePiece writes spaces as U+2581, so the two cannot be told apart.
  assert tok.encode("\u2581a b") == tok.encode(" a b")
  assert tok.decode(tok.encode("x\u2581a")) == "x a"


def test_byte_fallback(tok):
  ids = tok.encode("\U0001F642")  # no piece for the emoji: four UTF-8 bytes
  assert ids[-4:] == [tok.token_id(f"<0x{b:02X}>")
                      for b in "\U0001F642".encode()]
  assert tok.decode(ids) == "\U0001F642"


def test_rstrip_tokens_swallow_whitespace(tok):
  ids = tok.encode("<|user|>\n  Hi<|end|>\n")
  assert ids == [29871, 32010, tok.token_id("Hi"), 32007]
  assert tok.decode(ids) == "<|user|>Hi<|end|>"
  assert tok.decode(ids, skip_special_tokens=True) == "Hi"


def test_decode_rejects_out_of_range(tok):
  with pytest.raises(ValueError):
    tok.decode([32015])
  with pytest.raises(ValueError):
    tok.decode([-1])


def test_encode_parts_owners(tok):
  parts = ["<|user|>\nHello", " world<|end|>\n", "<|assistant|>\nok"]
  ids, owners = tok.encode_parts(parts)
  assert len(ids) == len(owners)
  # The run "Hello world" straddles parts 0 and 1: it is cut there.
  assert [i for i, o in zip(ids, owners) if o == 1] == [
      tok.token_id("\u2581world"), tok.token_id("<|end|>")]
  assert owners[-2:] == [2, 2]
  # Empty parts own nothing and cut nothing.
  assert tok.encode_parts(["", "Hello", ""]) == (tok.encode("Hello"), [1])


@pytest.mark.parametrize("string",
                         PLAIN_STRINGS + ["\u2581literal underline"])
def test_agrees_with_fast_tokenizer_on_plain_strings(shared_dir, tok, string):
  transformers = pytest.importorskip("transformers")
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_file=str(shared_dir / "tokenizer" / "tokenizer.json"))
  assert tok.encode(string) == fast(string, add_special_tokens=False).input_ids


# --- rendering ------------------------------------------------------------------


def _loss_runs(rendered):
  """Contiguous runs of loss-carrying ids."""
  runs, current = [], []
  for token_id, on in zip(rendered.ids, rendered.loss_mask):
    if on:
      current.append(int(token_id))
    elif current:
      runs.append(current)
      current = []
  if current:
    runs.append(current)
  return runs


def test_chat_loss_covers_answers_and_end(tok):
  turns = ["<image>\nWhat is in the picture?",
           "A dog on a skateboard.",
           "And its colour?",
           "Brown, with a white patch \U0001F415.\nIt looks happy."]
  rendered = chat_lib.render_chat(turns, tok)
  assert rendered.ids.dtype == np.int32 and rendered.loss_mask.dtype == bool
  runs = _loss_runs(rendered)
  assert [tok.decode(r) for r in runs] == [
      turns[1] + "<|end|>", turns[3] + "<|end|>"]
  off = rendered.ids[~rendered.loss_mask]
  assert tok.image_id in off and tok.token_id("<|assistant|>") in off
  labels = rendered.labels()
  np.testing.assert_array_equal(labels[rendered.loss_mask],
                                rendered.ids[rendered.loss_mask])
  assert (labels[~rendered.loss_mask] == batch_spec.IGNORE).all()


def test_chat_ids_are_those_of_the_whole_string(tok):
  turns = ["Hi", "Hello! How can I help?", "What is 2+2?", " 4"]
  rendered = chat_lib.render_chat(turns, tok)
  joined = "".join(t for t, _ in chat_lib.chat_parts(turns))
  assert rendered.ids.tolist() == tok.encode(joined)


def test_generation_prompt_is_a_prefix_of_the_training_ids(tok):
  turns = ["<image>\nDescribe this image.", "A red car."]
  full = chat_lib.render_chat(turns, tok)
  prompt = chat_lib.render_chat(turns[:1], tok)
  assert prompt.ids[-1] == tok.token_id("<|assistant|>")
  assert not prompt.loss_mask.any()
  np.testing.assert_array_equal(full.ids[:len(prompt.ids)], prompt.ids)


def test_chat_without_system(tok):
  rendered = chat_lib.render_chat(["Q?", "A."], tok, system=None)
  assert rendered.ids[:2].tolist() == [29871, tok.token_id("<|user|>")]
  assert tok.decode(_loss_runs(rendered)[0]) == "A.<|end|>"


def test_answer_with_vlm_token_gets_no_loss_on_it(tok):
  rendered = chat_lib.render_chat(["Q", "see <image> here"], tok)
  image_at = rendered.ids == tok.image_id
  assert image_at.sum() == 1 and not rendered.loss_mask[image_at].any()


def test_render_pretrain_masks_vlm_tokens_and_pad(tok):
  sample = "<image>A cat on a mat.<|endofchunk|><image placeholder>x<pad>"
  rendered = chat_lib.render_pretrain(sample, tok)
  never = np.isin(rendered.ids, [32011, 32012, 32013, 32014])
  assert never.sum() == 4
  np.testing.assert_array_equal(rendered.loss_mask, ~never)


def test_render_fewshot_loss_on_both_parts(tok):
  rendered = golden_inputs.render_fewshot("<image>Caption:", tok, " A cat.")
  assert rendered.ids.tolist() == (tok.encode("<image>Caption:") +
                                   tok.encode(" A cat."))
  np.testing.assert_array_equal(rendered.loss_mask,
                                rendered.ids != tok.image_id)


def test_golden_sample_ids_rejects_unknown_kind(tok):
  with pytest.raises(ValueError):
    golden_inputs.golden_sample_ids({"kind": "video"}, tok, chat_lib.SYSTEM_PROMPT)


# --- padding --------------------------------------------------------------------


def test_pad_batch_sides_and_length():
  ids = [[5, 6, 7], [8]]
  labels = [[-100, 6, 7], [8]]
  right = golden_inputs.pad_batch(ids, labels, 0, side="right", length=4)
  np.testing.assert_array_equal(right[0], [[5, 6, 7, 0], [8, 0, 0, 0]])
  np.testing.assert_array_equal(right[1], [[1, 1, 1, 0], [1, 0, 0, 0]])
  np.testing.assert_array_equal(
      right[2], [[-100, 6, 7, -100], [8, -100, -100, -100]])
  left_ids, left_mask, none = golden_inputs.pad_batch(ids, None, 0, side="left")
  np.testing.assert_array_equal(left_ids, [[5, 6, 7], [0, 0, 8]])
  np.testing.assert_array_equal(left_mask, [[1, 1, 1], [0, 0, 1]])
  assert none is None and left_ids.dtype == np.int32


def test_pad_batch_never_truncates():
  with pytest.raises(ValueError):
    golden_inputs.pad_batch([[1, 2, 3]], None, 0, length=2)
  with pytest.raises(ValueError):
    golden_inputs.pad_batch([[1]], None, 0, side="middle")
  with pytest.raises(ValueError):
    golden_inputs.pad_batch([[1, 2]], [[1]], 0)
