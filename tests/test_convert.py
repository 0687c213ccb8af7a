"""Checkpoint conversion: exact round trips, the released 4B layout, bad inputs, the CLI.

Bit-exactness is checked on raw bytes (dtype name, shape and data of every tensor), so
a conversion that rounds, reorders or re-types anything fails. Bad-input fixtures are
copies of the golden checkpoint edited with the official `safetensors` library.
"""
import dataclasses
import importlib.util
import json
import os
import pathlib
import pickle
import shutil
import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import pytest
import safetensors
import safetensors.numpy

from bliperax.convert import hf, hf_config, layout, mapping, params_io
from bliperax.convert.safetensors_io import CheckpointError, CheckpointReader
from bliperax.models import presets, xgenmm

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONVERT = ROOT / "tools" / "convert_checkpoint.py"
MAKE_RANDOM = ROOT / "tools" / "make_random_checkpoint.py"
RELEASED = "reference/xgenmm-phi3-mini-base-r-v1.5"
PARAMS_4B = 4_359_257_219  # the released checkpoint's parameter count (bliperax/DESIGN.md §1)
GOLDEN_FILE = "model.safetensors"


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def released_dir(shared_dir) -> pathlib.Path:
  path = shared_dir / RELEASED
  if not (path / "model.safetensors.index.json").exists():
    pytest.skip(f"missing {path}")
  return path


def _raw(directory: pathlib.Path) -> dict:
  """{name: (dtype name, shape, bytes)} of every tensor of an HF checkpoint directory."""
  reader = CheckpointReader(directory)
  return {k: (reader.dtype_name(k), reader.shape(k), reader.get(k).tobytes())
          for k in reader.keys()}


def _assert_bit_exact(want_dir: pathlib.Path, got_dir: pathlib.Path) -> None:
  want, got = _raw(want_dir), _raw(got_dir)
  assert sorted(got) == sorted(want)
  for name, (dtype, shape, data) in want.items():
    assert got[name][:2] == (dtype, shape), name
    assert got[name][2] == data, f"{name}: bytes differ"


def _copy_golden(golden_dir: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
  dst.mkdir(parents=True)
  for name in ("config.json", GOLDEN_FILE):
    shutil.copy(golden_dir / name, dst / name)
    os.chmod(dst / name, 0o644)  # the shared fixture is read-only
  return dst


def _edit_golden(golden_dir, dst, edit) -> pathlib.Path:
  """A golden copy whose tensor dict went through `edit(dict) -> None`."""
  _copy_golden(golden_dir, dst)
  tensors = safetensors.numpy.load_file(str(dst / GOLDEN_FILE))
  edit(tensors)
  safetensors.numpy.save_file(tensors, str(dst / GOLDEN_FILE), metadata={"format": "pt"})
  return dst


def _run(*args, check=True) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                        env=env, cwd=ROOT, timeout=300)
  if check:
    assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def _summary(proc: subprocess.CompletedProcess) -> dict:
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _shapes(tree) -> dict:
  return {k: (tuple(np.shape(v)), str(np.dtype(v.dtype))) for k, v in layout.flatten(tree).items()}


# ------------------------------------------------------------------- golden round trips


@pytest.mark.parametrize("scan", [False, True], ids=["unscanned", "scanned"])
def test_golden_round_trip_is_bit_exact(golden_dir, tmp_path, monkeypatch, scan):
  """HF -> bliperax -> Orbax -> bliperax -> HF reproduces every tensor's bytes."""
  # Restore in many small batches, as a full-size model would be.
  monkeypatch.setattr(params_io, "_RESTORE_BATCH_BYTES", 1 << 20)
  params, cfg, config = hf.load_xgenmm(golden_dir, scan_layers=scan)
  assert cfg.numerics.scan_layers == scan
  # The tree is exactly what the model (in that layout) initialises.
  assert _shapes(params) == _shapes(xgenmm.abstract_params(cfg))
  params_io.save_params(tmp_path / "orbax", params, cfg, config)
  back, cfg2, config2 = params_io.load_params(tmp_path / "orbax")
  assert cfg2 == cfg and config2 == config
  assert _shapes(back) == _shapes(params)
  hf.save_xgenmm(back, cfg2, tmp_path / "hf", source_config=config2)
  _assert_bit_exact(golden_dir, tmp_path / "hf")
  written = json.loads((tmp_path / "hf" / "config.json").read_text())
  assert hf_config.xgenmm_from_hf(written) == hf_config.xgenmm_from_hf(config)


