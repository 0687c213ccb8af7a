"""Runs a sweep's members on this host: their stages as subprocesses, N members at once.

DIR/<member>/ holds the stages' outputs (bliperax/sweep/stages.py), `log.txt` (every
stage attempt's command, output and exit status, appended) and `member.json`, the
member's status record, rewritten whole at every change (bliperax/sweep/files.py):

  {"name", "index", "overrides", "status": running|done|failed|interrupted,
   "stages": {stage: {"kind", "status", "command" (template), "made_by" (the command
                      whose run its output holds), "attempts", "wall_s", "started",
                      "finished", "exit", "pid"}},
   "wall_s", "failed_stage", "error"}

Rerunning the same sweep on the same DIR:
- a member whose every stage is recorded done with the same command is skipped, and
  its files are not touched;
- otherwise stages run from the first one not done with the same command (a changed
  stage and everything after it run again); an interrupted train stage is re-run,
  and bliperax.train resumes its own checkpoint. The output of a stage whose command
  changed, or whose earlier stages ran again, is renamed `<output>.replaced-<n>`
  first (the trainer would refuse to resume a workdir made from something else).
A train stage counts as done only when its metrics.jsonl reached the config's
total_steps: the trainer exits 0 after a SIGTERM too (it checkpoints and stops).

One process per member at a time: the runner holds an flock on DIR/<member>/.lock
and passes it to the stage's process, so the lock lasts as long as the stage runs,
even if this runner is killed. A rerun meeting a held lock waits for it (it says
so) instead of starting a second trainer on the same workdir.

Stages run in their own session, so Ctrl-C reaches the runner only: it sends the
running stages SIGTERM (the trainer saves a checkpoint and stops), records the
members as interrupted and exits 130; a second Ctrl-C kills the stages and stops.

--parallel=N on a host with C cores: each member's stages are pinned to C/N cores of
their own (sched_setaffinity), so N trainers do not each size XLA's thread pools to all
C cores and thrash; with fewer cores than members nothing is pinned.
"""
from __future__ import annotations

import fcntl
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Sequence, TextIO

from bliperax.sweep import files
from bliperax.sweep import plan as plan_lib
from bliperax.sweep import progress
from bliperax.sweep import stages as stages_lib

MEMBER_FILE = "member.json"
LOG_FILE = "log.txt"
LOCK_FILE = ".lock"
SETUP_DIR = "_setup"  # setup stages' records and logs (member names never start with _)
TAIL_LINES = 20


def tail(path: str, lines: int = TAIL_LINES) -> str:
  """The last `lines` lines of a (log) file."""
  try:
    with open(path, "rb") as f:
      f.seek(0, os.SEEK_END)
      f.seek(max(0, f.tell() - 64 * 1024))
      text = f.read().decode(errors="replace")
  except OSError:
    return ""
  return "\n".join(text.splitlines()[-lines:])


def core_slots(parallel: int, cores: Optional[Sequence[int]] = None) -> List[Optional[List[int]]]:
  """Disjoint core sets, one per parallel slot; [None]*N where there are too few cores."""
  cores = sorted(os.sched_getaffinity(0) if cores is None else cores)
  per = len(cores) // parallel
  if parallel <= 1 or per < 1:
    return [None] * parallel
  return [cores[i * per:(i + 1) * per] for i in range(parallel)]


def child_pythonpath() -> str:
  """PYTHONPATH for the stages: this bliperax first, so every stage runs the same code
  as the runner whatever folder the sweep is started from."""
  package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  rest = os.environ.get("PYTHONPATH", "")
  return package_parent + (os.pathsep + rest if rest else "")


def train_finished(metrics_path: str, total_steps: Optional[int]) -> bool:
  """Whether a train stage's metrics.jsonl reached its last step (the trainer always
  logs the last step)."""
  record = progress.last_record(metrics_path)
  if total_steps is None:
    return record is not None
  return record is not None and int(record.get("step", -1)) >= total_steps


