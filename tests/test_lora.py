"""LoRA (bliperax/lora): exactness, training, sharding, trainable fraction, PEFT export.

The tiny preset throughout. Tolerances are float32 round-off derived from the sums
involved (u = 2^-24; an n-term dot product is within gamma_n = n·u/(1 - n·u) of exact
times the sum of |terms|), never measured on this host:

- one Dense layer, merged (x·(W + s·A·B)) vs unmerged (x·W + s·(x·A)·B): an
  elementwise bound from the two computations' roundings (`_dense_bound`);
- whole-model logits, two float32 evaluations of one function in different orders
  (merged vs unmerged, JAX vs PyTorch + PEFT): each logit is within
  gamma_K · (max|h| · sum_d |W_head[d, v]| + |b_v|) of exact, K counting the
  roundings along the longest chain from embedding to logit (`_chain_roundings`),
  assuming no amplification beyond order one (pre-norm blocks, the tiny model's
  attention scores of order one); two such evaluations differ by twice that.
Each bound is checked to be tight enough to matter: a 1% error in the LoRA scale, or
the adapters left out, moves the outputs well past it.

The sharding check needs 4 devices: it runs this file as a script in a subprocess
(`python tests/test_lora.py shardings`) with --xla_force_host_platform_device_count.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if __name__ == "__main__":  # the sharding worker: devices must be set before jax starts
  sys.path.insert(0, str(ROOT))

from bliperax import cli  # noqa: E402
from bliperax import sharding  # noqa: E402
from bliperax.convert import hf, layout, peft  # noqa: E402
from bliperax.data.synthetic import SyntheticSource  # noqa: E402
from bliperax.lora import adapters as adapters_lib  # noqa: E402
from bliperax.lora import apply as apply_lib  # noqa: E402
from bliperax.lora import config as lora_config  # noqa: E402
from bliperax.lora import count, plan as plan_lib  # noqa: E402
from bliperax.models import layers, presets, xgenmm  # noqa: E402
from bliperax.train import checkpoint as ckpt_lib  # noqa: E402
from bliperax.train.setup import TrainSetup  # noqa: E402

U = 2.0 ** -24  # float32 unit round-off
RANK, ALPHA = 4, 8.0
T = 12  # tokens in the forward checks


def _gamma(n: int) -> float:
  return n * U / (1 - n * U)


def _lora_cfg(**overrides):
  c = lora_config.defaults()
  c.update(dict(enabled=True, rank=RANK, alpha=ALPHA), **overrides)
  return c


def _perturbed_b(adapters, seed: int, std: float = 0.1):
  """The adapters with every B drawn N(0, std²): a LoRA that changes the outputs."""
  flat = layout.flatten(adapters)
  rng = np.random.default_rng(seed)
  out = {k: (rng.normal(0, std, np.shape(v)).astype(np.float32) if k.endswith("lora_b")
             else np.asarray(v)) for k, v in flat.items()}
  return layout.unflatten(out)


def _text_inputs(seed: int = 0):
  tokens = np.random.default_rng(seed).integers(0, 32000, (2, T)).astype(np.int32)
  positions = np.broadcast_to(np.arange(T, dtype=np.int32), (2, T)).copy()
  return dict(tokens=tokens, positions=positions, segment_ids=np.ones((2, T), np.int32))


def _chain_roundings(cfg, rank: int, length: int) -> int:
  """K: float32 roundings along the longest chain from an embedding to a logit, each
  n-term sum counted as n (its gamma_n), the LoRA path's as 2r + 2."""
  t = cfg.text
  d, hd, f = t.width, t.head_dim, t.mlp_dim
  lora = 2 * rank + 2  # x·A (r is small next to d), (x·A)·B, the scale, the add
  block = ((d + 2)  # input RMSNorm: mean of d squares, rsqrt, scale
           + (d + lora)  # q / k / v with their adapters
           + 4 + hd  # RoPE, the scores' head_dim-term dot
           + length + 2  # softmax: a length-term sum, exp, divide
           + length  # probabilities · values
           + (t.num_heads * hd + lora) + 1  # o_proj, the residual add
           + (d + 2)  # post-attention RMSNorm
           + (d + lora) + 4  # gate / up, SiLU and the product
           + (f + lora) + 1)  # down_proj, the residual add
  return t.depth * block + (d + 2) + d + 1  # final RMSNorm, the head's dot, its bias


