"""DPO: the loss, preference pair batches, vision once per pair, training, recipes, resume.

The tiny preset throughout. Tolerances are float32 round-off derived from the
operations involved (u = 2^-24; an n-term sum is within gamma_n = n·u/(1 - n·u) of
exact times the sum of |terms|), never measured:

- the loss from given log-probabilities: the four-term log-ratio margin Δ (gamma_3 of
  the sum of |log-probs|), β·Δ, softplus (a few u, and 1-Lipschitz), the sum over
  pairs (`_loss_tolerance`);
- policy == reference inside the step: the policy and the reference passes are two
  float32 evaluations of one function (the LoRA step adds an exact zero, B = 0),
  which XLA may fuse differently, so each answer log-probability is bounded by
  test_lora's chain-of-roundings bound on each logit (`_chain_roundings`), plus the
  log-sum-exp's and the sequence sum's own roundings (`_sequence_logp_bound`);
- shared vs per-row vision tokens: the project's activation tolerance (1e-4 absolute
  + 1e-5 relative, bliperax/DESIGN.md §10.7): the ViT runs over B/2 instead of B crops.
Each check can fail: the hand computation moves with β or ε, a mis-assigned pair
layout moves the vision tokens by O(1), a reference that is not the frozen model
moves the step-1 rewards by far more than the bound.

The resume-after-SIGKILL test runs the trainer three times in subprocesses (the
machinery of tests/test_train.py); it is marked slow (45 s to 2 minutes on 2 cores,
as loaded). The pipeline's own resume with pairs is in the default suite.
"""
from __future__ import annotations

import json
import math
import pathlib
import signal
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pipeline_helpers as helpers
from bliperax import cli
from bliperax import sharding
from bliperax.convert import layout
from bliperax.data import batch_spec
from bliperax.data import example_shards
from bliperax.data import pairs as pairs_lib
from bliperax.data import pipeline
from bliperax.data import schema
from bliperax.data import tokenizer as tokenizer_lib
from bliperax.data.synthetic import SyntheticSource
from bliperax.lora import config as lora_config
from bliperax.models import presets
from bliperax.models import xgenmm
from bliperax.models.resampler import PerceiverResampler
from bliperax.models.siglip import SiglipVisionTower
from bliperax.train import dpo as dpo_lib
from bliperax.train import dpo_config
from bliperax.train import dpo_step
from bliperax.train.setup import TrainSetup
from test_lora import _chain_roundings, _gamma  # the chain-of-roundings bound on logits

ROOT = pathlib.Path(__file__).resolve().parents[1]
U = 2.0 ** -24
BETA = 0.1
T, ROWS = 32, 4  # synthetic pair batches: 2 pairs of 32-token rows
RANK = 4


# ----------------------------------------------------------------------------- the loss


def _loss_tolerance(logps: np.ndarray, beta: float, losses: np.ndarray) -> float:
  """Round-off allowance on Σ ℓ over pairs: per pair, Δ's gamma_3 · Σ|log-probs| times β
  (softplus is 1-Lipschitz), β·Δ's and softplus's own few u, then the n-term sum."""
  per_pair = (beta * _gamma(3) * np.abs(logps).sum(axis=0)
              + 8 * U * (1 + beta * np.abs(logps).sum(axis=0)))
  return float(per_pair.sum() + _gamma(len(losses)) * np.abs(losses).sum())


def _random_logps(seed: int, n: int) -> np.ndarray:
  """float32[4, n]: policy chosen, policy rejected, reference chosen, reference rejected."""
  rng = np.random.default_rng(seed)
  return (-rng.uniform(5, 200, size=(4, n))).astype(np.float32)