def test_params_round_trip_with_an_orbax_numpy_handler_without_the_copy_option(
    golden_dir, tmp_path, monkeypatch):
  """Orbax versions whose NumpyHandler lacks `deepcopy_host_arrays` still save and load."""
  real = params_io.type_handlers.NumpyHandler

  class OlderNumpyHandler(real):
    def __init__(self, **kwargs):
      if "deepcopy_host_arrays" in kwargs:
        raise TypeError("unexpected keyword argument 'deepcopy_host_arrays'")
      super().__init__(**kwargs)

  monkeypatch.setattr(params_io.type_handlers, "NumpyHandler", OlderNumpyHandler)
  params, cfg, config = hf.load_xgenmm(golden_dir)
  params_io.save_params(tmp_path / "orbax", params, cfg, config)
  back, cfg2, _ = params_io.load_params(tmp_path / "orbax")
  assert cfg2 == cfg
  flat, flat_back = jax.tree.leaves(params), jax.tree.leaves(back)
  assert len(flat) == len(flat_back)
  for a, b in zip(flat, flat_back):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bfloat16_round_trip_is_bit_exact(golden_dir, tmp_path):
  """Cast once with --dtype; after that bf16 -> Orbax -> HF changes no bit."""
  _run(CONVERT, "--from=hf", "--to=hf", "--dtype=bfloat16", "--noprogress",
       f"--src={golden_dir}", f"--dst={tmp_path / 'bf16'}")
  cast = CheckpointReader(tmp_path / "bf16")
  gold = CheckpointReader(golden_dir)
  for name in gold.keys():
    assert cast.dtype_name(name) == "BF16", name
    want = np.asarray(gold.get(name)).astype(ml_dtypes.bfloat16)  # round to nearest even
    np.testing.assert_array_equal(cast.get(name).view(np.uint16), want.view(np.uint16))
  assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"

  params, cfg, config = hf.load_xgenmm(tmp_path / "bf16")
  assert {v.dtype for v in jax.tree.leaves(params)} == {np.dtype(ml_dtypes.bfloat16)}
  params_io.save_params(tmp_path / "orbax", params, cfg, config)
  back, cfg, config = params_io.load_params(tmp_path / "orbax")
  assert {v.dtype for v in jax.tree.leaves(back)} == {np.dtype(ml_dtypes.bfloat16)}
  hf.save_xgenmm(back, cfg, tmp_path / "hf", source_config=config)
  _assert_bit_exact(tmp_path / "bf16", tmp_path / "hf")


# ------------------------------------------------------------ the released 4B layout


def test_rules_name_exactly_the_released_tensors(released_dir):
  index = json.loads((released_dir / "model.safetensors.index.json").read_text())
  specs = hf.tensor_specs(presets.xgenmm_4b())
  names = [n for n, _ in specs]
  assert len(names) == len(set(names)) == len(index["weight_map"]) == 718
  assert set(names) == set(index["weight_map"])
  # float32 release: the index's byte total is exactly our shapes' element count × 4.
  assert index["metadata"]["total_size"] == 4 * sum(int(np.prod(s)) for _, s in specs)


