"""Per-module numerical parity with transformers' own PyTorch SigLIP and Phi-3.

Each case builds a tiny HF model, redraws every parameter (so no norm stays at one and
no bias at zero, which would hide a dropped or swapped tensor), saves it with
`save_pretrained` (safetensors), converts it through bliperax's rules and
`CheckpointReader` (or `load_backbones`), and compares float32 outputs on random
inputs, for scanned and unscanned layers.

Sliding window: the reference (and bliperax) lets query i see key j iff
0 <= i - j <= window; transformers 5.x keeps i - j < w. So an HF model configured with
`w = window + 1` is the reference model with `window` (bliperax/DESIGN.md §1.3).
"""
import dataclasses
import json

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from bliperax.convert import hf, hf_config, layout, mapping  # noqa: E402
from bliperax.convert.safetensors_io import CheckpointReader  # noqa: E402
from bliperax.models.config import Numerics, XGenMMConfig  # noqa: E402
from bliperax.models.phi3 import Phi3LanguageModel  # noqa: E402
from bliperax.models.siglip import SiglipVisionTower  # noqa: E402

# float32 round-off through two tiny layers on values of order one, measured at a few
# 1e-6; a wrong tensor, mask, head grouping or position moves outputs by O(0.1).
RTOL = 1e-5
ATOL = 2e-5

SCAN = pytest.mark.parametrize("scan", [False, True], ids=["unscanned", "scanned"])


# ----------------------------------------------------------------------------- helpers


def _redraw(model: "torch.nn.Module", seed: int) -> None:
  """Replaces every parameter with a non-trivial random value, in place.

  Tensors of rank >= 2 get N(0, 1/fan_in) so activations stay of order one and attention is
  neither uniform nor one-hot (HF's 0.02 init makes every layer nearly the identity);
  1-D norm scales get 1 + N(0, 0.1²) and biases N(0, 0.1²).
  """
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
      if p.ndim == 1:
        p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * noise)
      else:
        p.copy_(noise / p[0].numel() ** 0.5)
  model.eval()


def _shapes(module, *args, base: str) -> dict:
  """Unscanned parameter shapes of `module` as `{base/path: shape}` (what the rules name)."""
  abstract = jax.eval_shape(module.init, jax.random.PRNGKey(0), *args)["params"]
  return {f"{base}/{k}": tuple(v.shape) for k, v in layout.flatten(abstract).items()}


def _convert(directory, rules, shapes: dict, base: str, scan: bool) -> dict:
  """HF safetensors dir -> params of the standalone tower (top `base/` stripped)."""
  reader = CheckpointReader(directory)
  hf.check_tensors(reader, rules, shapes)  # names, shapes and dtypes, before converting
  flat = {}
  for rule in rules:
    parts = mapping.to_params(rule, np.asarray(reader.get(rule.hf)),
                              [shapes[p] for p in rule.paths])
    flat.update(zip(rule.paths, parts))
  flat = {k[len(base) + 1:]: np.array(v) for k, v in flat.items()}
  if scan:
    flat = layout.stack_layers(flat)
  return layout.unflatten(flat)


def _assert_same_tree(params: dict, module, *args) -> None:
  """The converted tree has exactly the module's own paths and shapes (nothing dropped)."""
  want = jax.eval_shape(module.init, jax.random.PRNGKey(0), *args)["params"]
  want = {k: tuple(v.shape) for k, v in layout.flatten(want).items()}
  got = {k: tuple(np.shape(v)) for k, v in layout.flatten(params).items()}
  assert got == want


