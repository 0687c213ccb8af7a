"""Model structure and decoding: logical axes, scan == unrolled, KV cache == recomputation."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bliperax.convert import layout
from bliperax.data import batch as batch_lib
from bliperax.data import batch_spec
from bliperax.infer import generate as generate_lib
from bliperax.models import layers, phi3, presets, xgenmm

# float32 round-off over a few tiny layers (values of order 1): a wrong mask or a
# wrong position changes outputs by O(0.1) and more.
ATOL = 1e-5
T = 48  # sequence length of the random batches (two groups of 16 latents + text)


def _random_batch(cfg, rng, b=2, t=T, crops=2, groups=2, side="right"):
  """A random text+vision batch with padding; vision tokens in the middle of each row."""
  r = np.random.default_rng(rng)
  s, p, lat = cfg.vision.image_size, cfg.vision.num_patches, cfg.resampler.num_latents
  examples = []
  for row in range(b):
    n_groups = groups - row % 2  # rows differ in image count
    n = t - 3 * row
    text = r.integers(0, 32015, size=n - n_groups * lat).tolist()
    text = [tok if tok not in (32012, 32013) else 7 for tok in text]
    ids = text[:2] + [32012] + text[2:]
    index = r.integers(0, crops * p, size=(n_groups, p)).astype(np.int32)
    mask = r.random((n_groups, p)) > 0.3
    vis = batch_lib.VisionInput(r.uniform(-1, 1, (crops, s, s, 3)).astype(np.float32),
                                index, mask)
    # one <image> expanding into all groups of this row
    examples.append(batch_lib.expand(ids, None, [vis], batch_spec.VisionDims.of(cfg)))
  return batch_lib.collate(examples, cfg, pad_id=32011, side=side, length=t,
                           num_crops=crops, num_groups=groups)


@pytest.mark.parametrize("preset", ["tiny", "tiny_gqa"])
def test_every_parameter_has_logical_axes(preset):
  cfg = presets.get(preset, scan_layers=True)
  boxed = xgenmm.abstract_params(cfg)
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), leaf
    assert len(leaf.names) == leaf.value.ndim, (leaf.names, leaf.value.shape)
  scanned = [l for l in leaves if "layers" in l.names]
  assert scanned and all(l.names[0] == "layers" for l in scanned)


# tiny_gqa's scanned stack is also run by the KV-cache test (scan=True); its own
# comparison is --runslow (the default suite's 15-minute budget on 2 cores).
@pytest.mark.parametrize("preset", ["tiny", pytest.param("tiny_gqa", marks=pytest.mark.slow)])
def test_scanned_equals_unrolled(preset):
  cfg = presets.get(preset)
  params = jax.device_get(layout.flatten(xgenmm.init_params(cfg, jax.random.PRNGKey(0))))
  batch = batch_spec.model_inputs(_random_batch(cfg, 0))
  unrolled = xgenmm.XGenMM(cfg).apply({"params": layout.unflatten(params)}, **batch)
  scanned_cfg = cfg.with_numerics(scan_layers=True, remat_policy="full")
  stacked = layout.unflatten(layout.stack_layers(params))
  scanned = xgenmm.XGenMM(scanned_cfg).apply({"params": stacked}, **batch)
  valid = batch["segment_ids"] > 0
  np.testing.assert_allclose(np.asarray(scanned)[valid], np.asarray(unrolled)[valid],
                             atol=ATOL, rtol=0)


@pytest.mark.parametrize("preset,scan", [  # GQA unscanned: --runslow (suite budget)
    ("tiny", False), pytest.param("tiny_gqa", False, marks=pytest.mark.slow),
    ("tiny_gqa", True)])
def test_kv_cache_decoding_equals_full_recomputation(preset, scan):
  """Greedy tokens from the cache == argmax of a full forward over prompt + tokens.

  tiny_gqa has a sliding window (5) much shorter than the sequence, so the cache's
  window mask is exercised too.
  """
  cfg = presets.get(preset, scan_layers=scan)
  params = xgenmm.init_params(cfg, jax.random.PRNGKey(1))
  params = jax.device_get(nn.meta.unbox(params))
  prompt = _random_batch(cfg, 3, side="left")
  new = 6
  out = generate_lib.generate(params, cfg, prompt, new, eos_ids=(), pad_id=32011)
  assert out.shape == (2, new)

  # Full recomputation: append the generated tokens and run one non-cached forward.
  b, t = prompt["tokens"].shape
  full = {k: v for k, v in batch_spec.model_inputs(prompt).items()}
  full["tokens"] = np.concatenate([prompt["tokens"], out], axis=1)
  last = prompt["positions"][:, -1:]
  full["positions"] = np.concatenate([prompt["positions"], last + 1 + np.arange(new)], axis=1)
  full["segment_ids"] = np.concatenate([prompt["segment_ids"], np.ones((b, new), np.int32)], 1)
  slots = full["vision_slots"]
  full["vision_slots"] = np.where(slots >= t, t + new, slots)  # keep padding groups dropped
  logits = np.asarray(xgenmm.XGenMM(cfg).apply({"params": params}, **full))
  expected = logits[:, t - 1:t - 1 + new].argmax(-1)
  np.testing.assert_array_equal(out, expected)

  # The cached logits themselves match, not just their argmax.
  cache = generate_lib.init_cache(cfg, b, t + new)
  step_logits, _ = generate_lib._forward(cfg, params, cache, {
      k: jnp.asarray(v) for k, v in batch_spec.model_inputs(prompt).items()})
  np.testing.assert_allclose(np.asarray(step_logits), logits[:, t - 1], atol=ATOL, rtol=0)


def test_cached_attention_equals_dot_product_attention():
  """The decode path's attention over a [B·K, S, H] cache == jax.nn's over [B, S, K, H]:
  grouped heads (N = 3K), several queries, and a query row with every key masked
  (jax.nn's masked value gives it the mean of the values; so must the cache path)."""
  b, t, s, n, k, h = 2, 3, 7, 6, 2, 8
  q, keys, values = (jax.random.uniform(jax.random.PRNGKey(i), shape, minval=-1, maxval=1)
                     for i, shape in enumerate([(b, t, n, h), (b, s, k, h), (b, s, k, h)]))
  mask = jax.random.bernoulli(jax.random.PRNGKey(3), 0.6, (b, 1, t, s)).at[1, 0, 2].set(False)
  to_cache = lambda x: x.transpose(0, 2, 1, 3).reshape(b * k, s, h)
  got = layers.cached_attention(q, to_cache(keys), to_cache(values), mask)
  want = layers.dot_product_attention(q, keys, values, mask)
  # Same float32 operations; only the products' summation order may differ. With
  # |q|, |k|, |v| <= 1 a logit sums h terms of partial sums <= h: its error <= h^2 eps,
  # which moves a softmax-weighted mean of |v| <= 1 by at most twice that; summing the
  # s weighted values adds <= s eps. Hence 4 (h^2 + s) eps.
  eps = float(np.finfo(np.float32).eps)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0,
                             atol=4 * (h * h + s) * eps)
  np.testing.assert_allclose(np.asarray(got)[1, 2], np.asarray(values)[1].mean(0)
                             .repeat(n // k, axis=0), rtol=0, atol=4 * s * eps)


def test_padding_does_not_change_valid_logits():
  """A row's logits are the same alone and in a padded batch (masks are right)."""
  cfg = presets.get("tiny_gqa")
  params = jax.device_get(nn.meta.unbox(xgenmm.init_params(cfg, jax.random.PRNGKey(2))))
  batch = batch_spec.model_inputs(_random_batch(cfg, 5))
  both = np.asarray(xgenmm.XGenMM(cfg).apply({"params": params}, **batch))
  row = {k: v[1:] for k, v in batch.items()}
  n = int(row["segment_ids"].sum())
  alone = {k: v for k, v in row.items()}
  alone["tokens"], alone["positions"], alone["segment_ids"] = (
      row["tokens"][:, :n], row["positions"][:, :n], row["segment_ids"][:, :n])
  alone["vision_slots"] = np.where(row["vision_slots"] >= T, n, row["vision_slots"])
  single = np.asarray(xgenmm.XGenMM(cfg).apply({"params": params}, **alone))
  np.testing.assert_allclose(both[1, :n], single[0], atol=ATOL, rtol=0)


def test_sampling_is_seeded_and_top_k_1_is_greedy():
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(4, 50)), jnp.float32)
  key = jax.random.PRNGKey(0)
  a = generate_lib.select_token(logits, key, temperature=1.0)
  b = generate_lib.select_token(logits, key, temperature=1.0)
  np.testing.assert_array_equal(a, b)
  greedy = generate_lib.select_token(logits, None, temperature=0.0)
  np.testing.assert_array_equal(generate_lib.select_token(logits, key, 1.0, top_k=1), greedy)
  np.testing.assert_array_equal(generate_lib.select_token(logits, key, 1.0, top_p=1e-6), greedy)


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scanned"])
def test_fused_projections_compute_the_same_logits(scan):
  """fuse_projections joins q|k|v and gate|up (the decode loop's form on CPU); the
  model on the joined tree gives the logits of the separate kernels, with GQA."""
  cfg = presets.get("tiny_gqa", scan_layers=scan)
  params = jax.device_get(nn.meta.unbox(xgenmm.init_params(cfg, jax.random.PRNGKey(5))))
  decoder = phi3.fuse_projections(params["lm"]["decoder"])
  block = decoder["layers"] if scan else decoder["layers_1"]
  c = cfg.text
  assert set(block["self_attn"]) == {"qkv_proj", "o_proj"}
  assert set(block["mlp"]) == {"gate_up_proj", "down_proj"}
  lead = (c.depth,) if scan else ()
  assert block["self_attn"]["qkv_proj"]["kernel"].shape == lead + (
      c.width, c.num_heads + 2 * c.num_kv_heads, c.head_dim)
  assert block["mlp"]["gate_up_proj"]["kernel"].shape == lead + (c.width, 2 * c.mlp_dim)
  assert "q_proj" in params["lm"]["decoder"][
      "layers" if scan else "layers_1"]["self_attn"]  # the input tree is left as it was
  fused = {**params, "lm": {**params["lm"], "decoder": decoder}}
  batch = batch_spec.model_inputs(_random_batch(cfg, 3))
  model = xgenmm.XGenMM(cfg)
  np.testing.assert_allclose(np.asarray(model.apply({"params": fused}, **batch)),
                             np.asarray(model.apply({"params": params}, **batch)),
                             atol=ATOL, rtol=0)