def test_released_config_gives_the_4b_preset(released_dir):
  """The released config.json leaves vision/resampler shapes implicit; defaults fill them."""
  config = json.loads((released_dir / "config.json").read_text())
  cfg = hf_config.xgenmm_from_hf(config)
  want = presets.xgenmm_4b()
  assert (cfg.vision, cfg.resampler, cfg.text) == (want.vision, want.resampler, want.text)
  assert cfg.anyres_grids == want.anyres_grids
  assert hf.tensor_specs(cfg) == hf.tensor_specs(want)
  some = dict(hf.tensor_specs(cfg))
  assert some["vlm.lang_model.model.layers.0.self_attn.qkv_proj.weight"] == (9216, 3072)
  assert some["vlm.lang_model.lm_head.bias"] == (32064,)
  assert some["vlm.vision_tokenizer.layers.0.0.to_kv.weight"] == (3072, 1152)
  assert some["vlm.vision_encoder.embeddings.patch_embedding.weight"] == (1152, 3, 14, 14)


def test_4b_parameter_count_abstractly():
  abstract = xgenmm.abstract_params(presets.xgenmm_4b())  # jax.eval_shape inside
  leaves = jax.tree.leaves(layout.flatten(abstract))
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)  # nothing allocated
  assert sum(int(np.prod(x.shape)) for x in leaves) == PARAMS_4B


def test_make_random_checkpoint_released_plan(released_dir, tmp_path):
  """The generator's plan reproduces the release's 4 shards; small presets write and load."""
  spec = importlib.util.spec_from_file_location("make_random_checkpoint", MAKE_RANDOM)
  tool = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tool)
  index = json.loads((released_dir / "model.safetensors.index.json").read_text())
  shards, config = tool.released_plan(hf.tensor_specs(presets.xgenmm_4b()), released_dir)
  assert [f for f, _ in shards] == sorted(set(index["weight_map"].values()))
  assert len(shards) == 4
  assert {n: f for f, group in shards for n, _ in group} == index["weight_map"]
  assert config == (released_dir / "config.json").read_text()  # verbatim
  with pytest.raises(CheckpointError, match="layout=auto"):
    tool.released_plan(hf.tensor_specs(presets.tiny()), released_dir)

  cfg = presets.tiny_gqa()
  specs = hf.tensor_specs(cfg)
  summary = tool.write_random(tmp_path / "rand", tool.auto_plan(specs, 2, 1 << 20),
                              hf_config.xgenmm_to_hf(cfg, "bfloat16"),
                              np.dtype(ml_dtypes.bfloat16), seed=3)
  assert summary["shards"] > 1 and summary["tensors"] == len(specs)
  params, cfg2, _ = hf.load_xgenmm(tmp_path / "rand")
  assert cfg2.text == cfg.text
  assert _shapes(params) == _shapes(xgenmm.abstract_params(cfg.with_numerics(
      param_dtype="bfloat16")))


# --------------------------------------------------------- official loaders, sharding


def test_exports_load_with_official_safetensors(golden_dir, tmp_path):
  params, cfg, config = hf.load_xgenmm(golden_dir)
  hf.save_xgenmm(params, cfg, tmp_path / "f32", source_config=config)
  hf.save_xgenmm(params, cfg, tmp_path / "bf16", source_config=config, dtype="bfloat16")
  gold = safetensors.numpy.load_file(str(golden_dir / GOLDEN_FILE))
  got = safetensors.numpy.load_file(str(tmp_path / "f32" / GOLDEN_FILE))
  assert sorted(got) == sorted(gold)
  for name, value in gold.items():
    assert got[name].dtype == value.dtype and np.array_equal(got[name], value), name
  with safetensors.safe_open(str(tmp_path / "f32" / GOLDEN_FILE), "np") as f:
    assert f.metadata() == {"format": "pt"}  # transformers refuses files without it

  torch = pytest.importorskip("torch")
  st_torch = pytest.importorskip("safetensors.torch")
  loaded = st_torch.load_file(str(tmp_path / "bf16" / GOLDEN_FILE))
  assert sorted(loaded) == sorted(gold)
  for name, value in gold.items():
    assert loaded[name].dtype == torch.bfloat16, name
    want = torch.from_numpy(value).to(torch.bfloat16)  # torch's own rounding
    assert torch.equal(loaded[name].view(torch.int16), want.view(torch.int16)), name