def _logit_bound(cfg, params, hidden, rank: int) -> np.ndarray:
  """Twice gamma_K · (max_d |h| · sum_d |W_head[d, v]| + |b_v|), per position and logit:
  the most two float32 evaluations of the same logits may differ (module docstring)."""
  head = params["lm"]["head"]
  w = np.abs(np.asarray(head["kernel"], np.float64))[:, :cfg.text.base_vocab]
  b = np.abs(np.asarray(head["bias"], np.float64))[:cfg.text.base_vocab]
  hmax = np.max(np.abs(np.asarray(hidden, np.float64)), axis=-1, keepdims=True)  # [B, T, 1]
  k = _chain_roundings(cfg, rank, hidden.shape[1])
  return 2 * _gamma(k) * (hmax * w.sum(0) + b)


# ----------------------------------------------------------------------------- the plan


def test_plan_shares_a_within_fused_hf_linears_and_refuses_other_params():
  cfg = presets.get("tiny", scan_layers=True)
  sites = {s.path.split("/")[-1]: s for s in plan_lib.make(cfg, lora_config.PHI3_ALL_LINEAR)}
  assert set(sites) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                        "down_proj"}
  prefix = "lm/decoder/layers/"
  # qkv_proj and gate_up_proj are one HF Linear each: one A, the first part's.
  assert sites["k_proj"].a_from == sites["v_proj"].a_from == prefix + "self_attn/q_proj"
  assert sites["up_proj"].a_from == prefix + "mlp/gate_proj"
  assert sites["o_proj"].owns_a and sites["down_proj"].owns_a
  assert sites["o_proj"].n_in == 2 and sites["q_proj"].n_in == 1  # [heads, head_dim, out]
  # v alone keeps its own A: sharing follows the targets.
  (v,) = plan_lib.make(cfg, [r"^lm/.*/v_proj/kernel$"])
  assert v.owns_a
  with pytest.raises(ValueError, match="not the kernel of a Dense"):
    plan_lib.make(cfg, [r"^lm/head/kernel$"])  # the decoupled head is not a Dense layer
  with pytest.raises(ValueError, match="not the kernel of a Dense"):
    plan_lib.make(cfg, [r"q_proj"])  # SigLIP's q_proj also has a bias
  with pytest.raises(ValueError, match="matches no parameter"):
    plan_lib.make(cfg, [r"qkv_proj"])


# ----------------------------------------------------------------------------- exactness


@pytest.fixture(scope="module", params=[False, True], ids=["unscanned", "scanned_remat"])
def forward(request):
  """The tiny model (scanned with full remat, or unscanned), its params, adapters with
  B = 0, and jitted text-only forwards: plain, and unmerged under `intercept()`."""
  scan = request.param
  cfg = presets.get("tiny", scan_layers=scan, remat_policy="full" if scan else "none")
  lora = apply_lib.Lora.from_config(cfg, _lora_cfg())
  boxed = xgenmm.init_params(cfg, jax.random.PRNGKey(0))
  base = nn.meta.unbox(boxed)
  fresh = nn.meta.unbox(adapters_lib.init(jax.random.PRNGKey(1), lora.plan, boxed, RANK))
  model = xgenmm.XGenMM(cfg)
  inputs = _text_inputs()
  plain = jax.jit(lambda p: model.apply({"params": p}, **inputs))
  hidden = jax.jit(lambda p: model.apply({"params": p}, **inputs, method=xgenmm.XGenMM.features))

  @jax.jit
  def unmerged(b, a):
    with lora.intercept():
      return model.apply({"params": lora.params(b, a)}, **inputs)

  return dict(cfg=cfg, lora=lora, base=base, fresh=fresh, plain=plain, hidden=hidden,
              unmerged=unmerged)