def test_fuse_projections_leaves_unmerged_adapters_separate():
  """A projection that carries LoRA adapters beside its kernel is not joined."""
  k = np.zeros((4, 2, 3), np.float32)
  tree = {"layers_0": {"self_attn": {"q_proj": {"kernel": k, "lora_a": k},
                                     "k_proj": {"kernel": k}, "v_proj": {"kernel": k}},
                       "mlp": {"gate_proj": {"kernel": k[..., 0]},
                               "up_proj": {"kernel": k[..., 0]}}}}
  out = phi3.fuse_projections(tree)["layers_0"]
  assert set(out["self_attn"]) == {"q_proj", "k_proj", "v_proj"}
  assert set(out["mlp"]) == {"gate_up_proj"}


def test_greedy_token_is_argmax_with_ties_infinities_and_nan():
  """greedy_token (two reductions) picks exactly what jnp.argmax picks: the first of tied
  maxima, the first NaN of a row holding one, the first of an all -inf row."""
  rng = np.random.default_rng(0)
  logits = rng.integers(-3, 4, size=(8, 1000)).astype(np.float32)  # many ties
  logits[1] = -np.inf
  logits[2, [7, 500]] = np.nan
  logits[3, 999] = np.inf
  logits[4] = rng.normal(size=1000).astype(np.float32)
  logits[5, :] = 2.0
  logits[6, [0, 999]] = 100.0
  got = jax.jit(generate_lib.greedy_token)(jnp.asarray(logits))
  np.testing.assert_array_equal(got, jnp.argmax(jnp.asarray(logits), axis=-1))
  assert got.dtype == jnp.int32 and list(np.asarray(got)[1:7]) == [0, 7, 999,
                                                                    logits[4].argmax(), 0, 0]


