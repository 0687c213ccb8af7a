"""Shared pytest fixtures: paths to ../shared, the golden fixture, CPU-only JAX."""
import os
import pathlib

import pytest

# Tests run tiny models on 2 CPU cores, where XLA's compile time dominates: the
# cheaper backend pipeline compiles ~3.5x faster, and XLA's older CPU fusion emitters
# (not the new MLIR ones) halve a train step's compile again (~17 s -> ~8 s of CPU);
# together the default suite took 703 s instead of 829 s on this 2-core host, for
# steps ~10% slower. Set before anything imports jax.
# (Runs whose speed matters, like the full main job, get ORIGINAL_XLA_FLAGS back.)
ORIGINAL_XLA_FLAGS = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = " ".join([
    ORIGINAL_XLA_FLAGS, "--xla_backend_optimization_level=0",
    "--xla_llvm_disable_expensive_passes=true", "--xla_cpu_use_fusion_emitters=false"]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# No persistent compilation cache unless a test asks for one (test_train.py gives its
# subprocesses a fresh one): compile-time tests must compile, and the suite must not
# write into the user's cache.
os.environ.setdefault("BLIPERAX_COMPILATION_CACHE", "0")

# As every entry point (bliperax.cli): tracing allocates millions of short-lived
# objects, and CPython's default collector thresholds rescan them constantly.
from bliperax import python_gc  # pylint: disable=g-import-not-at-top,wrong-import-position

python_gc.collect_less_often()

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
GOLDEN = SHARED / "golden" / "xgenmm_tiny_a"


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: long test, run with --runslow")


def pytest_addoption(parser):
  parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
  if config.getoption("--runslow"):
    return
  skip = pytest.mark.skip(reason="slow: pass --runslow to run")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)


def require(path: pathlib.Path) -> pathlib.Path:
  """Returns `path`; skips the test when it is missing, fails under CI=true."""
  if not path.exists():
    msg = f"missing shared file {path}"
    if os.environ.get("CI", "").lower() == "true":
      pytest.fail(msg + " (CI=true: shared/ must be present)")
    pytest.skip(msg)
  return path


@pytest.fixture
def golden_dir() -> pathlib.Path:
  return require(GOLDEN)


@pytest.fixture
def shared_dir() -> pathlib.Path:
  return require(SHARED)