def test_sharded_export_has_a_correct_index(golden_dir, tmp_path):
  params, cfg, config = hf.load_xgenmm(golden_dir)
  limit = 2 << 20
  hf.save_xgenmm(params, cfg, tmp_path / "hf", source_config=config, max_shard_bytes=limit)
  files = sorted(p.name for p in (tmp_path / "hf").glob("*.safetensors"))
  assert len(files) > 2 and GOLDEN_FILE not in files
  assert files == [f"model-{k:05d}-of-{len(files):05d}.safetensors"
                   for k in range(1, len(files) + 1)]
  index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
  gold = safetensors.numpy.load_file(str(golden_dir / GOLDEN_FILE))
  assert sorted(index["weight_map"]) == sorted(gold)
  assert index["metadata"]["total_size"] == sum(v.nbytes for v in gold.values())
  for fname in files:
    with safetensors.safe_open(str(tmp_path / "hf" / fname), "np") as f:
      keys = list(f.keys())
      assert keys and all(index["weight_map"][k] == fname for k in keys)
      if len(keys) > 1:  # only a lone oversized tensor may exceed the limit
        assert sum(f.get_tensor(k).nbytes for k in keys) <= limit
      for k in keys:
        assert np.array_equal(f.get_tensor(k), gold[k]), k
  _assert_bit_exact(golden_dir, tmp_path / "hf")
  again, _, _ = hf.load_xgenmm(tmp_path / "hf")
  for path, value in layout.flatten(params).items():
    assert np.array_equal(layout.flatten(again)[path], value), path


# ------------------------------------------------------------------------ bad inputs


class _Marker:
  """Unpickling this creates a file: proof of whether a pickle was ever loaded."""

  def __init__(self, path):
    self.path = str(path)

  def __reduce__(self):
    return (open, (self.path, "w"))


def _pickle_only(golden_dir, dst):
  dst.mkdir()
  shutil.copy(golden_dir / "config.json", dst / "config.json")
  (dst / "pytorch_model.bin").write_bytes(pickle.dumps(_Marker(dst.parent / "unpickled")))
  return dst


def _truncated(golden_dir, dst):
  _copy_golden(golden_dir, dst)
  data = (dst / GOLDEN_FILE).read_bytes()
  (dst / GOLDEN_FILE).write_bytes(data[:len(data) - 1000])
  return dst


def _corrupt_header(golden_dir, dst):
  _copy_golden(golden_dir, dst)
  with open(dst / GOLDEN_FILE, "r+b") as f:
    f.seek(8)
    f.write(b"\x00garbage{")
  return dst


def _missing_shard(golden_dir, dst):
  params, cfg, config = hf.load_xgenmm(golden_dir)
  hf.save_xgenmm(params, cfg, dst, source_config=config, max_shard_bytes=4 << 20)
  (dst / "model-00002-of-00005.safetensors").unlink()
  return dst


def _no_config(golden_dir, dst):
  _copy_golden(golden_dir, dst)
  (dst / "config.json").unlink()
  return dst


def _bad_config(golden_dir, dst):
  _copy_golden(golden_dir, dst)
  config = json.loads((dst / "config.json").read_text())
  config["text_config"]["rope_scaling"] = {"type": "su", "short_factor": [1.0]}
  (dst / "config.json").write_text(json.dumps(config))
  return dst


_DOWN = "vlm.lang_model.model.layers.1.mlp.down_proj.weight"
_LATENTS = "vlm.vision_tokenizer.latents"
_BIAS = "vlm.lang_model.lm_head.bias"
_EMBED = "vlm.lang_model.model.embed_tokens.weight"
_HEAD = "vlm.lang_model.lm_head.weight"


