"""The logit check on a fixture whose samples are text only (`kind: "text"`, no images).

The fixture format allows text-only samples; the golden fixture happens to have none.
This test builds one from the golden checkpoint: its expected arrays come from
transformers' own PyTorch Phi-3 (the reference's language model) with the reference's
decoupled head written out in torch, not from bliperax. Token ids come from bliperax's
tokenizer (their bit-exactness is the golden fixture's check); what this test adds is
that every stage of `logit_check.run` works on a batch without images and that the
text path matches PyTorch there.
"""
import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from bliperax.convert.safetensors_io import CheckpointReader  # noqa: E402
from bliperax.data import tokenizer as tokenizer_lib  # noqa: E402
from bliperax.infer import golden_inputs  # noqa: E402
from bliperax.infer import logit_check  # noqa: E402

BASE_VOCAB = 32012  # the reference's head keeps these columns, then adds its own 3
END, PAD = 32007, 32011
NEW_TOKENS = 12
SAMPLES = [
    {"kind": "text", "images": [], "user": "What is the capital of France?",
     "answer": "Paris.", "image_sizes": []},
    {"kind": "text", "images": [], "user": "Write a short line about rain, please.",
     "answer": "Rain taps softly on the old tin roof.", "image_sizes": []},
]


def _reference_lm(golden_dir):
  """transformers' Phi3Model with the golden language model, plus its decoupled head."""
  config = json.loads((golden_dir / "config.json").read_text())["text_config"]
  reader = CheckpointReader(golden_dir)
  prefix = "vlm.lang_model."
  weights = {name[len(prefix):]: torch.from_numpy(np.array(reader.get(name)))
             for name in reader.keys() if name.startswith(prefix)}
  rows = weights["model.embed_tokens.weight"].shape[0]
  hf_config = transformers.Phi3Config(
      **{k: v for k, v in config.items() if k not in ("vocab_size", "sliding_window",
                                                     "transformers_version")},
      vocab_size=rows, sliding_window=None)
  hf_config._attn_implementation = "eager"  # pylint: disable=protected-access
  model = transformers.Phi3Model(hf_config).eval()
  body = {k[len("model."):]: v for k, v in weights.items()
          if k.startswith("model.") and "additional_embedding" not in k}
  missing, unexpected = model.load_state_dict(body, strict=False)
  assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)

  def forward(ids):
    """ids int[T] (all < 32012: no VLM tokens) -> hidden [T, D], logits [T, 32015]."""
    with torch.no_grad():
      h = model(input_ids=torch.tensor([ids]), use_cache=False).last_hidden_state[0]
      base = h @ weights["lm_head.weight"][:BASE_VOCAB].T + weights["lm_head.bias"][:BASE_VOCAB]
      added = (h @ weights["lm_head.additional_fc.weight"].T
               + weights["lm_head.additional_fc.bias"])
      return h.numpy(), torch.cat([base, added], dim=-1).numpy()
  return forward


