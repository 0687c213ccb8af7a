"""SIGTERM (a preemption notice) -> the one step at which every process saves and stops.

The training loop asks `Preemption.reached(step)` after every step, on every process,
at the same point of the step; when it says True the loop saves `step` (if it was not
a regular checkpoint step already) and leaves, so all processes exit together having
saved the same step, and a restart resumes exactly there.

One process: a Python SIGTERM handler sets a flag; the first step to finish after it
is the one saved.

Several processes (jax.distributed): JAX's preemption sync manager decides, no Python
handler is installed. `jax.distributed.initialize` starts it (the preemption service
is on by default, `jax_enable_preemption_service`) and its C++ notifier installs its
own SIGTERM handler, which a Python `signal.signal(SIGTERM, ...)` installed later
would replace (Python's handlers are process-wide C handlers too) and so silence:
the notice would never leave this process. On SIGTERM (to any one process) the
notifier, polling once a second, posts the notice to the coordination service; every
process then reports the last step it passed to `reached_preemption_sync_point`, and,
after a barrier, takes the largest reported step + 1 as the sync point. Reporting
holds a lock that `reached_preemption_sync_point` also takes, so no process moves on
while the point is being chosen, and every process, calling with every step, reaches
that point exactly once: all return True at the same step. The loop must be the only
caller: each call overwrites the process's reported step, and Orbax's own calls
(with the step a save is for, also from its background thread) are switched off in
bliperax/train/checkpoint.py.

The sync manager's counter starts at 0 and means "the last step passed": a resumed run
reports its restored step as soon as the trainer knows it (`Preemption(start)`), so a
notice during the restore stops the run after its first step. A notice that arrives
before that (while the processes set up) is counted from step 0 and, in a resumed
run, never reached: that run goes on until it ends or is killed, and restarts from
its latest checkpoint. With the preemption service turned off, SIGTERM keeps its
default action (the process dies; the latest complete checkpoint stays the latest).
"""
from __future__ import annotations

import logging
import signal

import jax
from jax.experimental import multihost_utils


class Preemption:
  """`reached(step)`: whether every process stops at `step` (save it, then leave the loop).

  Construct it as soon as the step the run starts from is known (all processes start
  from the same checkpoint); use it as a context manager around the loop, which
  installs the one-process SIGTERM handler for that time only.
  """

  def __init__(self, start_step: int):
    # "local": this process's SIGTERM flag; "agreed": JAX's sync manager; "off": neither.
    self.mode = "local" if jax.process_count() == 1 else "agreed"
    self.requested = False  # "local": SIGTERM seen
    self._installed = False
    self._previous = None
    if self.mode == "agreed":
      try:  # reports the restored step: a notice from now on is counted from it
        multihost_utils.reached_preemption_sync_point(start_step)
      except RuntimeError as e:  # jax_enable_preemption_service=False
        logging.warning("%s: SIGTERM will end this process where it is, without a "
                        "checkpoint", e)
        self.mode = "off"

  def __enter__(self) -> "Preemption":
    if self.mode == "local":
      self._previous = signal.signal(signal.SIGTERM, self._handle)
      self._installed = True
    return self

  def __exit__(self, *exc) -> None:
    if self._installed:  # None: the previous handler was not Python's; default then
      signal.signal(signal.SIGTERM, self._previous or signal.SIG_DFL)
      self._installed = False

  def _handle(self, signum, frame) -> None:
    del signum, frame
    logging.warning("SIGTERM: will checkpoint at the current step and stop")
    self.requested = True

  def reached(self, step: int) -> bool:
    """Called once per step, after it, on every process; True: save `step` and stop."""
    if self.mode == "agreed":
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested
