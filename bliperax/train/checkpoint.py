"""Orbax checkpoints of the train state and the data-iterator state, under workdir/checkpoints.

Each step directory `checkpoints/<step>/` holds two items: `state` (the sharded
TrainState) and `data` (the iterator state as JSON). Saves are asynchronous; Orbax
writes into a temporary directory and renames it when complete, so a crash mid-save
leaves the previous checkpoint as the latest valid one (on a bucket, where nothing
renames, Orbax marks a finished step with a commit file instead). Restores take an abstract
state with target shardings, so a run can resume on a different mesh.

A save still in flight when the run stops is finished by `close()` (the trainer's
exit, preempted or not, waits for it); one cut short by a kill stays a temporary
directory `<step>.orbax-checkpoint-tmp`, which is never taken for a step (the previous
checkpoint stays the latest) and which Orbax replaces if that step is saved again.
"""
from __future__ import annotations

import base64
import copy
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


class _Manager(ocp.CheckpointManager):
  """Orbax's manager, minus its own reports to JAX's preemption sync manager.

  That manager keeps one "last step passed" per process, overwritten by every call of
  `reached_preemption_sync_point`, and agrees on a stop step from these values
  (bliperax/train/preemption.py). Orbax calls it from `save` and, on the primary
  process, from the background thread that finishes a save, with the saved step:
  a step the training loop may have passed long ago, which would make the agreed step
  one this process has passed too. Only the training loop reports steps.
  """

  def reached_preemption(self, step: int) -> bool:
    del step
    return False


class Checkpointer:

  def __init__(self, directory: os.PathLike, keep: int = 3, async_save: bool = True):
    self.directory = paths.resolve(directory)  # local or gs://
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = _Manager(self.directory, options=options, item_names=("state", "data"))

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: Any, force: bool = False) -> bool:
    """Starts writing `step` (asynchronously); `data_state` is copied now.

    Orbax serialises the JSON item in the background: without the copy, an iterator
    that updates its state object in place would record a later position than `step`'s.
    """
    data_state = copy.deepcopy(_encode(data_state))
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
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
