"""Running a launch's commands, or printing them (a dry run) where the tools are missing."""
from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from typing import List, Optional, Sequence, TextIO

NOT_FOUND = 127  # the shell's status for a command it cannot find


def missing_tools(cmds: Sequence[Sequence[str]]) -> List[str]:
  """The programs of `cmds` (xpk, gcloud) that are not on PATH, each once."""
  return [p for p in dict.fromkeys(c[0] for c in cmds) if shutil.which(p) is None]


def execute(cmds: Sequence[Sequence[str]], dry_run: Optional[bool] = None, *,
            out: Optional[TextIO] = None, err: Optional[TextIO] = None) -> int:
  """Runs `cmds` in order, streaming their output; returns the first non-zero status.

  dry_run: True prints the commands (one shell-quoted, copyable line each, on `out`)
  and runs nothing; False runs them; None runs them if every program is on PATH and
  otherwise prints them, saying why on `err`. Returns 0 for a dry run.
  """
  out = out or sys.stdout
  err = err or sys.stderr
  missing = missing_tools(cmds)
  if dry_run is None:
    dry_run = bool(missing)
    if missing:
      print(f"# dry run: {', '.join(missing)} not on PATH; this is what would run:",
            file=err, flush=True)
  if dry_run:
    for cmd in cmds:
      print(shlex.join(cmd), file=out)
    out.flush()
    return 0
  if missing:
    print(f"error: {', '.join(missing)} not on PATH (install it, or use --dry_run)",
          file=err, flush=True)
    return NOT_FOUND
  for cmd in cmds:
    print(f"+ {shlex.join(cmd)}", file=err, flush=True)  # as `set -x`: what runs now
    status = subprocess.run(list(cmd), check=False).returncode
    if status:
      return status
  return 0