def _extra_row(name):
  """An edit giving tensor `name` one more vocabulary row (its first axis)."""
  return lambda t: t.update({name: np.concatenate([t[name], t[name][:1]])})


def _extra_row_case(name, width=", 64"):
  """A BAD_INPUTS entry: `name` has 32065 rows where the other vocabulary tensors have
  32064; the error must blame `name`, not a tensor checked against it."""
  shape = rf"\[32065{width}\], expected \[32064{width}\]"
  return (lambda g, d: _edit_golden(g, d, _extra_row(name)),
          rf"model\.safetensors: tensor '{name}' has shape {shape}")


BAD_INPUTS = {
    "missing_tensor": (lambda g, d: _edit_golden(g, d, lambda t: t.pop(_DOWN)),
                       rf"missing tensor.*{_DOWN}"),
    "unexpected_tensor": (lambda g, d: _edit_golden(
        g, d, lambda t: t.update({"vlm.extra.weight": np.ones(3, np.float32)})),
                          r"unexpected tensor.*vlm\.extra\.weight"),
    "misshaped_tensor": (lambda g, d: _edit_golden(
        g, d, lambda t: t.update({_LATENTS: t[_LATENTS][:-1]})),
                         rf"model\.safetensors: tensor '{_LATENTS}' has shape \[15, 48\], "
                         r"expected \[16, 48\]"),
    "int_tensor": (lambda g, d: _edit_golden(
        g, d, lambda t: t.update({_BIAS: t[_BIAS].astype(np.int32)})),
                   rf"model\.safetensors: tensor '{_BIAS}' has dtype I32"),
    "pickle_only": (_pickle_only, r"only pickle checkpoint files \(pytorch_model\.bin\)"),
    "missing_config": (_no_config, r"config\.json: missing"),
    "bad_config": (_bad_config, r"config\.json: rope_scaling"),
    "truncated_file": (_truncated, r"model\.safetensors: file truncated"),
    "corrupt_header": (_corrupt_header, r"model\.safetensors: not a readable safetensors"),
    "missing_shard": (_missing_shard,
                      r"index\.json: shard model-00002-of-00005\.safetensors .* is missing"),
    "extra_vocab_row_embedding": _extra_row_case(_EMBED),
    "extra_vocab_row_head": _extra_row_case(_HEAD),
    "extra_vocab_row_head_bias": _extra_row_case(_BIAS, width=""),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_a_clear_error(golden_dir, tmp_path, case):
  make, pattern = BAD_INPUTS[case]
  src = make(golden_dir, tmp_path / "src")
  with pytest.raises(CheckpointError, match=pattern) as err:
    hf.load_xgenmm(src)
  assert str(src) in str(err.value)  # every message names the file (or its directory)
  assert not (tmp_path / "unpickled").exists()


def test_pickle_fixture_would_run_code(tmp_path):
  """Guards the test above: its pickle really does act when loaded."""
  pickle.loads(pickle.dumps(_Marker(tmp_path / "unpickled")))
  assert (tmp_path / "unpickled").exists()


def test_cli_bad_input_is_one_line_and_nonzero(golden_dir, tmp_path):
  src = BAD_INPUTS["missing_tensor"][0](golden_dir, tmp_path / "src")
  proc = _run(CONVERT, "--from=hf", f"--src={src}", f"--dst={tmp_path / 'out'}", check=False)
  assert proc.returncode == 1
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert lines[-1].startswith("error: ") and _DOWN in lines[-1]
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "out").exists()


