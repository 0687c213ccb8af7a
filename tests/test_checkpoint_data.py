"""Data positions in checkpoints (bliperax/train/checkpoint.py): one file per process.

Each process of a multi-host run reads its own slice of the data, so each must get
back its own iterator state; a checkpoint saved by another number of processes
resumes only when every process saved the same state (the synthetic source's).
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bliperax.train import checkpoint as ckpt_lib


def _saved(tmp_path, data_state):
  ckpt = ckpt_lib.Checkpointer(tmp_path / "checkpoints", async_save=False)
  state = {"w": jnp.arange(4, dtype=jnp.float32)}
  ckpt.save(1, state, data_state)
  ckpt.close()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                         sharding=x.sharding), state)
  return ckpt_lib.Checkpointer(tmp_path / "checkpoints"), abstract


def _as_if_saved_by(tmp_path, states):
  """Replaces step 1's data files by those `len(states)` processes would have written."""
  data = tmp_path / "checkpoints" / "1" / "data"
  for f in data.glob("process_*.json"):
    f.unlink()
  for i, state in enumerate(states):
    (data / f"process_{i}-of-{len(states)}.json").write_text(json.dumps(state))


@pytest.mark.parametrize("data_state", [{"index": 7, "seed": 3}, b"\x00grain-bytes\xff"])
def test_the_data_state_comes_back_exactly(tmp_path, data_state):
  ckpt, abstract = _saved(tmp_path, data_state)
  files = sorted(p.name for p in (tmp_path / "checkpoints" / "1" / "data").glob("*.json"))
  assert files == ["process_0-of-1.json"]  # one file per process
  state, restored = ckpt.restore(1, abstract)
  assert restored == data_state and type(restored) is type(data_state)
  np.testing.assert_array_equal(state["w"], np.arange(4))
  ckpt.close()


def test_other_process_count_resumes_only_identical_states(tmp_path):
  ckpt, abstract = _saved(tmp_path, {"index": 1})
  _as_if_saved_by(tmp_path, [{"index": 9}, {"index": 9}])  # e.g. the synthetic source
  state, restored = ckpt.restore(1, abstract)
  assert restored == {"index": 9}
  np.testing.assert_array_equal(state["w"], np.arange(4))
  _as_if_saved_by(tmp_path, [{"index": 9}, {"index": 11}])  # two slices of a Grain input
  with pytest.raises(ckpt_lib.DataStateMismatch, match=r"saved by \[2\] process.*this run has 1"):
    ckpt.restore(1, abstract)
  ckpt.close()