@pytest.mark.parametrize("temperature", [
    0.0, pytest.param(1.0, marks=pytest.mark.slow)])  # sampling: --runslow (suite budget)
def test_streaming_sees_every_token_and_decodes_the_same(temperature):
  """on_token gets each step's tokens in order while the device loop runs, and the
  tokens equal a call without a callback: greedy and sampled, with rows that end early
  (then padded, and no all-pad step is streamed after every row has ended). The token
  arrays handed over stay valid when kept (on CPU they come from XLA's own buffers)."""
  cfg = presets.get("tiny_gqa")
  params = jax.device_get(nn.meta.unbox(xgenmm.init_params(cfg, jax.random.PRNGKey(4))))
  prompt = _random_batch(cfg, 7, side="left")
  rng = jax.random.PRNGKey(9) if temperature else None
  free = generate_lib.generate(params, cfg, prompt, 8, eos_ids=(), temperature=temperature,
                               top_k=20, rng=rng)
  eos = (int(free[0, 2]),)  # row 0 ends at step 2 (or earlier)
  all_end = tuple(sorted({int(free[0, 1]), int(free[1, 1])}))  # every row ends by step 1
  for eos_ids in ((), eos, all_end):
    streamed = []
    kwargs = dict(eos_ids=eos_ids, temperature=temperature, top_k=20, rng=rng)
    looped = generate_lib.generate(params, cfg, prompt, 8, **kwargs)
    stepped = generate_lib.generate(
        params, cfg, prompt, 8, **kwargs,
        on_token=lambda step, tokens: streamed.append((step, tokens)))  # kept, no copy
    np.testing.assert_array_equal(looped, stepped)
    assert [step for step, _ in streamed] == list(range(len(streamed)))
    np.testing.assert_array_equal(np.stack([t for _, t in streamed], axis=1),
                                  looped[:, :len(streamed)])
    assert (looped[:, len(streamed):] == 32011).all()
    if eos_ids == eos:
      assert (looped[0, 3:] == 32011).all()  # row 0 ended at the eos, padded after
  assert len(streamed) <= 2  # all_end: every row ended by step 1, nothing streamed after


