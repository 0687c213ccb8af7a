"""Start-up work the process does once: the model's init traced once per setup, and
the Python collector's thresholds (bliperax/python_gc.py)."""
import gc
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from bliperax import cli
from bliperax import python_gc
from bliperax import sharding
from bliperax.models import xgenmm
from bliperax.train import setup as setup_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def traces(monkeypatch):
  """A list that grows by one each time the model's init is traced: the setup's
  `model_params`, or `xgenmm.abstract_params` (which LoRA's plan used to call)."""
  calls = []
  real_params, real_abstract = setup_lib.model_params, xgenmm.abstract_params

  def counted(model, dummy, rng):
    calls.append("model_params")
    return real_params(model, dummy, rng)

  def counted_abstract(cfg):
    calls.append("abstract_params")
    return real_abstract(cfg)

  monkeypatch.setattr(setup_lib, "model_params", counted)
  monkeypatch.setattr(xgenmm, "abstract_params", counted_abstract)
  return calls


def _tiny_setup(kind: str) -> setup_lib.TrainSetup:
  """The tiny model's setup for a plain (sft), LoRA (bf16 base) or DPO state."""
  cfg = cli.load_config(str(ROOT / "experiments" / "tiny.py"))
  cfg.update_from_flattened_dict({"train.seq_len": 16, "train.global_batch": 2})
  if kind == "lora":
    cfg.lora.enabled = True
    cfg.lora.base_dtype = "bfloat16"
  if kind == "dpo":
    cfg.dpo.enabled = True
  return setup_lib.TrainSetup.build(cfg, sharding.make_mesh(cfg.mesh))


@pytest.mark.parametrize("kind", ["sft", "lora", "dpo"])
def test_the_models_init_is_traced_once_for_build_and_init(traces, kind):
  """Build (optimizer tree, state shapes) and init_state's lowering trace the model's
  init once between them, for every kind of state."""
  setup = _tiny_setup(kind)
  state_type = {"sft": "TrainState", "lora": "LoraTrainState", "dpo": "DpoTrainState"}[kind]
  assert type(setup.abstract_state).__name__ == state_type
  with setup.context():  # lowering is where the trace happens
    jax.jit(setup.init_fn, out_shardings=setup.state_shardings).lower(jax.random.PRNGKey(0))
  assert traces == ["model_params"]


@pytest.fixture
def thresholds():
  """Restores the collector's thresholds and state after the test."""
  saved, enabled = gc.get_threshold(), gc.isenabled()
  yield
  gc.set_threshold(*saved)
  (gc.enable if enabled else gc.disable)()


def test_collect_less_often_raises_cpythons_defaults(thresholds, monkeypatch):
  monkeypatch.delenv(python_gc.OPT_OUT, raising=False)
  gc.set_threshold(*python_gc.CPYTHON_DEFAULT)
  assert python_gc.collect_less_often()
  assert gc.get_threshold() == (python_gc.YOUNG, python_gc.MIDDLE, python_gc.FULL)
  assert python_gc.collect_less_often()  # idempotent


def test_collect_less_often_leaves_other_choices_alone(thresholds, monkeypatch):
  monkeypatch.setenv(python_gc.OPT_OUT, "default")
  gc.set_threshold(*python_gc.CPYTHON_DEFAULT)
  assert not python_gc.collect_less_often()
  assert gc.get_threshold() == python_gc.CPYTHON_DEFAULT
  monkeypatch.delenv(python_gc.OPT_OUT)
  gc.set_threshold(5000, 10, 10)  # the program's own thresholds
  assert not python_gc.collect_less_often()
  assert gc.get_threshold() == (5000, 10, 10)
  gc.set_threshold(*python_gc.CPYTHON_DEFAULT)
  gc.disable()
  assert not python_gc.collect_less_often()
  assert gc.get_threshold() == python_gc.CPYTHON_DEFAULT and not gc.isenabled()


def test_every_entry_point_gets_the_thresholds():
  """bliperax.cli, which every entry point imports first, applies them."""
  env = {k: v for k, v in os.environ.items() if k != python_gc.OPT_OUT}
  out = subprocess.run([sys.executable, "-c", "import bliperax.cli, gc; print(gc.get_threshold())"],
                       env=env, capture_output=True, text=True, check=True).stdout
  assert out.strip() == str((python_gc.YOUNG, python_gc.MIDDLE, python_gc.FULL))


@pytest.mark.parametrize("kind", ["sft", "lora", "dpo"])
def test_state_from_params_is_the_drawn_state_with_the_params_replaced(traces, kind):
  """`state_from_params` (what `model.init_from` runs) makes the state `init_state`
  makes with the given parameters put in its place (and DPO's reference; LoRA's base
  cast to bf16, its adapters drawn from the seed), bit for bit, without tracing the
  model's random init again; and `init_state` draws what the model's own init does."""
  setup = _tiny_setup(kind)
  cfg = setup.cfg
  rng = np.random.default_rng(7)
  given = jax.tree.map(lambda p: rng.standard_normal(p.shape).astype(np.float32),
                       sharding.strip_boxes(setup.boxed_params))
  with setup.context():
    got = setup.state_from_params(given, cfg.seed)
    assert traces == ["model_params"]  # the build's: the random init was not traced again
    drawn = setup.init_state(cfg.seed)
  cast = lambda tree, like: jax.tree.map(lambda v, l: np.asarray(v).astype(l.dtype), tree, like)
  expected = drawn.replace(params=cast(given, drawn.params))
  if kind == "dpo":
    expected = expected.replace(reference=cast(given, drawn.reference))
  got_leaves, got_tree = jax.tree.flatten(got)
  want_leaves, want_tree = jax.tree.flatten(expected)
  assert got_tree == want_tree
  for g, w in zip(got_leaves, want_leaves):
    assert g.dtype == w.dtype and g.shape == w.shape
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
  if kind == "lora":
    assert jax.tree.leaves(got.params)[0].dtype == np.dtype("bfloat16")
  if kind == "dpo":  # the step donates the state: params and reference own their buffers
    assert not {p.unsafe_buffer_pointer() for p in jax.tree.leaves(got.params)} & {
        r.unsafe_buffer_pointer() for r in jax.tree.leaves(got.reference)}
  if kind == "sft":  # and the draw through the setup's jitted init is the model's own
    own = sharding.strip_boxes(xgenmm.init_params(setup.model_cfg, jax.random.PRNGKey(cfg.seed)))
    for d, o in zip(jax.tree.leaves(drawn.params), jax.tree.leaves(own), strict=True):
      np.testing.assert_array_equal(np.asarray(d), np.asarray(o))
  # The given parameters are not the drawn ones: the test can tell them apart.
  assert any(np.any(np.asarray(a) != np.asarray(b)) for a, b in
             zip(jax.tree.leaves(got.params), jax.tree.leaves(drawn.params)))