def test_cli_blames_the_embedding_with_an_extra_vocab_row(golden_dir, tmp_path):
  """The vocabulary size is read from the checkpoint; a wrong embedding must not make the
  (correct) head look wrong. One line with tensor, file and both shapes; no output."""
  src = _edit_golden(golden_dir, tmp_path / "src", _extra_row(_EMBED))
  out = tmp_path / "out"
  proc = _run(CONVERT, "--from=hf", f"--src={src}", f"--dst={out}", "--noprogress",
              check=False)
  assert proc.returncode == 1
  assert "Traceback" not in proc.stderr
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert lines == [f"error: {src / GOLDEN_FILE}: tensor '{_EMBED}' has shape [32065, 64], "
                   "expected [32064, 64] for this config"], proc.stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # nothing at or beside out


_SIGLIP_CONF = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                    num_attention_heads=4, image_size=28, patch_size=14)
_PHI3_CONF = dict(vocab_size=32064, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)


def _write_backbones(root, edit_phi3=lambda t: None, phi3_conf=_PHI3_CONF):
  """Tiny SigLIP and Phi-3 directories of zeros, named and shaped as the rules expect
  (no transformers needed); `edit_phi3` edits the Phi-3 tensor dict before saving."""
  vision, text = hf_config.vision_from_hf(_SIGLIP_CONF), hf_config.text_from_hf(_PHI3_CONF)
  base = presets.tiny()
  cfg = base.replace(vision=vision, text=text, resampler=dataclasses.replace(
      base.resampler, width=vision.width, out_width=text.width))
  shapes = {k: v.shape for k, v in layout.flatten(xgenmm.abstract_params(cfg)).items()}
  dirs = []
  for name, rules, conf, edit in (
      ("siglip", mapping.vision_rules(cfg, prefix=""), _SIGLIP_CONF, lambda t: None),
      ("phi3", mapping.lm_rules(cfg, prefix="", decoupled=False, head_bias=False), phi3_conf,
       edit_phi3)):
    tensors = {r.hf: np.zeros(mapping.hf_shape(r, [shapes[p] for p in r.paths]), np.float32)
               for r in rules}
    edit(tensors)
    directory = root / name
    directory.mkdir(parents=True)
    safetensors.numpy.save_file(tensors, str(directory / GOLDEN_FILE), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(conf))
    dirs.append(directory)
  return dirs


def test_backbones_blame_the_embedding_with_an_extra_vocab_row(tmp_path):
  """Phi-3 has no head bias, so embedding and head tie; config.json's vocab_size decides."""
  siglip, phi3 = _write_backbones(tmp_path / "ok")  # the helper itself is right
  _, cfg, _ = hf.load_backbones(siglip, phi3, jax.random.PRNGKey(0))
  assert cfg.text.vocab_rows == 32064

  edit = _extra_row("model.embed_tokens.weight")
  siglip, phi3 = _write_backbones(tmp_path / "embed", edit)
  with pytest.raises(CheckpointError) as err:
    hf.load_backbones(siglip, phi3, jax.random.PRNGKey(0))
  assert str(err.value) == (f"{phi3 / GOLDEN_FILE}: tensor 'model.embed_tokens.weight' has "
                            "shape [32065, 32], expected [32064, 32] for this config")

  # Nothing says which of two disagreeing tensors is right: both are named.
  siglip, phi3 = _write_backbones(tmp_path / "tie", edit, dict(_PHI3_CONF, vocab_size=40000))
  with pytest.raises(CheckpointError,
                     match=r"'model\.embed_tokens\.weight' has 32065 rows but 'lm_head\.weight' "
                           r"has 32064.*implies 40000") as err:
    hf.load_backbones(siglip, phi3, jax.random.PRNGKey(0))
  assert str(phi3 / GOLDEN_FILE) in str(err.value) and "\n" not in str(err.value)