@pytest.mark.parametrize("host_call", ["default", "io_callback"])
def test_streaming_callback_stops_and_raises(host_call, monkeypatch, request):
  """on_token returning True ends the decode after that step; an exception in it stops
  the decode and reaches the caller. Through the CPU's buffer callback and through the
  io_callback that accelerators (and older JAX releases) use."""
  if host_call == "io_callback":
    monkeypatch.setattr(generate_lib, "_buffer_callback", None)
    # pylint: disable=protected-access
    generate_lib._decode_loop.clear_cache()  # compiled loops hold the other host call
    request.addfinalizer(generate_lib._decode_loop.clear_cache)
  cfg = presets.get("tiny")
  params = jax.device_get(nn.meta.unbox(xgenmm.init_params(cfg, jax.random.PRNGKey(4))))
  prompt = _random_batch(cfg, 7, side="left")
  full = generate_lib.generate(params, cfg, prompt, 8, eos_ids=())
  seen = []
  got = generate_lib.generate(params, cfg, prompt, 8, eos_ids=(),
                              on_token=lambda step, tokens: seen.append(step) or step == 2)
  assert seen == [0, 1, 2]
  np.testing.assert_array_equal(got[:, :3], full[:, :3])
  assert (got[:, 3:] == 32011).all()

  def broken(step, tokens):
    raise KeyError(f"callback failed at {step}")
  with pytest.raises(KeyError, match="callback failed at 0"):
    generate_lib.generate(params, cfg, prompt, 8, eos_ids=(), on_token=broken)