def _pair_rows(pc, pr, rc, rr):
  """[n] per side -> the [2n, 1] row layout pair_sums reads (row 2i chosen, 2i+1 rejected)."""
  return (np.stack([pc, pr], 1).reshape(-1, 1), np.stack([rc, rr], 1).reshape(-1, 1))


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_loss_and_rewards_match_a_hand_computation(smoothing):
  logps = _random_logps(0, 16)
  valid = np.random.default_rng(1).random(16) < 0.75
  policy, reference = _pair_rows(*logps)
  got = jax.device_get(dpo_lib.pair_sums(jnp.asarray(policy), jnp.asarray(reference),
                                         jnp.asarray(valid[:, None]), BETA, smoothing))
  pc, pr, rc, rr = logps.astype(np.float64)
  delta = (pc - rc) - (pr - rr)
  log_sig = lambda x: -np.logaddexp(0.0, -x)  # noqa: E731
  losses = -(1 - smoothing) * log_sig(BETA * delta) - smoothing * log_sig(-BETA * delta)
  tol = _loss_tolerance(logps[:, valid], BETA, losses[valid])
  assert abs(got["loss"] - losses[valid].sum()) <= tol
  # The test can fail: the other smoothing, or another β, is far outside it.
  other = -(1 - (0.2 - smoothing)) * log_sig(BETA * delta) - (0.2 - smoothing) * log_sig(
      -BETA * delta)
  assert abs(other[valid].sum() - losses[valid].sum()) > 100 * tol
  reward_c, reward_r = BETA * (pc - rc), BETA * (pr - rr)
  want = {"rewards/chosen": reward_c, "rewards/rejected": reward_r,
          "rewards/margin": reward_c - reward_r, "logps/chosen": pc, "logps/rejected": pr}
  for key, values in want.items():
    tol = (_gamma(3) * BETA * np.abs(logps).sum(0)[valid].sum()
           + _gamma(int(valid.sum())) * np.abs(values[valid]).sum())
    assert abs(got[key] - values[valid].sum()) <= tol, key
  # Accuracy counts pairs with r_c > r_r (none of these margins is within round-off of 0).
  assert got["rewards/accuracy"] == float(np.sum((reward_c > reward_r)[valid]))


def test_rpo_adds_the_chosen_answers_mean_nll():
  """α > 0: each valid pair's loss gains α · (−log π(y_c)) / |y_c|, whose gradient reaches
  the chosen sequence's log-probability only; the metrics stay DPO's."""
  logps = _random_logps(3, 16)
  valid = np.random.default_rng(4).random(16) < 0.75
  tokens = np.random.default_rng(5).integers(1, 9, size=16).astype(np.float32)
  policy, reference = (jnp.asarray(x) for x in _pair_rows(*logps))
  mask, counts, alpha = jnp.asarray(valid[:, None]), jnp.asarray(tokens[:, None]), 0.7
  rpo_sums = lambda p: dpo_lib.pair_sums(p, reference, mask, BETA, 0.0, alpha, counts)  # noqa: E731
  dpo_sums = lambda p: dpo_lib.pair_sums(p, reference, mask, BETA, 0.0)  # noqa: E731
  rpo, plain = jax.device_get(rpo_sums(policy)), jax.device_get(dpo_sums(policy))
  pc = logps[0].astype(np.float64)
  extra = (alpha * -pc / tokens)[valid].sum()
  # Per pair: the term's product and quotient (γ_3) and the added loss; then a sum of
  # the valid pairs' terms (γ_n): bounds on |RPO − DPO − extra| from both float32 sums.
  n = int(valid.sum())
  tol = (_gamma(3) * np.abs(alpha * pc / tokens)[valid].sum()
         + 2 * _gamma(n + 1) * (abs(float(plain["loss"])) + abs(extra)))
  assert abs(float(rpo["loss"]) - float(plain["loss"]) - extra) <= tol
  assert abs(extra) > 100 * tol  # the test can fail: the term is far outside it
  for k in dpo_lib.METRICS:
    assert float(rpo[k]) == float(plain[k]), k
  grad = np.asarray(jax.grad(lambda p: rpo_sums(p)["loss"] - dpo_sums(p)["loss"])(policy))
  chosen, rejected = grad[0::2, 0], grad[1::2, 0]
  np.testing.assert_allclose(chosen[valid], (-alpha / tokens)[valid], rtol=8 * U)
  assert np.all(chosen[~valid] == 0) and np.all(rejected == 0)
  with pytest.raises(ValueError, match="token counts"):
    dpo_lib.pair_sums(policy, reference, mask, BETA, 0.0, alpha)