def test_zero_b_gives_the_base_model_bit_for_bit(forward):
  f = forward
  assert all(not np.any(b) for k, b in layout.flatten(f["fresh"]).items() if "lora_b" in k)
  assert any(np.any(a) for k, a in layout.flatten(f["fresh"]).items() if "lora_a" in k)
  np.testing.assert_array_equal(f["unmerged"](f["base"], f["fresh"]), f["plain"](f["base"]))


def test_merged_equals_unmerged_to_float32_round_off(forward):
  f = forward
  trained = _perturbed_b(f["fresh"], seed=3)
  unmerged = np.asarray(f["unmerged"](f["base"], trained), np.float64)
  merged_params = f["lora"].merge(f["base"], trained)
  merged = np.asarray(f["plain"](merged_params), np.float64)
  bound = _logit_bound(f["cfg"], merged_params, f["hidden"](merged_params), RANK)
  base_vocab = f["cfg"].text.base_vocab
  err = np.abs(merged - unmerged)[..., :base_vocab]
  assert np.all(err <= bound), f"max err {err.max():.3g} (bound {bound.flat[err.argmax()]:.3g})"
  # The bound is tight enough to matter: the adapters' own effect, and a 1% error in
  # the scale, are far beyond it.
  base = np.asarray(f["plain"](f["base"]), np.float64)[..., :base_vocab]
  print(f"merged vs unmerged: max err {err.max():.3g}, bound {bound.min():.3g}..{bound.max():.3g}"
        f", adapters' effect {np.max(np.abs(unmerged[..., :base_vocab] - base)):.3g}")
  assert np.max(np.abs(unmerged[..., :base_vocab] - base)) > 100 * bound.max()
  off = apply_lib.merge(f["base"], trained, f["lora"].plan, 1.01 * f["lora"].scale)
  wrong = np.asarray(f["plain"](off), np.float64)[..., :base_vocab]
  print(f"1% scale error: {np.max(np.abs(wrong - unmerged[..., :base_vocab])):.3g}")
  assert np.any(np.abs(wrong - unmerged[..., :base_vocab]) > bound)


def _dense_bound(x, w, a, b, bias, n_in, scale) -> np.ndarray:
  """Elementwise bound on |unmerged - merged| for one Dense (x [..., *I], W [*I, *O]).

  Unmerged: y1 = fl(fl(x·W) + b) is within gamma_{n+1}|x||W| + u|b| of x·W + b; the
  LoRA term fl(fl(fl(x·A)·B)·s) within s·gamma_{n+r+1}|x||A||B| of s·x·A·B; their sum
  adds u times its size. Merged: W' = fl(W + fl(s·fl(A·B))) is within u|W| +
  s·gamma_{r+2}|A||B| of W + s·A·B, then fl(fl(x·W') + b) adds gamma_{n+1}|x||W'| +
  u|b|. One more gamma step on each covers the second-order terms; the bound is the
  sum of both distances from the exact x·(W + s·A·B) + b.
  """
  n = math.prod(w.shape[:n_in])
  r = a.shape[-1]
  x2 = np.abs(np.asarray(x, np.float64)).reshape(-1, n)
  w2 = np.abs(np.asarray(w, np.float64)).reshape(n, -1)
  ab = np.abs(np.asarray(a, np.float64)).reshape(n, r) @ np.abs(np.asarray(b, np.float64)
                                                                   ).reshape(r, -1)
  xw, xab = x2 @ w2, scale * (x2 @ ab)
  absb = np.abs(np.asarray(bias, np.float64)).reshape(-1)
  unmerged = _gamma(n + 3) * xw + _gamma(n + r + 3) * xab + 3 * U * absb
  merged = _gamma(n + 3) * xw + _gamma(n + r + 4) * xab + U * (x2 @ w2) + 2 * U * absb
  return (unmerged + merged).reshape(x.shape[:-n_in] + w.shape[n_in:])