def test_export_blames_a_misshaped_parameter(golden_dir, tmp_path):
  """bliperax -> HF checks the params against the config, naming the parameter and its
  tensor, instead of writing a checkpoint that a later load would blame elsewhere."""
  params, cfg, config = hf.load_xgenmm(golden_dir)
  embed = params["lm"]["embed"]["embedding"]
  params["lm"]["embed"]["embedding"] = np.concatenate([embed, embed[:1]])
  with pytest.raises(CheckpointError) as err:
    hf.save_xgenmm(params, cfg, tmp_path / "hf", source_config=config)
  assert str(err.value) == (f"parameter 'lm/embed/embedding' (tensor '{_EMBED}') has shape "
                            "[32065, 64], expected [32064, 64] for this config")
  assert list(tmp_path.iterdir()) == []


def test_failed_exports_leave_no_destination(golden_dir, tmp_path, monkeypatch):
  params, cfg, config = hf.load_xgenmm(golden_dir)
  real = mapping.to_hf
  calls = []

  def flaky(rule, arrays):  # fails mid-way, after some shards are complete
    calls.append(rule.hf)
    if len(calls) == 60:
      raise RuntimeError("disk on fire")
    return real(rule, arrays)

  monkeypatch.setattr(mapping, "to_hf", flaky)
  with pytest.raises(RuntimeError, match="disk on fire"):
    hf.save_xgenmm(params, cfg, tmp_path / "hf", source_config=config,
                   max_shard_bytes=1 << 20)
  assert list(tmp_path.iterdir()) == []  # no destination, no temporary directory

  (tmp_path / "hf").mkdir()
  (tmp_path / "hf" / "keep.txt").write_text("old")
  calls.clear()
  with pytest.raises(RuntimeError, match="disk on fire"):
    hf.save_xgenmm(params, cfg, tmp_path / "hf", source_config=config, overwrite=True)
  assert [p.name for p in tmp_path.iterdir()] == ["hf"]
  assert (tmp_path / "hf" / "keep.txt").read_text() == "old"  # old checkpoint untouched
  monkeypatch.undo()

  broken = dict(params, vision={**params["vision"], "bad": object()})  # Orbax cannot save it
  with pytest.raises(Exception):
    params_io.save_params(tmp_path / "orbax", broken, cfg, config)
  assert [p.name for p in tmp_path.iterdir()] == ["hf"]
  with pytest.raises(CheckpointError, match="exists and is not empty"):
    params_io.save_params(tmp_path / "hf", params, cfg, config)


# ----------------------------------------------------------------------------- the CLI


def test_cli_round_trip(golden_dir, tmp_path):
  proc = _run(CONVERT, "--from=hf", "--to=orbax", "--scan_layers", f"--src={golden_dir}",
              f"--dst={tmp_path / 'orbax'}")
  summary = _summary(proc)
  gold = safetensors.numpy.load_file(str(golden_dir / GOLDEN_FILE))
  assert summary["tensors"] == len(gold) and summary["scan_layers"] is True
  assert summary["parameters"] == sum(v.size for v in gold.values())
  assert summary["bytes"] == sum(v.nbytes for v in gold.values())
  assert summary["dst"] == str(tmp_path / "orbax") and summary["seconds"] >= 0
  _, cfg, _ = params_io.load_params(tmp_path / "orbax")
  assert cfg.numerics.scan_layers
  proc = _run(CONVERT, "--from=orbax", "--to=hf", "--max_shard_gb=0.004",
              f"--src={tmp_path / 'orbax'}", f"--dst={tmp_path / 'hf'}")
  assert _summary(proc)["tensors"] == len(gold)
  assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
  _assert_bit_exact(golden_dir, tmp_path / "hf")


def test_cli_help():
  proc = _run(CONVERT, "--help", check=False)  # absl exits 1 after printing help
  assert "Traceback" not in proc.stderr
  for flag in ("--from", "--to", "--src", "--dst", "--siglip", "--phi3", "--dtype",
               "--[no]scan_layers", "--[no]overwrite", "--seed", "--max_shard_gb"):
    assert flag in proc.stdout, flag
  assert "hf_backbones" in proc.stdout


