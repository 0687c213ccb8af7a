"""Logical-axis rules -> mesh specs, adapted to shapes that the mesh does not divide."""
import pytest
from jax.sharding import PartitionSpec as P

from bliperax import sharding


class _FakeMesh:
  """Only `.shape` is read by fit_spec: lets us reason about a 256-chip pod on CPU."""
  shape = {"data": 1, "fsdp": 256, "tensor": 2}


@pytest.mark.parametrize("spec,shape,want", [
    # divisible: unchanged
    (P("fsdp", "tensor"), (3072, 8192), P("fsdp", "tensor")),
    (P(("data", "fsdp"), None), (512, 2048), P(("data", "fsdp"))),
    # SigLIP width 1152 does not divide by 256: fsdp moves to a dimension it divides
    (P("fsdp", "tensor"), (1152, 4608), P(None, ("tensor", "fsdp"))),
    (P("fsdp", None), (1152, 4608), P(None, "fsdp")),
    # nowhere to go: replicated rather than an invalid sharding
    (P(None, "fsdp"), (128, 1152), P()),
    (P("fsdp", "tensor", None), (1152, 16, 72), P(None, "tensor")),
    (P(), (), P()),
])
def test_fit_spec(spec, shape, want):
  got = sharding.fit_spec(spec, shape, _FakeMesh())
  assert got == want
  for dim, entry in zip(shape, got):  # every sharded dimension divides evenly
    axes = () if entry is None else (entry if isinstance(entry, tuple) else (entry,))
    size = 1
    for a in axes:
      size *= _FakeMesh.shape[a]
    assert dim % size == 0


def test_mesh_shape_fills_minus_one_and_rejects_bad_sizes():
  assert sharding.mesh_shape({"data": 2, "fsdp": -1, "tensor": 2}, 8) == (2, 2, 2)
  assert sharding.mesh_shape({"fsdp": -1}, 8) == (1, 8, 1)
  with pytest.raises(ValueError, match="at most one"):
    sharding.mesh_shape({"data": -1, "fsdp": -1}, 8)
  with pytest.raises(ValueError, match="does not divide"):
    sharding.mesh_shape({"data": 3, "fsdp": -1}, 8)
  with pytest.raises(ValueError, match="needs 4 devices"):
    sharding.mesh_shape({"data": 2, "fsdp": 2}, 8)