@pytest.mark.parametrize("n_in", [1, 2], ids=["q_proj_like", "o_proj_like"])
def test_one_dense_merged_vs_unmerged_within_its_derived_bound(n_in):
  """A Dense with a bias and 1 or 2 contracted axes: elementwise within `_dense_bound`."""
  rng = np.random.default_rng(n_in)
  in_shape, features = ((64,), (4, 16)) if n_in == 1 else ((4, 16), 64)
  x = rng.normal(0, 1, (3, 5) + in_shape).astype(np.float32)
  # Axis names only matter on a mesh; three of them fit both kernels ([64, 4, 16], [4, 16, 64]).
  dense = layers.Dense(features, ("a", "b", "c"), use_bias=True, contract=n_in)
  params = nn.meta.unbox(dense.init(jax.random.PRNGKey(0), x)["params"])
  params["bias"] = rng.normal(0, 1, params["bias"].shape).astype(np.float32)
  a = rng.uniform(-0.2, 0.2, in_shape + (RANK,)).astype(np.float32)
  b = rng.normal(0, 0.5, (RANK,) + tuple(params["kernel"].shape[n_in:])).astype(np.float32)
  scale = ALPHA / RANK
  with apply_lib.intercept(scale):
    unmerged = dense.apply({"params": {**params, "lora_a": a, "lora_b": b}}, x)
  merged_kernel = params["kernel"] + apply_lib.delta(jnp.asarray(a), jnp.asarray(b), n_in, scale)
  merged = dense.apply({"params": {**params, "kernel": merged_kernel}}, x)
  plain = dense.apply({"params": params}, x)
  bound = _dense_bound(x, params["kernel"], a, b, params["bias"], n_in, scale)
  err = np.abs(np.asarray(unmerged, np.float64) - np.asarray(merged, np.float64))
  assert np.all(err <= bound), f"max err {err.max():.3g} vs bound {bound.max():.3g}"
  # The low-rank term is live and its size is far beyond the bound.
  assert np.max(np.abs(np.asarray(unmerged) - np.asarray(plain))) > 1000 * bound.max()


# ----------------------------------------------------------------------------- training


def _run_config(**lora):
  cfg = cli.load_config(str(ROOT / "experiments" / "tiny.py"))
  cfg.update_from_flattened_dict({
      "model.numerics.scan_layers": True, "train.seq_len": 24, "train.global_batch": 2,
      "train.accum_steps": 2, "optim.warmup_steps": 0, "optim.lr": 1e-2,
      "optim.weight_decay": 0.0, "total_steps": 4})
  cfg.lora = _lora_cfg(**lora)
  return cfg


@pytest.fixture(scope="module")
def lora_step():
  """One trainer step (TrainSetup, jitted as the trainer does) with LoRA: dropout 0.1,
  2 micro-batches, the base stored in bf16. Returns the setup and both states."""
  cfg = _run_config(dropout=0.1, base_dtype="bfloat16")
  setup = TrainSetup.build(cfg, sharding.make_mesh(cfg.mesh))
  source = SyntheticSource(setup.model_cfg, 2, 24, seed=0)
  with setup.context():
    before = setup.init_state(cfg.seed)
    batch = setup.global_batch(next(source))
    before_host = jax.device_get(before)
    after, metrics = setup.compile_step(batch)(before, batch)
  return dict(cfg=cfg, setup=setup, before=before_host, after=jax.device_get(after),
              metrics=jax.device_get(metrics))


def test_only_adapters_get_updates_and_optimizer_state(lora_step):
  before, after, setup = lora_step["before"], lora_step["after"], lora_step["setup"]
  base0, base1 = layout.flatten(before.params), layout.flatten(after.params)
  assert {str(np.dtype(v.dtype)) for v in base0.values()} == {"bfloat16"}
  assert all(np.array_equal(base0[k], base1[k]) for k in base0), "the base moved"
  ad0, ad1 = layout.flatten(before.adapters), layout.flatten(after.adapters)
  assert np.isfinite(lora_step["metrics"]["loss"]) and lora_step["metrics"]["grad_norm"] > 0
  # With B = 0, A's gradient is exactly zero on the first step (dL/dA = s·xᵀ·(dL/dy)·Bᵀ);
  # every B moves.
  for k in ad0:
    if k.endswith("lora_a"):
      np.testing.assert_array_equal(ad1[k], ad0[k], err_msg=k)
    else:
      assert np.any(ad1[k] != ad0[k]), f"{k} did not move"
  # Adam's state: two moments shaped like the adapters, nothing like the base.
  n_adapters = sum(v.size for v in ad0.values())
  opt_leaves = jax.tree.leaves(after.opt_state)
  assert sum(np.size(v) for v in opt_leaves if np.ndim(v)) == 2 * n_adapters
  shapes = sorted(np.shape(v) for v in opt_leaves if np.ndim(v))
  assert shapes == sorted(2 * [v.shape for v in ad0.values()])
  assert setup.lora is not None and len(setup.lora.plan) == 7  # q k v o gate up down, scanned