def test_label_smoothing_is_conservative_dpo():
  """ℓ = −(1−ε)·log σ(βΔ) − ε·log σ(−βΔ), finite for any Δ, with gradient
  −β·[(1−ε)·σ(−βΔ) − ε·σ(βΔ)]."""
  delta = np.array([-1e4, -30.0, -1.0, 0.0, 0.5, 3.0, 30.0, 1e4], np.float32)
  for eps in (0.0, 0.1, 0.3):
    got = np.asarray(dpo_lib.sigmoid_loss(jnp.asarray(delta), BETA, eps), np.float64)
    x = BETA * delta.astype(np.float64)
    want = (1 - eps) * np.logaddexp(0, -x) + eps * np.logaddexp(0, x)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=8 * U, atol=8 * U)
    grad = np.asarray(jax.vmap(jax.grad(
        lambda d: dpo_lib.sigmoid_loss(d, BETA, eps)))(jnp.asarray(delta)), np.float64)
    sig = lambda z: 0.5 * (1 + np.tanh(z / 2))  # noqa: E731  (σ without overflow)
    np.testing.assert_allclose(grad, -BETA * ((1 - eps) * sig(-x) - eps * sig(x)),
                               rtol=8 * U, atol=8 * U * BETA)
  # With smoothing, a huge margin is penalised (linearly), without it not at all.
  assert float(dpo_lib.sigmoid_loss(jnp.float32(1e4), BETA, 0.1)) > 90
  assert float(dpo_lib.sigmoid_loss(jnp.float32(1e4), BETA, 0.0)) == 0.0


def test_identical_policy_and_reference_give_log_2_and_zero_rewards():
  logps = _random_logps(2, 8)
  policy, _ = _pair_rows(*logps)
  valid = np.ones((8, 1), bool)
  for eps in (0.0, 0.25):
    got = jax.device_get(dpo_lib.pair_sums(jnp.asarray(policy), jnp.asarray(policy),
                                           jnp.asarray(valid), BETA, eps))
    # softplus(0) = log 2 rounded once, summed 8 times.
    assert abs(got["loss"] / 8 - math.log(2)) <= (_gamma(8) + 2 * U) * math.log(2)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy"):
      assert got[key] == 0.0, key  # x - x is exactly 0 in float32; r_c > r_r is False


def test_sequence_sums_per_row_and_segment():
  rng = np.random.default_rng(3)
  values = rng.normal(size=(4, 10)).astype(np.float32)
  segments = np.sort(rng.integers(0, 4, size=(4, 10)), axis=1).astype(np.int32)
  got = np.asarray(dpo_lib.sequence_sums(jnp.asarray(values), jnp.asarray(segments), 5))
  for b in range(4):
    for s in range(5):
      terms = values[b][segments[b] == s].astype(np.float64)
      assert abs(got[b, s] - terms.sum()) <= _gamma(10) * np.abs(terms).sum()
  assert np.all(got[:, 4] == 0)  # no segment 4


def test_micro_batches_hold_whole_pairs():
  rows = np.arange(16)
  micro = np.asarray(dpo_step._split_pairs({"x": jnp.asarray(rows)}, 2)["x"])
  # Pair rows j, j+2, j+4, ... of pairs (2p, 2p+1): every pair whole and in order.
  np.testing.assert_array_equal(micro, [[0, 1, 4, 5, 8, 9, 12, 13],
                                        [2, 3, 6, 7, 10, 11, 14, 15]])


# ------------------------------------------------------------------------ pair batches


@pytest.fixture(scope="module")
def preference_shards(tmp_path_factory):
  root = tmp_path_factory.mktemp("preference")
  samples = example_shards.make_samples("preference", 24, example_shards.generated_images(10))
  example_shards.write(root, "preference", samples)
  return root, samples


def _pair_config(root, seq_len: int = 320, batch: int = 4, **data):
  cfg = helpers.tiny_config(root, seq_len=seq_len, batch=batch, **data)
  cfg.data.sources = {"pref": dict(paths=f"{root}/preference", weight=1.0, anyres=True)}
  cfg.dpo = dpo_config.defaults()
  cfg.dpo.enabled = True
  return cfg


