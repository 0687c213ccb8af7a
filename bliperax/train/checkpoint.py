"""Orbax checkpoints of the train state and the data-iterator state, under workdir/checkpoints.

Each step directory `checkpoints/<step>/` holds two items: `state` (the sharded
TrainState) and `data`, the iterator state of every process as JSON,
`data/process_<i>-of-<n>.json` (Grain's Orbax handler): each process of a pod reads
its own slice of the data, so each resumes its own position. Saves are asynchronous; Orbax
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
import json
import os
import re
from typing import Any, Optional, Tuple

import grain
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


class _DataState:
  """One process's iterator state as Grain's checkpoint handler takes it: an object
  with `get_state() -> bytes` and `set_state(bytes)` (JSON text)."""

  def __init__(self, state: Any = None):
    self.state = state

  def get_state(self) -> bytes:
    return json.dumps(_encode(self.state)).encode()

  def set_state(self, raw: bytes) -> None:
    self.state = _decode(json.loads(raw))

  def start_prefetch(self) -> None:  # the handler calls it after a restore
    pass


class DataStateMismatch(ValueError):
  """A checkpoint's data positions were saved by another number of processes."""


_PROCESS_FILE = re.compile(r"process_(\d+)-of-(\d+)\.json$")


def _saved_by_other_count(data_dir: Any, step: int) -> Optional[Any]:
  """The data state to restore when `data_dir` was written by another number of
  processes than this run's: the one state, if every process saved the same (the
  synthetic source's); None when the counts match (Grain's handler reads the file).

  Raises:
    DataStateMismatch: the processes' states differ, so no process of this run can
      know where its slice of the data stopped.
  """
  count = jax.process_count()
  files = {m.groups(): f for f in data_dir.iterdir() if (m := _PROCESS_FILE.match(f.name))}
  saved = {int(n) for _, n in files}
  if not files or saved == {count}:
    return None
  states = {f.read_text() for f in files.values()}
  if len(states) == 1:
    return _decode(json.loads(states.pop()))
  raise DataStateMismatch(
      f"checkpoint step {step} in {data_dir.parent.parent}: its data positions were saved "
      f"by {sorted(saved)} process(es), each reading its own slice of the data; this run "
      f"has {count}, so they cannot be restored exactly. Resume with {sorted(saved)[0]} "
      "processes, or start a new run from its parameters (python -m bliperax.export, "
      "then model.init_from).")


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
    data = _DataState(copy.deepcopy(data_state))
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data)),
        force=force)

  def restore(self, step: int, abstract_state: Any) -> Tuple[Any, Any]:
    """Restores into `abstract_state` (ShapeDtypeStructs carrying target shardings) and
    this process's data position.

    Raises:
      DataStateMismatch: the processes that saved `step` read different slices of the
        data and this run has another number of processes.
    """
    other = _saved_by_other_count(self.directory / str(step) / "data", step)
    if other is not None:  # every process saved the same state: any count may resume
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state)))
      return restored.state, other
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(_DataState())))
    return restored.state, restored.data.state

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
