"""Orbax checkpoints of the train state and the data-iterator state, under workdir/checkpoints.

Each step directory `checkpoints/<step>/` holds two items: `state` (the sharded
TrainState) and `data` (the iterator state as JSON). Saves are asynchronous; Orbax
writes into a temporary directory and renames it when complete, so a crash mid-save
leaves the previous checkpoint as the latest valid one (on a bucket, where nothing
renames, Orbax marks a finished step with a commit file instead). Restores take an abstract
state with target shardings, so a run can resume on a different mesh.
"""
from __future__ import annotations

import base64
import os
from typing import Any, Optional, Tuple

import jax
import orbax.checkpoint as ocp

from bliperax import paths


def _encode(data_state: Any) -> Any:
  """Grain iterator states may be bytes; JSON needs text."""
  if isinstance(data_state, bytes):
    return {"__bytes__": base64.b64encode(data_state).decode()}
  return data_state


def _decode(data_state: Any) -> Any:
  if isinstance(data_state, dict) and set(data_state) == {"__bytes__"}:
    return base64.b64decode(data_state["__bytes__"])
  return data_state


class Checkpointer:

  def __init__(self, directory: os.PathLike, keep: int = 3, async_save: bool = True):
    self.directory = paths.resolve(directory)  # local or gs://
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data"))

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: Any, force: bool = False) -> bool:
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(_encode(data_state))),
        force=force)

  def restore(self, step: int, abstract_state: Any) -> Tuple[Any, Any]:
    """Restores into `abstract_state` (ShapeDtypeStructs carrying target shardings)."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored.state, _decode(restored.data)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def has_checkpoint(directory: os.PathLike) -> bool:
  """Whether `directory` holds a finished step (Orbax renames `<step>` into place last)."""
  directory = paths.resolve(directory)
  return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