def test_evaluation_params_are_the_merged_ones(lora_step):
  """`TrainSetup.inference_params` merges: float32 W + s·A·B in the adapted kernels."""
  setup, state = lora_step["setup"], lora_step["after"]
  merged = layout.flatten(setup.inference_params(state))
  base = layout.flatten(state.params)
  ad = layout.flatten(state.adapters)
  kernel = "lm/decoder/layers/self_attn/k_proj/kernel"
  want = (np.asarray(base[kernel], np.float32) + setup.lora.scale * np.einsum(
      "ldr,lrkh->ldkh", ad["lm/decoder/layers/self_attn/q_proj/lora_a"],
      ad["lm/decoder/layers/self_attn/k_proj/lora_b"]))
  assert merged[kernel].dtype == np.float32
  # One r-term sum and one add: gamma_{r+2} of the magnitudes.
  # Both sides: an r-term sum, the scale and one add, each within gamma_{r+2} of exact.
  tol = 2 * _gamma(RANK + 2) * (
      np.abs(np.asarray(base[kernel], np.float32)) + setup.lora.scale * np.einsum(
          "ldr,lrkh->ldkh", np.abs(ad["lm/decoder/layers/self_attn/q_proj/lora_a"]),
          np.abs(ad["lm/decoder/layers/self_attn/k_proj/lora_b"])))
  assert np.all(np.abs(np.asarray(merged[kernel]) - want) <= tol)
  assert np.any(np.asarray(merged[kernel]) != np.asarray(base[kernel], np.float32))
  # Everything else is handed back as it is (the bf16 base's dtype included).
  assert merged["lm/embed/embedding"].dtype == base["lm/embed/embedding"].dtype
  np.testing.assert_array_equal(merged["lm/embed/embedding"], base["lm/embed/embedding"])


# ----------------------------------------------------------------------------- sharding


def _sharding_report() -> dict:
  """(Worker, 4 devices.) The adapters' and Adam moments' specs next to their kernels'."""
  cfg = _run_config()
  cfg.mesh.update(data=1, fsdp=2, tensor=2)
  cfg.train.accum_steps = 1  # a smaller step to compile; accumulation is tested above
  setup = TrainSetup.build(cfg, sharding.make_mesh(cfg.mesh))
  source = SyntheticSource(setup.model_cfg, 2, 24, seed=0)
  with setup.context():
    state = setup.init_state(cfg.seed)
    batch = setup.global_batch(next(source))
    state, _ = setup.compile_step(batch)(state, batch)
  spec = lambda x: [list(e) if isinstance(e, tuple) else e for e in x.sharding.spec]
  kernels = layout.flatten(state.params)
  report = {"devices": jax.device_count(), "sites": {}}
  moments = layout.flatten(optax.tree_utils.tree_get(state.opt_state, "mu"))
  for path, value in layout.flatten(state.adapters).items():
    kernel = kernels[path.rsplit("/", 1)[0] + "/kernel"]
    report["sites"][path] = {"adapter": spec(value), "moment": spec(moments[path]),
                             "kernel": spec(kernel), "kernel_ndim": kernel.ndim,
                             "ndim": value.ndim}
  return report


