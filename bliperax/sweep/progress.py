"""A live line per member: stage, step, loss, ETA; read from the trainer's metrics.jsonl.

The trainer writes one JSON record per logged step to `<stage workdir>/metrics.jsonl`
(bliperax/train/metrics.py: step, loss, step_time_s, ...); reading that file rather
than the stage's stdout works for any stage output format, survives a resume (the
trainer drops lines past its checkpoint) and reads the same whether the stage runs
here or was launched elsewhere.

On a terminal the block of lines is redrawn in place every second; elsewhere (a log
file, CI) a member's line is printed when its stage changes and otherwise at most
every `every` seconds, so a long sweep's log stays readable.
"""
from __future__ import annotations

import dataclasses
import sys
import threading
import time
from typing import Dict, List, Optional, TextIO

from bliperax.sweep import files


@dataclasses.dataclass
class MemberState:
  """What a member's supervising thread reports; the display only reads it."""
  name: str
  status: str = "waiting"  # waiting, running, done, failed, skipped, interrupted
  stage: str = ""
  stage_index: int = 0
  stages: int = 0
  stage_kind: str = ""
  stage_started: float = 0.0
  metrics_path: Optional[str] = None  # the current train stage's metrics.jsonl
  total_steps: Optional[int] = None
  note: str = ""


def last_record(metrics_path: str) -> Optional[dict]:
  records = files.read_jsonl(metrics_path)
  return records[-1] if records else None


def duration(seconds: Optional[float]) -> str:
  """12 s, 3m05s, 2h07m."""
  if seconds is None:
    return "?"
  seconds = int(round(seconds))
  if seconds < 60:
    return f"{seconds} s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def line(state: MemberState, now: Optional[float] = None) -> str:
  """`name  stage 2/4 sft  step 120/1200  loss 1.234  ETA 5m12s` (what is known)."""
  now = time.time() if now is None else now
  head = f"{state.name}: "
  if state.status != "running":
    return head + state.status + (f" ({state.note})" if state.note else "")
  parts = [f"stage {state.stage_index + 1}/{state.stages} {state.stage}"]
  record = last_record(state.metrics_path) if state.metrics_path else None
  if state.stage_kind == "train":
    if record is None:
      parts.append(f"starting ({duration(now - state.stage_started)})")
    else:
      step, total = record.get("step"), state.total_steps
      parts.append(f"step {step}/{total if total else '?'}")
      if isinstance(record.get("loss"), (int, float)):
        parts.append(f"loss {record['loss']:.4g}")
      step_time = record.get("step_time_s")
      if total and isinstance(step_time, (int, float)) and isinstance(step, int):
        parts.append(f"ETA {duration(max(total - step, 0) * step_time)}")
  else:
    parts.append(f"{duration(now - state.stage_started)}")
  return head + "  ".join(parts)


class Display:
  """Prints the members' lines until `stop()`; one thread, reading MemberState only."""

  def __init__(self, states: List[MemberState], out: TextIO = sys.stdout,
               every: float = 30.0, interval: float = 1.0):
    self.states = states
    self.out = out
    self.every = every
    self.interval = interval
    self.tty = hasattr(out, "isatty") and out.isatty()
    self._drawn = 0
    self._shown: Dict[str, tuple] = {}
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._loop, name="sweep-progress", daemon=True)
    # Held while printing. Reentrant: the runner's signal handler prints a message from
    # the main thread, which may be inside update() at that moment.
    self.lock = threading.RLock()

  def start(self) -> None:
    self._thread.start()

  def stop(self) -> None:
    self._stop.set()
    self._thread.join()
    self.update()

  def _loop(self) -> None:
    while not self._stop.wait(self.interval):
      self.update()

  def message(self, text: str) -> None:
    """A line that stays (a failure, a skip): printed above the live block."""
    with self.lock:
      self._erase()
      print(text, file=self.out, flush=True)
      self._draw()

  def _erase(self) -> None:
    if self.tty and self._drawn:
      self.out.write(f"\x1b[{self._drawn}F\x1b[J")
      self._drawn = 0

  def _draw(self) -> None:
    if not self.tty:
      return
    lines = [line(s) for s in self.states if s.status in ("running", "waiting")]
    for text in lines:
      self.out.write(text[:200] + "\n")
    self._drawn = len(lines)
    self.out.flush()

  def update(self) -> None:
    with self.lock:
      if self.tty:
        self._erase()
        self._draw()
        return
      now = time.time()
      for state in self.states:
        if state.status != "running":
          continue
        key = (state.stage, state.status)
        shown = self._shown.get(state.name)
        if shown is None or shown[0] != key or now - shown[1] >= self.every:
          self._shown[state.name] = (key, now)
          print(line(state, now), file=self.out, flush=True)