def _segments(row: dict, segment: int) -> dict:
  keep = row["segment_ids"] == segment
  return {"tokens": row["tokens"][keep], "labels": row["labels"][keep]}


def test_preference_batches_label_exactly_the_answers(preference_shards):
  root, samples = preference_shards
  tok = tokenizer_lib.load()
  def answer_ids(text):  # independent of render: "<|assistant|>\n{a}<|end|>" tokenized alone
    ids = tok.encode("<|assistant|>\n" + text + "<|end|>")
    return tuple(ids[ids.index(tok.token_id("<|assistant|>")) + 1:])
  wanted = {answer_ids(s.chosen): answer_ids(s.rejected) for s in samples}
  source = pipeline.make_source(_pair_config(root), presets.tiny())
  seen = 0
  for batch in helpers.take(source, 3):
    assert batch["tokens"].shape[0] == 4
    for p in range(2):
      chosen, rejected = ({k: v[2 * p + side] for k, v in batch.items()} for side in (0, 1))
      # The same images in the same crops and groups; segments in the same order.
      for key in ("crops", "group_index", "group_mask"):
        np.testing.assert_array_equal(chosen[key], rejected[key], err_msg=key)
      n = chosen["segment_ids"].max()
      assert n >= 1 and rejected["segment_ids"].max() == n
      for s in range(1, n + 1):
        c, r = _segments(chosen, s), _segments(rejected, s)
        c_ans, r_ans = c["labels"] != -100, r["labels"] != -100
        # Labels equal the token where set, on one run at the end: the answer.
        np.testing.assert_array_equal(c["labels"][c_ans], c["tokens"][c_ans])
        first_c, first_r = np.argmax(c_ans), np.argmax(r_ans)
        assert c_ans[first_c:].all() and r_ans[first_r:].all()
        # The prompt (system, user turn with the vision slots, assistant tag) is shared.
        np.testing.assert_array_equal(c["tokens"][:first_c], r["tokens"][:first_r])
        got_c, got_r = tuple(c["labels"][c_ans]), tuple(r["labels"][r_ans])
        assert wanted[got_c] == got_r, "the rows of a pair hold another pair's answers"
        seen += 1
  assert seen >= 6


def test_pairs_pack_together_and_resume_exactly_in_a_fresh_process(preference_shards,
                                                                   tmp_path):
  """Rows of 230 tokens hold one or two pairs; a restored iterator (JSON state, new
  interpreter, the pipeline helper's job runner) continues with the exact next batch."""
  root, _ = preference_shards
  cfg = _pair_config(root, seq_len=230)
  source = pipeline.make_source(cfg, presets.tiny())
  first = helpers.take(source, 3)
  state = json.loads(json.dumps(source.get_state()))
  want = helpers.take(source, 2)
  counts = source.get_state()["counts"]
  assert counts["rows"] == 20 and counts["samples_packed"] > 10  # 5 batches of 4 rows
  assert max(b["segment_ids"].max() for b in first + want) >= 2, "nothing was packed"
  for batch in first + want:  # every row of a pair holds the same number of pairs
    chosen, rejected = pairs_lib.pair_rows(batch)
    np.testing.assert_array_equal(chosen["segment_ids"].max(1), rejected["segment_ids"].max(1))
  job = dict(config=cfg.to_dict(), process_index=0, process_count=1, state=state,
             out=str(tmp_path / "out.npz"), num=2)
  (tmp_path / "jobs.json").write_text(json.dumps([job]))
  subprocess.run([sys.executable, str(ROOT / "tests" / "pipeline_helpers.py"),
                  str(tmp_path / "jobs.json")], check=True, cwd=ROOT / "tests")
  got = helpers.load_batches(job["out"])
  for a, b in zip(got, want, strict=True):
    for k in b:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert json.loads(pathlib.Path(job["out"] + ".stats.json").read_text()) == counts


