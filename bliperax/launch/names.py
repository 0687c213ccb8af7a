"""Names of what a launch creates or reaches: xpk workloads and Cloud TPU VMs.

xpk takes a workload name matching `[a-z]([-a-z0-9]*[a-z0-9])?` of at most 40
characters (its `parser/validators.py`; the name becomes Kubernetes object names with
suffixes, hence the short limit). A TPU VM is a Compute Engine resource: the same
pattern, at most 63 characters.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Mapping, Optional

from bliperax.launch.errors import LaunchError

_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
WORKLOAD_MAX = 40
TPU_VM_MAX = 63
HASH_CHARS = 6


def check_name(name: str, what: str, limit: int) -> str:
  """`name` if it is a valid `what`; LaunchError saying the rule otherwise."""
  if not _NAME.fullmatch(name) or len(name) > limit:
    raise LaunchError(f"--name={name!r} is not a valid {what}: lowercase letters, digits "
                      f"and '-', starting with a letter, not ending with '-', at most "
                      f"{limit} characters")
  return name


def check_workload_name(name: str) -> str:
  """`name` if xpk takes it as a workload name."""
  return check_name(name, "xpk workload name", WORKLOAD_MAX)


def check_tpu_vm_name(name: str) -> str:
  """`name` if it can name a Cloud TPU VM."""
  return check_name(name, "TPU VM name", TPU_VM_MAX)


def derive_workload_name(config: str, workdir: str,
                         overrides: Optional[Mapping[str, object]] = None) -> str:
  """A valid workload name from the config's path and a hash of the whole launch.

  `experiments/xgenmm_4b/pretrain.py:root=...` -> `xgenmm-4b-pretrain-1a2b3c`: the
  config's folder and file name say what runs; the hash (of the config spec, workdir
  and overrides) tells runs of one config apart and is stable, so launching the same
  run twice gives the same name and xpk refuses the duplicate instead of starting a
  second copy writing into the same workdir.
  """
  path = config.partition(":")[0]
  parts = [os.path.basename(os.path.dirname(path)),
           os.path.splitext(os.path.basename(path))[0]]
  words = re.sub(r"[^a-z0-9]+", "-", "-".join(p for p in parts if p).lower()).strip("-")
  if not words or not words[0].isalpha():
    words = "run-" + words  # k8s names start with a letter
  digest = hashlib.sha256(json.dumps(
      [config, workdir, sorted((k, str(v)) for k, v in (overrides or {}).items())]
  ).encode()).hexdigest()[:HASH_CHARS]
  words = words[:WORKLOAD_MAX - HASH_CHARS - 1].strip("-")
  return check_workload_name(f"{words}-{digest}")
