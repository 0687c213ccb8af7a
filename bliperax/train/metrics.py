"""Training metrics to the console, TensorBoard and `workdir/metrics.jsonl`.

metrics.jsonl holds one JSON object per logged step (at least `step` and `loss`).
After a restore from step s, lines past s (logged by the interrupted run after its
last checkpoint) are dropped, so the file always equals an uninterrupted run's.

In a bucket (`gs://` workdir), which cannot append to an object, the writer keeps
the lines and replaces the object whole at every write: one upload per logged
step, and the object always holds every line logged so far.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Mapping, Optional

from bliperax import paths

try:
  import tensorboardX
except ImportError:  # optional: console + JSONL still work
  tensorboardX = None


class MetricWriter:

  def __init__(self, workdir: os.PathLike, enabled: bool = True,
               resume_step: Optional[int] = None, tensorboard: bool = True):
    self.enabled = enabled
    self.path = paths.resolve(workdir) / "metrics.jsonl"
    self._remote = paths.is_remote(self.path)
    self._lines = []  # every line so far, for a bucket's whole-object rewrites
    self._tb = None
    if not enabled:
      return
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._truncate_after(resume_step if resume_step is not None else 0)
    if tensorboard and tensorboardX is not None:
      self._tb = tensorboardX.SummaryWriter(str(self.path.parent / "tensorboard"))

  def _truncate_after(self, step: int) -> None:
    """Keeps only lines with step <= `step` (atomic rewrite)."""
    if not self.path.exists():
      return
    kept = []
    for line in self.path.read_text().splitlines():
      try:
        if json.loads(line)["step"] <= step:
          kept.append(line)
      except (json.JSONDecodeError, KeyError, TypeError):
        continue  # a line cut short by a kill
    self._lines = kept
    paths.write_text_atomic(self.path, "".join(l + "\n" for l in kept))

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
    line = json.dumps(record)
    if self._remote:
      self._lines.append(line)
      self.path.write_text("".join(l + "\n" for l in self._lines))
    else:
      with open(self.path, "a") as f:
        f.write(line + "\n")
    if self._tb is not None:
      for k, v in record.items():
        if k != "step" and isinstance(v, (int, float)):
          self._tb.add_scalar(k, v, step)
      self._tb.flush()
    shown = " ".join(f"{k}={_fmt(v)}" for k, v in record.items() if k != "step")
    logging.info("step %d %s", step, shown)
    print(f"step {step:>6d} | {shown}", flush=True)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _plain(v):
  try:
    return v.item()
  except AttributeError:
    return v


def _fmt(v) -> str:
  if isinstance(v, float):
    return f"{v:.4g}"
  return str(v)