def test_a_dpo_mixture_skips_non_pairs(preference_shards, tmp_path):
  chat = schema.Chat(turns=("<image>\nWhat is it?", "A dog."),
                     images=tuple(example_shards.generated_images(1)))
  example_shards.write(tmp_path, "chat", [chat] * 4)
  cfg = _pair_config(preference_shards[0])
  cfg.data.sources["chat"] = dict(paths=f"{tmp_path}/chat", weight=1.0, anyres=True)
  source = pipeline.make_source(cfg, presets.tiny())
  helpers.take(source, 3)
  assert source.stats()["skipped/unsupported_kind"] > 0


# ----------------------------------------------------------------- the model and steps


def _dpo_config(lora: bool, accum: int = 2, dropout: float = 0.0):
  cfg = cli.load_config(str(ROOT / "experiments" / "tiny.py"))
  cfg.update_from_flattened_dict({
      "model.numerics.scan_layers": True, "train.seq_len": T, "train.global_batch": ROWS,
      "train.accum_steps": accum, "optim.warmup_steps": 0, "optim.lr": 1e-2,
      "optim.weight_decay": 0.0, "total_steps": 10})
  cfg.dpo = dpo_config.defaults()
  cfg.dpo.update(enabled=True, beta=BETA)
  if lora:
    cfg.lora = lora_config.defaults()
    cfg.lora.update(enabled=True, rank=RANK, alpha=2.0 * RANK, dropout=dropout)
  return cfg


def _pair_batch(model_cfg, seed: int = 0) -> dict:
  return next(SyntheticSource(model_cfg, ROWS, T, seed=seed, pairs=True))