def _expected(golden_dir, meta):
  """expected.npz arrays for `meta`'s samples, by the reference's rules (golden README)."""
  tok = tokenizer_lib.Tokenizer.reference()
  forward = _reference_lm(golden_dir)
  train = [golden_inputs.golden_sample_ids(s, tok, meta["system_prompt"]) for s in meta["samples"]]
  prompts = [golden_inputs.golden_sample_ids(s, tok, meta["system_prompt"], with_answer=False)[0]
             for s in meta["samples"]]
  b, t = len(train), max(len(ids) for ids, _ in train)
  tp = max(len(p) for p in prompts)
  rng = np.random.default_rng(0)
  logit_ids = np.concatenate([np.arange(31990, 32015), rng.choice(31990, 64, replace=False)])
  out = dict(
      input_ids=np.full((b, t), PAD, np.int64), attention_mask=np.zeros((b, t), np.int64),
      labels=np.full((b, t), -100, np.int64), hidden_last=None,
      logits_selected=np.zeros((b, t, len(logit_ids)), np.float32),
      logits_argmax=np.zeros((b, t), np.int64), token_nll=np.zeros((b, t - 1), np.float32),
      prompt_ids=np.full((b, tp), PAD, np.int64), prompt_attention_mask=np.zeros((b, tp), np.int64),
      generated=np.full((b, NEW_TOKENS), PAD, np.int64), logit_ids=logit_ids)
  nll_sum, count = 0.0, 0
  for row, (ids, labels) in enumerate(train):
    n = len(ids)
    hidden, logits = forward(list(ids))
    out["input_ids"][row, :n], out["attention_mask"][row, :n] = ids, 1
    out["labels"][row, :n] = labels
    if out["hidden_last"] is None:
      out["hidden_last"] = np.zeros((b, t, hidden.shape[-1]), np.float32)
    out["hidden_last"][row, :n] = hidden
    out["logits_selected"][row, :n] = logits[:, logit_ids]
    out["logits_argmax"][row, :n] = logits.argmax(-1)
    logp = torch.log_softmax(torch.from_numpy(logits[:-1]).double(), -1).numpy()
    for i in range(n - 1):
      if labels[i + 1] != -100:
        out["token_nll"][row, i] = -logp[i, labels[i + 1]]
        nll_sum, count = nll_sum + -logp[i, labels[i + 1]], count + 1
  out["loss"] = np.float32(nll_sum / count)
  for row, ids in enumerate(prompts):
    out["prompt_ids"][row, tp - len(ids):], out["prompt_attention_mask"][row, tp - len(ids):] = ids, 1
    seq = list(ids)
    for step in range(NEW_TOKENS):  # greedy, full recomputation; stop at <|end|>
      nxt = int(forward(seq)[1][-1].argmax())
      out["generated"][row, step] = nxt
      if nxt == END:
        break
      seq.append(nxt)
  out["expanded_labels"] = out["labels"]  # no images: nothing expands
  out["expanded_attention_mask"] = out["attention_mask"].astype(bool)
  # No crops: the vision stages compare empty arrays of the fixture's shapes.
  config = json.loads((golden_dir / "config.json").read_text())
  vision, resampler = config["vision_encoder_config"], config["vision_tokenizer_config"]
  p, dv = (vision["image_size"] // vision["patch_size"]) ** 2, vision["hidden_size"]
  latents, d = resampler["num_vis_tokens"], config["text_config"]["hidden_size"]
  out.update(vit_features=np.zeros((0, p, dv), np.float32),
             resampler_inputs=np.zeros((0, p, dv), np.float32),
             resampler_masks=np.zeros((0, p), np.float32),
             resampler_outputs=np.zeros((0, latents, d), np.float32))
  return out


@pytest.fixture(scope="module")
def text_fixture(tmp_path_factory):
  from conftest import GOLDEN, require  # pylint: disable=g-import-not-at-top
  golden = require(GOLDEN)
  fixture = tmp_path_factory.mktemp("text_fixture")
  for name in ("config.json", "model.safetensors"):
    os.symlink(golden / name, fixture / name)
  meta = json.loads((golden / "meta.json").read_text())
  meta["samples"] = SAMPLES
  meta.pop("expanded_length", None)
  (fixture / "meta.json").write_text(json.dumps(meta))
  np.savez(fixture / "expected.npz", **_expected(golden, meta))
  return fixture


def test_logit_check_passes_on_a_text_only_fixture(text_fixture):
  results = logit_check.run(text_fixture, text_fixture, text_fixture)
  by_stage = {r.stage: r for r in results}
  failed = {r.stage: (r.worst, r.note) for r in results if not r.ok}
  assert not failed, logit_check.table(results)
  for stage in ("hidden_last", "logits_selected", "logits_argmax", "token_nll", "loss",
                "generated"):
    assert stage in by_stage, stage
  expected = np.load(text_fixture / "expected.npz")
  assert (expected["generated"] != PAD).sum() > 0  # the generation stage compared tokens


def test_logit_check_fails_on_a_wrong_text_fixture(text_fixture, tmp_path):
  """The same fixture with one logit moved fails the logits stage (the check is live)."""
  for name in ("config.json", "model.safetensors", "meta.json"):
    shutil.copy(text_fixture / name, tmp_path / name)
  expected = dict(np.load(text_fixture / "expected.npz"))
  expected["logits_selected"][0, 3, 0] += 1e-2
  np.savez(tmp_path / "expected.npz", **expected)
  results = logit_check.run(tmp_path, tmp_path, tmp_path)
  assert [r.stage for r in results if not r.ok] == ["logits_selected"]