def _close(got, want, what: str) -> None:
  """Asserts allclose at the file's tolerances; prints the max error (seen with -s)."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  err = float(np.max(np.abs(got - want)))
  print(f"{what}: max abs err {err:.2e} (max |value| {np.max(np.abs(want)):.2f})")
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=what)


# ----------------------------------------------------------------------------- SigLIP

IMAGE, PATCH = 42, 14  # a 3x3 patch grid: a column-major patch order would show


def _siglip(tmp_path, seed=0):
  """A tiny `SiglipVisionModel` (with its pooling head) saved to `tmp_path`; returns it."""
  config = transformers.SiglipVisionConfig(
      image_size=IMAGE, patch_size=PATCH, hidden_size=32, intermediate_size=64,
      num_hidden_layers=2, num_attention_heads=4, attn_implementation="eager")
  model = transformers.SiglipVisionModel(config)
  _redraw(model, seed)
  model.save_pretrained(tmp_path)
  return model


@SCAN
def test_siglip_matches_transformers(tmp_path, scan):
  model = _siglip(tmp_path)
  vision = hf_config.vision_from_hf(json.loads((tmp_path / "config.json").read_text()))
  cfg = XGenMMConfig(vision=vision)
  images = np.random.default_rng(1).uniform(-1, 1, (2, IMAGE, IMAGE, 3)).astype(np.float32)

  reader = CheckpointReader(tmp_path)
  # transformers 5.x saves a bare SiglipVisionModel without the `vision_model.` prefix
  # that full SigLIP checkpoints (and older versions) use.
  prefix = "vision_model." if "vision_model.post_layernorm.weight" in reader else ""
  rules = mapping.vision_rules(cfg, prefix=prefix)
  shapes = _shapes(SiglipVisionTower(vision, Numerics()), images, base="vision")
  tower = SiglipVisionTower(vision, Numerics(scan_layers=scan))
  params = _convert(tmp_path, rules, shapes, "vision", scan)
  _assert_same_tree(params, tower, images)

  feats, pooled = jax.jit(lambda p, x: tower.apply({"params": p}, x, with_pooled=True))(
      params, images)
  with torch.no_grad():
    out = model(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)))
  _close(feats, out.last_hidden_state.numpy(), "siglip last_hidden_state")
  _close(pooled, out.pooler_output.numpy(), "siglip pooler_output")


# ----------------------------------------------------------------------------- Phi-3

VOCAB, T = 96, 12
ROPE_THETA = 500.0  # not the default, so a dropped theta would show


def _phi3(tmp_path, heads=4, kv_heads=4, window=None, seed=0):
  """A saved tiny `Phi3ForCausalLM` with eager attention; `window` in reference terms."""
  config = transformers.Phi3Config(
      vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=64,
      rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
      sliding_window=None if window is None else window + 1,
      pad_token_id=0, bos_token_id=1, eos_token_id=2,
      # eager always materialises the (sliding-window) mask, where sdpa may drop it for
      # `is_causal`; plain matmul-softmax is also the most literal reference.
      attn_implementation="eager")
  model = transformers.Phi3ForCausalLM(config)
  _redraw(model, seed)
  model.save_pretrained(tmp_path)
  return model


def _text_config(tmp_path, window):
  """bliperax TextConfig for the saved plain Phi-3 (no added vocabulary, no head bias)."""
  text = hf_config.text_from_hf(json.loads((tmp_path / "config.json").read_text()),
                                vocab_rows=VOCAB, decoupled=False)
  # Set explicitly: the window in reference terms (see the module docstring), and theta
  # because transformers 5.x nests it under `rope_parameters`.
  return dataclasses.replace(text, sliding_window=window, rope_theta=ROPE_THETA)


def _inputs(mask):
  """Random tokens, arange positions, segment ids = the 0/1 attention mask."""
  b, t = mask.shape
  tokens = np.random.default_rng(2).integers(0, VOCAB, (b, t)).astype(np.int32)
  positions = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy()
  return tokens, positions, mask.astype(np.int32)


def _bliperax_logits(tmp_path, text, inputs, numerics):
  lm = Phi3LanguageModel(text, numerics, head_bias=False)
  cfg = XGenMMConfig(text=text)
  rules = mapping.lm_rules(cfg, prefix="", decoupled=False, head_bias=False)
  shapes = _shapes(Phi3LanguageModel(text, Numerics(), head_bias=False), *inputs, base="lm")
  params = _convert(tmp_path, rules, shapes, "lm", numerics.scan_layers)
  _assert_same_tree(params, lm, *inputs)
  return np.asarray(jax.jit(lambda p, *a: lm.apply({"params": p}, *a))(params, *inputs))


def _hf_logits(model, inputs):
  tokens, positions, segments = (torch.from_numpy(a).long() for a in inputs)
  with torch.no_grad():
    return model(input_ids=tokens, attention_mask=segments, position_ids=positions,
                 use_cache=False).logits.numpy()


# Under causal attention right padding cannot reach a valid query, so that case checks
# only that padded slots leave valid ones intact (no NaN leaking through); left padding
# puts masked keys before valid queries, so it fails if the padding mask is ignored.
RIGHT_PADDED = np.array([[1] * T, [1] * (T - 4) + [0] * 4])
LEFT_PADDED = np.array([[1] * T, [0] * 4 + [1] * (T - 4)])

PHI3_CASES = {
    # name: (heads, kv_heads, window, attention mask)
    "mha": (4, 4, None, np.ones((2, T))),
    "gqa": (4, 2, None, np.ones((2, T))),
    "window": (4, 2, 3, np.ones((2, T))),
    "right_padding": (4, 2, None, RIGHT_PADDED),
    "left_padding": (4, 2, None, LEFT_PADDED),
}


@SCAN
@pytest.mark.parametrize("case", list(PHI3_CASES))
def test_phi3_matches_transformers(tmp_path, case, scan):
  heads, kv_heads, window, mask = PHI3_CASES[case]
  model = _phi3(tmp_path, heads, kv_heads, window)
  text = _text_config(tmp_path, window)
  inputs = _inputs(mask)
  got = _bliperax_logits(tmp_path, text, inputs, Numerics(scan_layers=scan))
  want = _hf_logits(model, inputs)
  valid = mask.astype(bool)  # padded positions are garbage on both sides
  _close(got[valid], want[valid], f"phi3 {case} logits")
  if case == "left_padding":  # the mask is live: attending the pads changes valid logits
    unmasked = _hf_logits(model, inputs[:2] + (np.ones_like(inputs[2]),))
    assert np.max(np.abs(unmasked[valid] - want[valid])) > 100 * ATOL


def test_phi3_window_is_live(tmp_path):
  """The window case would fail if either side ignored the window or was off by one."""
  window = 3
  model = _phi3(tmp_path, 4, 2, window)
  inputs = _inputs(np.ones((2, T)))
  want = _hf_logits(model, inputs)
  for wrong in (None, window - 1, window + 1):
    text = _text_config(tmp_path, wrong)
    got = _bliperax_logits(tmp_path, text, inputs, Numerics())
    # Rows with i <= min(window) see the same keys either way; later rows must differ.
    assert np.max(np.abs(got - want)) > 100 * ATOL, f"window {wrong} matched window {window}"
  # transformers' own window applies too: without it HF's logits change.
  full = transformers.Phi3ForCausalLM(dataclasses.replace(model.config, sliding_window=None))
  full.load_state_dict(model.state_dict())
  full.eval()
  assert np.max(np.abs(_hf_logits(full, inputs) - want)) > 100 * ATOL


def test_phi3_remat_matches_transformers(tmp_path):
  """Full rematerialisation (scanned, window, padding) leaves the logits unchanged."""
  window = 3
  model = _phi3(tmp_path, 4, 2, window)
  text = _text_config(tmp_path, window)
  inputs = _inputs(LEFT_PADDED)
  got = _bliperax_logits(tmp_path, text, inputs,
                         Numerics(scan_layers=True, remat_policy="full"))
  valid = LEFT_PADDED.astype(bool)
  _close(got[valid], _hf_logits(model, inputs)[valid], "phi3 remat logits")


# ----------------------------------------------------------------------------- backbones


def test_load_backbones_matches_transformers(tmp_path):
  """`load_backbones` (full SigLIP + Phi-3 dirs) feeds both towers the HF weights."""
  siglip_dir, phi3_dir = tmp_path / "siglip", tmp_path / "phi3"
  # A full SiglipModel: its checkpoint names carry `vision_model.` as on the Hub.
  siglip = transformers.SiglipModel(transformers.SiglipConfig(
      vision_config=dict(image_size=IMAGE, patch_size=PATCH, hidden_size=32,
                         intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
      text_config=dict(vocab_size=64, hidden_size=16, intermediate_size=32,
                       num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=8,
                       bos_token_id=1, eos_token_id=2, pad_token_id=0),
      attn_implementation="eager"))
  _redraw(siglip, 3)
  siglip.save_pretrained(siglip_dir)
  # Phi-3's real vocabulary rows, so the decoupled split at 32012 is the release's; the
  # default theta and no window, which hf_config reads as-is.
  phi3 = transformers.Phi3ForCausalLM(transformers.Phi3Config(
      vocab_size=32064, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
      pad_token_id=32000, bos_token_id=1, eos_token_id=32000, attn_implementation="eager"))
  _redraw(phi3, 4)
  phi3.save_pretrained(phi3_dir)

  params, cfg, _ = hf.load_backbones(siglip_dir, phi3_dir, jax.random.PRNGKey(0),
                                     scan_layers=True)
  num = cfg.numerics
  assert num.scan_layers and cfg.text.base_vocab == 32012 and cfg.text.sliding_window is None

  images = np.random.default_rng(5).uniform(-1, 1, (2, IMAGE, IMAGE, 3)).astype(np.float32)
  tower = SiglipVisionTower(cfg.vision, num)
  feats = jax.jit(lambda p, x: tower.apply({"params": p}, x))(params["vision"], images)
  with torch.no_grad():
    want = siglip.vision_model(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)))
  _close(feats, want.last_hidden_state.numpy(), "load_backbones siglip features")

  tokens = np.random.default_rng(6).integers(0, 32012, (2, T)).astype(np.int32)
  inputs = (tokens,) + _inputs(np.ones((2, T)))[1:]
  lm = Phi3LanguageModel(cfg.text, num)  # decoupled vocab; the new head bias is zero
  got = jax.jit(lambda p, *a: lm.apply({"params": p}, *a))(params["lm"], *inputs)
  base = cfg.text.base_vocab  # the added tokens' logits are fresh; the rest are Phi-3's
  _close(np.asarray(got)[..., :base], _hf_logits(phi3, inputs)[..., :base],
         "load_backbones phi3 logits")