def _vision_calls(cfg, batch) -> list:
  """(module, input shape) of every vision tower and resampler call in the traced step."""
  setup = TrainSetup.build(cfg, sharding.make_mesh(cfg.mesh))
  calls = []

  def record(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and isinstance(
        context.module, (SiglipVisionTower, PerceiverResampler)):
      calls.append((type(context.module).__name__, tuple(args[0].shape)))
    return next_fun(*args, **kwargs)

  with setup.context(), nn.intercept_methods(record):
    jax.make_jaxpr(setup.step_fn)(setup.abstract_state, setup.global_batch(batch))
  return calls


def test_vision_runs_once_per_pair():
  """Traced steps (nothing compiled): the DPO step's ViT sees the B/2 chosen rows'
  crops once, the resampler their groups once; the cross-entropy step, all B rows."""
  cfg = _dpo_config(lora=True, accum=1)
  batch = _pair_batch(presets.tiny())
  c, g = batch["crops"].shape[1], batch["group_index"].shape[1]
  s, p = batch["crops"].shape[2], batch["group_index"].shape[2]
  once = [("SiglipVisionTower", (ROWS // 2 * c, s, s, 3)),
          ("PerceiverResampler", (ROWS // 2 * g, p, presets.tiny().vision.width))]
  # LoRA on the LM only: the reference (the base) reuses the policy's vision tokens.
  assert _vision_calls(cfg, batch) == once
  # Without LoRA the reference encodes with its own (frozen) resampler: once per pair too.
  assert _vision_calls(_dpo_config(lora=False, accum=1), batch) == once * 2
  # The counter counts: the cross-entropy step encodes every row.
  cfg.dpo.enabled = False
  assert _vision_calls(cfg, batch) == [("SiglipVisionTower", (ROWS * c, s, s, 3)),
                                       ("PerceiverResampler", (ROWS * g, p, 48))]


@pytest.mark.slow  # the default suite's 15-minute budget on 2 cores
def test_shared_vision_tokens_are_each_rows_own():
  """encode_images on the chosen rows, written into both rows, equals encoding every row
  (within the activation tolerance); another assignment of pairs does not."""
  cfg = presets.tiny()
  model = xgenmm.XGenMM(cfg)
  params = xgenmm.init_params(cfg, jax.random.PRNGKey(0))
  batch = {k: jnp.asarray(v) for k, v in _pair_batch(cfg, seed=1).items()}
  encode = lambda *a: model.apply({"params": params}, *a,  # noqa: E731
                                  method=xgenmm.XGenMM.encode_images)
  shared = np.asarray(dpo_step._both_rows(encode(*dpo_step._pair_images(batch))))
  own = np.asarray(encode(batch["crops"], batch["group_index"], batch["group_mask"]))
  tol = 1e-4 + 1e-5 * np.abs(own)
  assert np.all(np.abs(shared - own) <= tol)
  wrong = np.asarray(jnp.tile(encode(*dpo_step._pair_images(batch)), (2, 1, 1, 1)))
  assert np.any(np.abs(wrong - own) > 100 * tol)


def _sequence_logp_bound(model_cfg, params, batch) -> np.ndarray:
  """float64[B, S]: how far two float32 evaluations of a sequence's answer log-probability
  may differ. Per logit, test_lora's bound 2·gamma_K·(max|h|·Σ_d|W[d, v]| + |b_v|) over
  the live columns (base and added); per token, the target logit's and the
  log-sum-exp's (1-Lipschitz in the max norm) share plus each evaluation's own
  log-sum-exp and subtraction roundings; per sequence, the sum and its gamma_n."""
  model = xgenmm.XGenMM(model_cfg)
  inputs = {k: jnp.asarray(batch[k]) for k in batch_spec.MODEL_KEYS}
  hidden = model.apply({"params": params}, **inputs, method=xgenmm.XGenMM.features)
  logits = np.asarray(model.apply({"params": params}, hidden, method=xgenmm.XGenMM.logits),
                      np.float64)[:, :-1]
  head = params["lm"]["head"]
  vocab = model_cfg.text.base_vocab
  w = np.concatenate([np.asarray(head["kernel"], np.float64)[:, :vocab],
                      np.asarray(head["additional_kernel"], np.float64)], axis=1)
  bias = np.concatenate([np.asarray(head["bias"], np.float64)[:vocab],
                         np.asarray(head["additional_bias"], np.float64)])
  hmax = np.max(np.abs(np.asarray(hidden, np.float64)), axis=-1, keepdims=True)[:, :-1]
  k = _chain_roundings(model_cfg, RANK, T)
  per_logit = 2 * _gamma(k) * (hmax * np.abs(w).sum(0) + np.abs(bias))  # [B, T-1, V]
  lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  targets = batch["labels"][:, 1:]
  mask = targets != batch_spec.IGNORE
  picked = np.take_along_axis(logits, np.where(mask, targets, 0)[..., None], -1)[..., 0]
  logp = picked - lse
  target_bound = np.take_along_axis(per_logit, np.where(mask, targets, 0)[..., None],
                                    -1)[..., 0]
  token = (target_bound + per_logit.max(-1)
           + 2 * (_gamma(logits.shape[-1] + 2) + 3 * U * (np.abs(lse) + np.abs(logp))))
  segs = batch["segment_ids"][:, 1:]
  s = T + 1
  out = np.zeros((logits.shape[0], s))
  for b in range(logits.shape[0]):
    for seg in range(1, s):
      sel = mask[b] & (segs[b] == seg)
      if sel.any():
        out[b, seg] = token[b][sel].sum() + 2 * _gamma(int(sel.sum())) * np.abs(logp[b][sel]).sum()
  return out


def _run_steps(cfg, batch, steps: int):
  """The trainer's jitted step (TrainSetup) from a fresh state on one fixed batch."""
  setup = TrainSetup.build(cfg, sharding.make_mesh(cfg.mesh))
  with setup.context():
    state = setup.init_state(cfg.seed)
    initial = jax.device_get(state)
    global_batch = setup.global_batch(batch)
    step = setup.compile_step(global_batch)
    metrics = []
    for _ in range(steps):
      state, m = step(state, global_batch)
      metrics.append({k: float(v) for k, v in jax.device_get(m).items()})
  return dict(setup=setup, initial=initial, final=jax.device_get(state), metrics=metrics)


@pytest.fixture(scope="module")
def lora_run():
  """Eight LoRA DPO steps (adapter dropout 0.1, 2 micro-batches) on one fixed batch."""
  cfg = _dpo_config(lora=True, dropout=0.1)
  batch = _pair_batch(presets.tiny())
  return dict(batch=batch, **_run_steps(cfg, batch, 8))


def _assert_step1_is_policy_equals_reference(run, params):
  """Step 1 (policy == reference up to float32): log 2 and zero rewards, within the
  bound of two evaluations of each sequence (`_sequence_logp_bound`)."""
  m, batch = run["metrics"][0], run["batch"]
  bound = _sequence_logp_bound(run["setup"].model_cfg, params, batch)
  valid = np.asarray(dpo_step.pair_valid(jnp.asarray(batch["labels"]),
                                         jnp.asarray(batch["segment_ids"]), T + 1))
  e_c, e_r = (x[valid] for x in dpo_lib.chosen_rejected(bound))
  n = valid.sum()
  assert m["pairs"] == n == ROWS // 2
  assert abs(m["rewards/chosen"]) <= BETA * e_c.sum() / n + 4 * U
  assert abs(m["rewards/rejected"]) <= BETA * e_r.sum() / n + 4 * U
  assert abs(m["rewards/margin"]) <= BETA * (e_c + e_r).sum() / n + 8 * U
  # ℓ(Δ) = log 2 − βΔ/2 + O(Δ²): the first-order term, plus ℓ's own rounding.
  assert abs(m["loss"] - math.log(2)) <= BETA * (e_c + e_r).sum() / n + 8 * U
  # The bound is tight enough to matter: the step-1 log-probabilities are far larger.
  assert BETA * (e_c + e_r).max() < 1e-2 * BETA * abs(m["logps/chosen"])


def test_lora_dpo_starts_at_log_2_with_zero_rewards(lora_run):
  _assert_step1_is_policy_equals_reference(lora_run, lora_run["initial"].params)


def test_lora_dpo_steps_lower_the_loss_and_widen_the_margin(lora_run):
  """The synthetic chosen answer continues the prompt's pattern, the rejected one does
  not; a few steps on this fixed pair set move the policy towards the chosen."""
  ms = lora_run["metrics"]
  assert ms[-1]["loss"] < ms[0]["loss"] - 0.1
  assert ms[-1]["rewards/margin"] > ms[1]["rewards/margin"] > 0
  assert ms[-1]["rewards/accuracy"] == 1.0
  assert ms[-1]["logps/chosen"] > ms[0]["logps/chosen"]
  # Only the adapters moved: the base, which is the reference, is the initial one.
  before, after = layout.flatten(lora_run["initial"].params), layout.flatten(
      lora_run["final"].params)
  assert all(np.array_equal(before[k], after[k]) for k in before)


@pytest.mark.slow  # the default suite's 15-minute budget on 2 cores
def test_full_dpo_keeps_a_frozen_reference_copy():
  """Without LoRA: the state holds the initial parameters as the reference; they get
  no update while the parameters move, and step 1 is policy == reference."""
  cfg = _dpo_config(lora=False, accum=1)
  batch = _pair_batch(presets.tiny())
  run = dict(batch=batch, **_run_steps(cfg, batch, 3))
  initial, final = run["initial"], run["final"]
  assert isinstance(final, dpo_step.DpoTrainState)
  ref0, ref1 = layout.flatten(initial.reference), layout.flatten(final.reference)
  p0, p1 = layout.flatten(initial.params), layout.flatten(final.params)
  assert ref0.keys() == p0.keys()
  assert all(np.array_equal(ref0[k], p0[k]) for k in p0), "the reference is not the init"
  assert all(np.array_equal(ref1[k], ref0[k]) for k in ref0), "the reference moved"
  assert any(not np.array_equal(p1[k], p0[k]) for k in p0), "the parameters did not move"
  assert all(np.array_equal(p1[k], p0[k]) for k in p0 if k.startswith("vision/"))
  # Adam's state covers the trained parameters once (two moments; the frozen ViT has
  # none), never the reference.
  n_params = sum(v.size for k, v in p0.items() if not k.startswith("vision/"))
  assert sum(np.size(v) for v in jax.tree.leaves(final.opt_state) if np.ndim(v)) == 2 * n_params
  _assert_step1_is_policy_equals_reference(run, initial.params)
  assert run["metrics"][-1]["rewards/margin"] > 0


# ----------------------------------------------------------------------- the recipes


@pytest.mark.parametrize("model,rank", [("xgenmm_4b", 64), ("xgenmm_14b", 100)])
def test_the_dpo_recipes(model, rank):
  from bliperax.configs import mixtures  # pylint: disable=g-import-not-at-top
  path = ROOT / "experiments" / model / "dpo.py"
  with pytest.raises(ValueError, match="init=DIR"):
    cli.load_config(f"{path}:synthetic=1")
  aot = cli.load_config(f"{path}:synthetic=1,init=random")
  assert aot.data.kind == "synthetic" and aot.model.init_from == ""
  assert aot.dpo.enabled and aot.dpo.beta == 0.1 and aot.dpo.label_smoothing == 0.0
  assert aot.lora.enabled and aot.lora.rank == rank and aot.lora.base_dtype == "bfloat16"
  dpo_config.check(aot)  # an even batch of whole pairs
  real = cli.load_config(f"{path}:root=/data,init=/ckpt")
  assert real.model.init_from == "/ckpt"
  assert {k: v.paths for k, v in real.data.sources.items()} == {
      s.name: f"/data/{s.folder}" for s in mixtures.DPO}
  assert {s.content for s in mixtures.DPO} == {"preference"}
  tiny = "root=/data,init=/ckpt,preset=tiny,steps=2"
  assert cli.load_config(f"{path}:{tiny}") == cli.load_config(
      f"{ROOT / 'experiments' / 'xgenmm_4b' / 'dpo.py'}:{tiny}")


# ------------------------------------------------------------- resume after SIGKILL


@pytest.mark.slow
def test_dpo_resume_after_sigkill_is_bitwise_identical(tmp_path):
  """The 4B DPO recipe shrunk to the tiny preset (LoRA with dropout, pair batches) on 2
  devices: an uninterrupted run against one SIGKILLed past a checkpoint and resumed.

  The kill waits for a complete checkpoint (Orbax writes asynchronously) and for a
  logged step past it, so the resumed run redoes steps; 10 steps with a checkpoint
  every 4 leave that window open long before the run ends.
  """
  from test_train import Proc, _checkpoints, _env, _first_step, _load_state, _metrics
  steps = 10
  flags = {"total_steps": steps, "checkpoint_every": 4, "log_every": 1, "train.seq_len": T,
           "train.global_batch": ROWS, "optim.warmup_steps": 1, "lora.dropout": 0.1,
           "model.numerics.remat_policy": "none"}
  def cmd(workdir):
    return ([sys.executable, "-m", "bliperax.train",
             "--config=experiments/xgenmm_4b/dpo.py:preset=tiny,synthetic=1,init=random",
             f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in flags.items()])
  env = _env(2, tmp_path / "cache")
  full = Proc(cmd(tmp_path / "full"), env, tmp_path / "full.txt")
  assert full.wait() == 0, full.tail()
  run = tmp_path / "run"
  def past_a_checkpoint():
    done, logged = _checkpoints(run), [m["step"] for m in _metrics(run)]
    return bool(done and logged and max(logged) > max(done))
  killed = Proc(cmd(run), env, tmp_path / "killed.txt")
  killed.signal_when(past_a_checkpoint, signal.SIGKILL)
  assert killed.wait() == -signal.SIGKILL
  logged = [m["step"] for m in _metrics(run)]
  restart = max(_checkpoints(run))
  assert restart < max(logged), f"nothing to redo: checkpoint {restart}, logged {logged}"
  resumed = Proc(cmd(run), env, tmp_path / "resumed.txt")
  assert resumed.wait() == 0, resumed.tail()
  assert _first_step(resumed) == restart + 1
  got, want = _metrics(run), _metrics(tmp_path / "full")
  assert [m["step"] for m in got] == [m["step"] for m in want] == list(range(1, steps + 1))
  keys = ("loss", "grad_norm", "pairs") + dpo_lib.METRICS
  for g, w in zip(got, want):
    for key in keys:
      assert g[key] == w[key], f"step {g['step']}: {key} {g[key]!r} != {w[key]!r}"
  assert want[-1]["rewards/margin"] != 0.0
  final_got, final_want = _load_state(run, steps), _load_state(tmp_path / "full", steps)
  assert final_got.keys() == final_want.keys()
  for k in final_want:
    assert final_got[k].tobytes() == final_want[k].tobytes(), k