def _redraw(model, seed):
  """Replaces every weight by noise so that a mis-mapped or dropped tensor shows."""
  import torch
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def test_hf_backbones(tmp_path):
  """A fresh xGen-MM from tiny SigLIP + Phi-3: towers copied exactly, new pieces present."""
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("torch")
  siglip = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
      hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
      image_size=28, patch_size=14))
  _redraw(siglip, 1)
  siglip.save_pretrained(tmp_path / "siglip")
  phi3 = transformers.Phi3ForCausalLM(transformers.Phi3Config(
      vocab_size=32064, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
      pad_token_id=32000, bos_token_id=1, eos_token_id=32000))
  _redraw(phi3, 2)
  phi3.save_pretrained(tmp_path / "phi3")

  proc = _run(CONVERT, "--from=hf_backbones", f"--siglip={tmp_path / 'siglip'}",
              f"--phi3={tmp_path / 'phi3'}", f"--dst={tmp_path / 'out'}", "--seed=7")
  assert _summary(proc)["dtype"] == "float32"
  params, cfg, hf_conf = params_io.load_params(tmp_path / "out")
  flat = layout.flatten(params)
  assert _shapes(params) == _shapes(xgenmm.abstract_params(cfg))
  # Like the release, the written config gives the logit width as vocab_size; the
  # table rows come from the checkpoint's embedding.
  assert hf_config.xgenmm_from_hf(hf_conf, cfg.text.vocab_rows).text == cfg.text

  shapes = {k: v.shape for k, v in flat.items()}
  with safetensors.safe_open(str(tmp_path / "siglip" / GOLDEN_FILE), "np") as f:
    # transformers 5 saves a SiglipVisionModel without the `vision_model.` prefix of 4.x.
    prefix = "vision_model." if "vision_model.head.probe" in f.keys() else ""
  sources = [(tmp_path / "siglip", mapping.vision_rules(cfg, prefix=prefix)),
             (tmp_path / "phi3", mapping.lm_rules(cfg, prefix="", decoupled=False,
                                                  head_bias=False))]
  copied = set()
  for directory, rules in sources:
    tensors = safetensors.numpy.load_file(str(directory / GOLDEN_FILE))
    for rule in rules:
      want = mapping.to_params(rule, tensors[rule.hf], [shapes[p] for p in rule.paths])
      for path, value in zip(rule.paths, want):
        assert flat[path].dtype == np.float32
        assert np.array_equal(flat[path], value), f"{path} != {rule.hf}"
        copied.add(path)

  fresh = set(flat) - copied
  assert {p.split("/")[0] for p in fresh} == {"resampler", "lm"}
  assert {p for p in fresh if p.startswith("lm/")} == {
      "lm/embed/additional_embedding", "lm/head/additional_kernel",
      "lm/head/additional_bias", "lm/head/bias"}
  assert flat["lm/embed/additional_embedding"].shape == (3, 32)
  assert flat["lm/head/additional_kernel"].shape == (32, 3)
  assert flat["lm/head/bias"].shape == (32064,) and not flat["lm/head/bias"].any()
  assert flat["resampler/latents"].shape == (cfg.resampler.num_latents, 32)
  assert flat["resampler/projection/kernel"].shape == (32, 32)
  assert np.std(flat["resampler/latents"]) > 0.5  # N(0, 1) latents, really initialised


def test_text_config_reads_transformers5_rope_parameters():
  """transformers 5 nests rope_theta under rope_parameters; a lost theta changes logits."""
  t = hf_config.text_from_hf({"hidden_size": 64, "num_attention_heads": 4,
                        "rope_parameters": {"rope_theta": 500.0, "rope_type": "default"}})
  assert t.rope_theta == 500.0
  assert hf_config.text_from_hf({"rope_theta": 250.0}).rope_theta == 250.0
  with pytest.raises(ValueError, match="not supported"):
    hf_config.text_from_hf({"rope_parameters": {"rope_theta": 1e4, "rope_type": "longrope"}})