class Runner:
  """Runs `members` of `plan` under `workdir`; see the module docstring."""

  def __init__(self, plan: plan_lib.Plan, members: Sequence[plan_lib.MemberPlan],
               workdir: str, parallel: int = 1, pin_cores: bool = True,
               out: TextIO = sys.stdout, progress_every: float = 30.0):
    self.plan = plan
    self.members = list(members)
    self.workdir = os.path.abspath(workdir)
    self.parallel = max(1, min(parallel, len(self.members) or 1))
    slots = core_slots(self.parallel) if pin_cores else [None] * self.parallel
    self._slots: "queue.Queue" = queue.Queue()
    for s in slots:
      self._slots.put(s)
    self.states = [progress.MemberState(m.name, stages=len(plan.stages)) for m in self.members]
    self.display = progress.Display(self.states, out, every=progress_every)
    self.out = out
    self.stopping = threading.Event()
    self._procs: Dict[int, subprocess.Popen] = {}
    self._procs_lock = threading.Lock()
    self.results: Dict[str, str] = {}
    self.errors: Dict[str, str] = {}
    self.setup_failed: Optional[str] = None

  # --- the whole sweep -------------------------------------------------------------

  def run(self) -> Dict[str, str]:
    """Runs the setup stages, then every member; returns {name: done|failed|interrupted}
    (empty when a setup stage failed: `setup_failed` names it)."""
    os.makedirs(self.workdir, exist_ok=True)
    previous = self._install_signals()
    try:
      for stage in self.plan.setup:
        if not self._setup(stage):
          self.setup_failed = stage.name
          return self.results
      self._run_members()
    finally:
      self._restore_signals(previous)
    return self.results

  def _run_members(self) -> None:
    self.display.start()
    threads = [threading.Thread(target=self._member_thread, args=(m, s), daemon=True,
                                name=f"sweep-{m.name}")
               for m, s in zip(self.members, self.states)]
    try:
      for t in threads:  # each waits for a free slot: members start in order
        t.start()
      for t in threads:
        while t.is_alive():
          t.join(0.2)  # a short join keeps the main thread responsive to signals
    finally:
      self.display.stop()

  def _setup(self, stage: stages_lib.Stage) -> bool:
    """Runs a setup stage unless DIR/_setup/<name>.json records it done with the same
    command; returns whether it is done."""
    directory = os.path.join(self.workdir, SETUP_DIR)
    os.makedirs(directory, exist_ok=True)
    record_path = os.path.join(directory, f"{stage.name}.json")
    log_path = os.path.join(directory, f"{stage.name}.log")
    template = stages_lib.command(stage, {})
    record = files.read_json(record_path) or {}
    if record.get("status") == "done" and record.get("command") == template:
      print(f"setup {stage.name}: done earlier with the same command; skipped", flush=True)
      return True
    if self.stopping.is_set():
      return False
    entry = {"kind": "setup", "status": "running", "command": template,
             "attempts": record.get("attempts", 0) + 1, "wall_s": 0.0,
             "started": time.time()}
    files.write_json(record_path, entry)
    print(f"setup {stage.name}: {shlex.join(template)} (log: {log_path})", flush=True)
    argv = [sys.executable] + template[1:] if template[0] == "python" else template
    t0 = time.time()
    lock_fd = os.open(os.path.join(directory, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(lock_fd, fcntl.LOCK_EX)
      code = self._exec(argv, log_path, stage, entry, entry, record_path, lock_fd, None)
    finally:
      os.close(lock_fd)
    entry.update(wall_s=round(time.time() - t0, 3), exit=code, finished=time.time(),
                 pid=None, status="done" if code == 0 else "failed")
    files.write_json(record_path, entry)
    if code:
      print(f"setup {stage.name}: FAILED (exit {code}); last lines of {log_path}:\n"
            + _indent(tail(log_path)), flush=True)
    return code == 0

  def _install_signals(self):
    if threading.current_thread() is not threading.main_thread():
      return None
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handle(signum, frame):
      del frame
      if self.stopping.is_set():  # the second one: stop now, the stages too
        self._signal_stages(signal.SIGKILL)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
      self.stopping.set()
      self.display.message(f"{signal.Signals(signum).name}: stopping: the running stages "
                           "get SIGTERM (training checkpoints and stops); again to "
                           "stop at once")
      self._signal_stages(signal.SIGTERM)
    for s in previous:
      signal.signal(s, handle)
    return previous

  def _signal_stages(self, signum) -> None:
    # Not under _procs_lock: a signal handler must not wait for a lock its own
    # (interrupted) thread may hold; a copy of the dict is enough.
    for proc in list(self._procs.values()):
      try:
        proc.send_signal(signum)
      except ProcessLookupError:
        pass

  @staticmethod
  def _restore_signals(previous) -> None:
    for s, handler in (previous or {}).items():
      signal.signal(s, handler)

  def _member_thread(self, member: plan_lib.MemberPlan, state: progress.MemberState) -> None:
    slot = self._slots.get()
    try:
      if self.stopping.is_set():
        state.status = "interrupted"
        self.results[member.name] = "interrupted"
        return
      status = self._run_member(member, state, slot)
    except Exception as e:  # pylint: disable=broad-except  (one member's bug, not the sweep's)
      status = "failed"
      self.errors[member.name] = f"{type(e).__name__}: {e}"
      self.display.message(f"{member.name}: failed: {type(e).__name__}: {e}")
    finally:
      self._slots.put(slot)
    state.status = status
    self.results[member.name] = status

  # --- one member ------------------------------------------------------------------

  def member_dir(self, member: plan_lib.MemberPlan) -> str:
    return os.path.join(self.workdir, member.name)

  def _lock(self, member: plan_lib.MemberPlan, state: progress.MemberState) -> int:
    directory = self.member_dir(member)
    os.makedirs(directory, exist_ok=True)
    fd = os.open(os.path.join(directory, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      state.status, state.note = "waiting", "for the process holding its lock"
      self.display.message(
          f"{member.name}: waiting: another process holds {directory}/{LOCK_FILE} (a "
          "stage of an earlier, killed sweep still running, or a second sweep on this "
          "workdir); continuing when it ends")
      fcntl.flock(fd, fcntl.LOCK_EX)
      state.note = ""
    return fd

  def _run_member(self, member: plan_lib.MemberPlan, state: progress.MemberState,
                  cores: Optional[List[int]]) -> str:
    directory = self.member_dir(member)
    lock_fd = self._lock(member, state)
    try:
      return self._stages(member, state, directory, lock_fd, cores)
    finally:
      os.close(lock_fd)

  def _stages(self, member, state, directory, lock_fd, cores) -> str:
    record_path = os.path.join(directory, MEMBER_FILE)
    record = files.read_json(record_path) or {}
    stage_records = record.get("stages", {})
    todo = self._first_to_run(member, stage_records)
    if todo is None:
      state.status = "skipped"
      state.note = "finished earlier"
      self.display.message(f"{member.name}: done earlier (every stage recorded with the "
                           "same command); skipped")
      return "done"
    record.update(name=member.name, index=member.index, overrides=member.overrides,
                  config=self.plan.config, status="running", failed_stage=None, error=None)
    record["stages"] = stage_records
    files.write_json(record_path, record)
    state.status = "running"
    log_path = os.path.join(directory, LOG_FILE)
    upstream_ran = False  # a stage before this one ran in this pass: its output is new
    for i, stage in enumerate(self.plan.stages):
      if i < todo:
        continue
      if self.stopping.is_set():
        return self._finish(record, record_path, "interrupted")
      template = member.commands[i]
      previous = stage_records.get(stage.name, {})
      if upstream_ran or _made_by(previous) != template:
        # Made by another command, or from inputs that have just been remade: the
        # trainer would refuse to resume it, so it moves aside and the stage starts over.
        moved = set_aside(stage.output(directory))
        if moved:
          self.display.message(f"{member.name}: {stage.name} was made with another "
                               f"command or inputs; moved to {moved}")
          previous = {"attempts": previous.get("attempts", 0)}
      entry = {"kind": stage.kind, "status": "running", "command": template,
               "attempts": previous.get("attempts", 0) + 1,
               "wall_s": previous.get("wall_s", 0.0) if previous.get("command") == template
               else 0.0, "started": time.time(), "finished": None, "exit": None,
               "made_by": template}
      stage_records[stage.name] = entry
      state.stage, state.stage_index, state.stage_kind = stage.name, i, stage.kind
      state.stage_started = entry["started"]
      metrics = os.path.join(stage.output(directory), "metrics.jsonl") \
          if stage.kind == "train" else None
      state.metrics_path = metrics
      state.total_steps = self.plan.total_steps(member, stage)
      argv = [sys.executable] + stages_lib.fill(template, directory)[1:]
      t0 = time.time()
      code = self._exec(argv, log_path, stage, entry, record, record_path, lock_fd, cores)
      entry["wall_s"] = round(entry["wall_s"] + time.time() - t0, 3)
      entry["exit"], entry["finished"], entry["pid"] = code, time.time(), None
      if code == 0 and stage.kind == "train" and not train_finished(metrics,
                                                                    state.total_steps):
        code = None  # stopped early (SIGTERM: the trainer checkpoints and exits 0)
      if code != 0:
        interrupted = self.stopping.is_set()
        entry["status"] = "interrupted" if interrupted else "failed"
        if interrupted:
          return self._finish(record, record_path, "interrupted")
        record["failed_stage"] = stage.name
        record["error"] = (f"stage {stage.name!r} exited with status {code}" if code
                           is not None else f"stage {stage.name!r} stopped before its "
                           f"last step ({state.total_steps})")
        status = self._finish(record, record_path, "failed")
        self.display.message(f"{member.name}: FAILED: {record['error']}; last lines of "
                             f"{log_path}:\n" + _indent(tail(log_path)))
        return status
      entry["status"] = "done"
      upstream_ran = True
      files.write_json(record_path, record)
    return self._finish(record, record_path, "done")

  def _first_to_run(self, member, stage_records) -> Optional[int]:
    """The first stage not recorded done with its current command; None: all done."""
    for i, stage in enumerate(self.plan.stages):
      previous = stage_records.get(stage.name) or {}
      if previous.get("status") != "done" or previous.get("command") != member.commands[i]:
        return i
    return None

  def _finish(self, record, record_path, status) -> str:
    record["status"] = status
    record["wall_s"] = round(sum(s.get("wall_s") or 0.0
                                 for s in record["stages"].values()), 3)
    files.write_json(record_path, record)
    return status

  def _exec(self, argv, log_path, stage, entry, record, record_path, lock_fd, cores) -> int:
    # Unbuffered: the log shows progress as it happens.
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=child_pythonpath())
    with open(log_path, "a") as log:
      log.write(f"\n=== stage {stage.name} (attempt {entry['attempts']}) "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n$ {shlex.join(argv)}\n")
      log.flush()
      proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, env=env, pass_fds=(lock_fd,),
                              start_new_session=True)
      if cores:
        try:  # before the child's XLA sizes its thread pools (seconds into its imports)
          os.sched_setaffinity(proc.pid, cores)
        except OSError:
          pass
      with self._procs_lock:
        self._procs[proc.pid] = proc
        if self.stopping.is_set():  # a stop that came while it was starting
          proc.send_signal(signal.SIGTERM)
      entry["pid"] = proc.pid
      files.write_json(record_path, record)
      code = proc.wait()
      with self._procs_lock:
        self._procs.pop(proc.pid, None)
      log.write(f"=== stage {stage.name} exit {code}\n")
    return code


def _indent(text: str) -> str:
  return "\n".join("    " + l for l in text.splitlines())


def _made_by(entry: dict) -> Optional[list]:
  """The command whose run the stage's output holds (older records: the recorded
  command of a finished or interrupted attempt)."""
  if "made_by" in entry:
    return entry["made_by"]
  return entry.get("command") if entry.get("status") in ("done", "interrupted") else None


def set_aside(path: str) -> Optional[str]:
  """Renames an existing stage output to `<path>.replaced-<n>` (kept, not deleted);
  returns the new name, or None when nothing was there."""
  if not os.path.lexists(path):
    return None
  n = 1
  while os.path.lexists(f"{path}.replaced-{n}"):
    n += 1
  os.rename(path, f"{path}.replaced-{n}")
  return f"{path}.replaced-{n}"