@pytest.mark.slow  # the default suite's 15-minute budget on 2 cores
def test_adapters_shard_like_their_base_kernels(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  env["XLA_FLAGS"] = " ".join([env.get("XLA_FLAGS", ""),
                               "--xla_force_host_platform_device_count=4"]).strip()
  out = tmp_path / "report.json"
  proc = subprocess.run([sys.executable, __file__, "shardings", str(out)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(out.read_text())
  assert report["devices"] == 4
  pad = lambda spec, n: spec + [None] * (n - len(spec))
  n_in = {"q_proj": 1, "k_proj": 1, "v_proj": 1, "gate_proj": 1, "up_proj": 1,
          "down_proj": 1, "o_proj": 2}
  for path, r in report["sites"].items():
    kernel = pad(r["kernel"], r["kernel_ndim"])
    s = 1 + n_in[path.split("/")[-2]]  # the stacked 'layers' axis, then the inputs
    # The rank axis takes fsdp where the kernel's axes kept in the adapter do not.
    if path.endswith("lora_a"):  # [L, *in, r]: the kernel's [L, *in] axes
      want = kernel[:s] + [None if "fsdp" in kernel[:s] else "fsdp"]
    else:  # [L, r, *out]: the kernel's L and output axes
      want = kernel[:1] + [None if "fsdp" in kernel[s:] else "fsdp"] + kernel[s:]
    assert pad(r["adapter"], r["ndim"]) == want, (path, r)
    assert r["moment"] == r["adapter"], (path, r)  # Adam's moments shard like the adapter
  # The mesh really splits them (fsdp over embed, tensor over heads / mlp).
  specs = {p.split("/")[-2] + "/" + p.split("/")[-1]: r["adapter"]
           for p, r in report["sites"].items()}
  assert specs["q_proj/lora_a"][1] == "fsdp" and specs["q_proj/lora_b"][2] == "tensor"
  assert specs["down_proj/lora_a"][1] == "tensor" and specs["down_proj/lora_b"][2] == "fsdp"
  assert specs["q_proj/lora_b"][1] == "fsdp" and specs["down_proj/lora_a"][2] == "fsdp"


def test_every_adapter_is_split_over_fsdp_on_an_fsdp_only_mesh():
  """On a data x fsdp mesh (tensor 1) each adapter, and so its Adam moments, is split
  over fsdp: through the kernel's input (A) or output (B) axis, else its rank axis."""
  cfg = presets.get("tiny", scan_layers=True)  # as the recipes run: stacked [L, ...]
  plan = plan_lib.make(cfg, lora_config.defaults().targets)
  abstract = adapters_lib.abstract(plan, xgenmm.abstract_params(cfg), RANK)
  specs = layout.flatten(nn.logical_to_mesh(nn.get_partition_spec(abstract),
                                            sharding.DEFAULT_RULES))
  assert specs and all(k.endswith(("lora_a", "lora_b")) for k in specs)
  for path, spec in specs.items():
    assert list(spec).count("fsdp") == 1, (path, spec)
  q_b = next(v for k, v in specs.items() if k.endswith("q_proj/lora_b"))
  assert tuple(q_b) == (None, "fsdp", "tensor", None)  # [L, r, heads, head_dim]


# ----------------------------------------------------------------------------- counting


def test_trainable_fraction():
  tiny = count.report(presets.tiny(), lora_config.PHI3_ALL_LINEAR, RANK)
  d, f, q, kv, depth = 64, 128, 64, 64, 2  # tiny: width, mlp, q / kv widths, layers
  # Per HF Linear, r·(in + out): qkv_proj, o_proj, gate_up_proj, down_proj.
  per_layer = RANK * ((d + q + 2 * kv) + (q + d) + (d + 2 * f) + (f + d))
  assert tiny["adapter_params"] == depth * per_layer
  assert tiny["fraction_of_lm"] == depth * per_layer / tiny["lm_params"]
  big = count.report(presets.xgenmm_4b(), lora_config.PHI3_ALL_LINEAR, 64)
  per_layer = 64 * ((3072 + 3 * 3072) + 2 * 3072 + (3072 + 2 * 8192) + (8192 + 3072))
  assert big["adapter_params"] == 32 * per_layer == 100_663_296
  assert big["lm_params"] == 3_821_130_051
  assert 0.025 <= big["fraction_of_lm"] <= 0.027  # the paper: "about 2.5%" of the LLM


# ----------------------------------------------------------------------------- export


def _save_run(workdir: pathlib.Path, setup, state) -> None:
  """The layout the trainer leaves: checkpoints/<step>/{state,data} + config.json."""
  ckpt = ckpt_lib.Checkpointer(workdir / "checkpoints", async_save=False)
  ckpt.save(int(state.step), state, {"position": 0})
  ckpt.close()
  (workdir / "checkpoints" / "config.json").write_text(setup.cfg.to_json_best_effort())


def _hf_phi3(directory: pathlib.Path, cfg):
  """A torch module whose `vlm.lang_model` is transformers' Phi3ForCausalLM with the LM
  tensors of the HF xGen-MM checkpoint in `directory` (names as in the checkpoint; the
  decoupled vocabulary's extra rows and the head bias are left out: text tokens only,
  bias added by the caller)."""
  import safetensors.torch  # pylint: disable=g-import-not-at-top
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  t = cfg.text
  config = transformers.Phi3Config(
      vocab_size=t.vocab_rows, hidden_size=t.width, intermediate_size=t.mlp_dim,
      num_hidden_layers=t.depth, num_attention_heads=t.num_heads,
      num_key_value_heads=t.num_kv_heads, max_position_embeddings=t.max_positions,
      rms_norm_eps=t.rms_norm_eps, sliding_window=t.sliding_window + 1,
      rope_parameters={"rope_type": "default", "rope_theta": t.rope_theta},
      pad_token_id=32011, bos_token_id=1, eos_token_id=32000, tie_word_embeddings=False,
      attn_implementation="eager")

  class Wrapper(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.vlm = torch.nn.Module()
      self.vlm.lang_model = transformers.Phi3ForCausalLM(config)

  model = Wrapper()
  tensors = {}
  for f in directory.glob("*.safetensors"):
    tensors.update(safetensors.torch.load_file(str(f)))
  want = model.state_dict()
  state = {k: v.float() for k, v in tensors.items() if k in want}
  missing = set(want) - set(state)
  assert not missing, sorted(missing)[:5]
  model.load_state_dict(state)
  return model.eval(), tensors


def _hf_logits(model, inputs, bias) -> np.ndarray:
  """Text logits float64[B, T, n] of the wrapped Phi-3, n = len(bias), plus the bias."""
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    out = model.vlm.lang_model(input_ids=torch.from_numpy(inputs["tokens"]).long(),
                               position_ids=torch.from_numpy(inputs["positions"]).long(),
                               attention_mask=torch.from_numpy(inputs["segment_ids"]).long(),
                               use_cache=False).logits.numpy()
  return out[..., :len(bias)].astype(np.float64) + bias


def test_export_merged_hf_and_peft_adapters(lora_step, tmp_path):
  """tools/convert_checkpoint.py --from=lora on a saved LoRA run: the merged HF
  checkpoint, and PEFT adapters that peft loads onto the HF model built from the base;
  both give the merged bliperax model's logits within the derived bound."""
  peft_lib = pytest.importorskip("peft", reason="peft is not installed (pip install peft)")
  setup, state = lora_step["setup"], lora_step["after"]
  # Large random B's, so a misnamed, transposed or mis-stacked tensor shows in the logits.
  state = state.replace(adapters=_perturbed_b(state.adapters, seed=5))
  _save_run(tmp_path / "run", setup, state)
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  proc = subprocess.run(
      [sys.executable, "tools/convert_checkpoint.py", "--from=lora", f"--src={tmp_path / 'run'}",
       f"--dst={tmp_path / 'merged'}", f"--peft_dst={tmp_path / 'peft'}", "--noprogress"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads(proc.stdout.strip().splitlines()[-1])
  assert summary["peft_tensors"] == 2 * 4 * setup.model_cfg.text.depth
  assert summary["dtype"] == "float32"  # the bf16 base merged into float32 kernels

  # Names, shapes and config are what peft itself makes for these modules.
  config = json.loads((tmp_path / "peft" / peft.CONFIG_NAME).read_text())
  assert (config["r"], config["lora_alpha"]) == (RANK, ALPHA)
  import safetensors.numpy  # pylint: disable=g-import-not-at-top
  exported = safetensors.numpy.load_file(str(tmp_path / "peft" / peft.WEIGHTS_NAME))
  hf.save_xgenmm(state.params, setup.model_cfg, tmp_path / "base")  # the unmerged base
  model, _ = _hf_phi3(tmp_path / "base", setup.model_cfg)
  fresh = peft_lib.get_peft_model(_hf_phi3(tmp_path / "base", setup.model_cfg)[0],
                                  peft_lib.LoraConfig(**{k: v for k, v in config.items()
                                                         if k != "peft_type"}))
  expected = peft_lib.get_peft_model_state_dict(fresh)
  assert {k: tuple(v.shape) for k, v in expected.items()} == {
      k: tuple(v.shape) for k, v in exported.items()}
  assert any(k.endswith("self_attn.qkv_proj.lora_B.weight") for k in exported)

  # Logits: ours (merged), HF + PEFT (unmerged), HF from the merged checkpoint.
  cfg = setup.model_cfg
  merged_params = setup.lora.merge(state.params, state.adapters)
  inputs = _text_inputs(seed=7)
  ours_model = xgenmm.XGenMM(cfg)
  ours = np.asarray(jax.jit(lambda p: ours_model.apply({"params": p}, **inputs))(
      merged_params), np.float64)[..., :cfg.text.base_vocab]
  hidden = jax.jit(lambda p: ours_model.apply({"params": p}, **inputs,
                                              method=xgenmm.XGenMM.features))(merged_params)
  bound = _logit_bound(cfg, merged_params, hidden, RANK)
  bias = np.asarray(merged_params["lm"]["head"]["bias"], np.float64)[:cfg.text.base_vocab]
  with_peft = peft_lib.PeftModel.from_pretrained(model, str(tmp_path / "peft"))
  got_peft = _hf_logits(with_peft.base_model.model, inputs, bias)
  merged_hf, _ = _hf_phi3(tmp_path / "merged", cfg)
  got_merged = _hf_logits(merged_hf, inputs, bias)
  for name, got in (("HF + PEFT", got_peft), ("HF merged checkpoint", got_merged)):
    err = np.abs(got - ours)
    print(f"{name} vs bliperax merged: max err {err.max():.3g}, bound {bound.min():.3g}.."
          f"{bound.max():.3g}")
    assert np.all(err <= bound), f"{name}: max err {err.max():.3g} (bound {bound.max():.3g})"
  plain, _ = _hf_phi3(tmp_path / "base", cfg)  # without the adapters: far off
  assert np.max(np.abs(_hf_logits(plain, inputs, bias) - ours)
                ) > 100 * bound.max()


if __name__ == "__main__":
  if sys.argv[1:2] == ["shardings"]:
    pathlib.Path(sys.argv[2]).write_text(json.dumps(_sharding_report()))


def test_a_lora_workdir_loads_merged_for_export_and_inference(lora_step, tmp_path):
  """infer.checkpoints.load (python -m bliperax.export / evaluate / generate) on a LoRA
  run's workdir gives the base with the adapters merged, not the bare base."""
  from bliperax.infer import checkpoints  # pylint: disable=g-import-not-at-top
  setup, state = lora_step["setup"], lora_step["after"]
  state = state.replace(adapters=_perturbed_b(state.adapters, seed=7))
  _save_run(tmp_path / "run", setup, state)
  loaded, model_cfg = checkpoints.load(tmp_path / "run")
  assert model_cfg == setup.model_cfg
  merged = jax.device_get(setup.lora.merge(state.params, state.adapters))
  flat_loaded, flat_merged = layout.flatten(loaded), layout.flatten(merged)
  assert set(flat_loaded) == set(flat_merged)
  for key, value in flat_merged.items():
    np.testing.assert_array_equal(np.asarray(flat_loaded[key]), np.asarray(value), err_msg=key)
  base = layout.flatten(jax.device_get(state.params))
  assert any(not np.array_equal(np.asarray(flat_loaded[k]), np.asarray(base[k]))
             for k in base), "the adapters were not merged"
