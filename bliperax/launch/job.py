"""What runs on every host of a job: install bliperax, then `python3 -m bliperax.train`.

The job gets the repository (xpk puts it into the container image, gcloud copies it to
the TPU VM), so the config file is named by its path inside the repository. Every host
runs the same command; multi-host setup comes from the environment:

- TPU: `BLIPERAX_DISTRIBUTED=1` makes the trainer call `jax.distributed.initialize()`,
  which finds the slice's hosts itself (bliperax/sharding.py,
  `maybe_initialize_distributed`). Several slices: `--config.mesh.dcn_data=N` makes the
  mesh data-parallel across the N slices (`make_mesh`'s DCN factors), so only gradients
  cross the slow network between slices.
- GPU nodes: xpk gives each pod `JAX_COORDINATOR_ADDRESS`, `JAX_COORDINATOR_PORT`,
  `NNODES` and `NODE_RANK`; the pod's shell expands them into the trainer's
  `--config.distributed.*` (JAX's own Kubernetes discovery would need the
  `kubernetes` package and API access in the pod).
"""
from __future__ import annotations

import os
import pathlib
import re
import shlex
from typing import List, Mapping, Optional, Tuple

from bliperax.launch.errors import LaunchError
from bliperax.launch.target import Target

REPO = pathlib.Path(__file__).resolve().parents[2]
PYTHON = "python3"  # TPU VM images and python:3.x containers all have it; not all `python`
DISTRIBUTED_ENV = "BLIPERAX_DISTRIBUTED=1"
# Shell words, expanded in each GPU pod from what xpk sets there.
GPU_DISTRIBUTED_FLAGS = (
    "--config.distributed.coordinator=${JAX_COORDINATOR_ADDRESS}:${JAX_COORDINATOR_PORT}",
    "--config.distributed.num_processes=${NNODES}",
    "--config.distributed.process_id=${NODE_RANK}",
)
# Config fields the launcher owns: how the hosts find each other and how the mesh spans
# slices follow from the target, and a stray value would make every host wait or fail.
RESERVED = ("mesh.dcn_data", "mesh.dcn_fsdp", "mesh.dcn_tensor", "distributed")
_DOTPATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def repo_root() -> pathlib.Path:
  """The source checkout the job is made from (the folder holding setup.py)."""
  if not (REPO / "setup.py").is_file():
    raise LaunchError(f"bliperax at {REPO} is not a source checkout (no setup.py beside "
                      "it): launch from a clone, whose files the job gets")
  return REPO


def config_in_repo(spec: str, root: Optional[pathlib.Path] = None) -> Tuple[str, str]:
  """`FILE[:ARGS]` -> (the spec with FILE relative to the repository, FILE's top entry).

  The top entry (e.g. `experiments`) is what must travel with the repository for the
  job to find FILE.
  """
  root = root or repo_root()
  path, colon, args = spec.partition(":")
  if not path or not os.path.isfile(path):
    raise LaunchError(f"--config={spec!r}: no such file {path!r} here (the job finds it "
                      "at the same place in its copy of the repository)")
  rel = os.path.relpath(os.path.realpath(path), os.path.realpath(root))
  if rel.startswith(os.pardir):
    raise LaunchError(f"--config={path}: the file must be inside the repository {root}, "
                      "which is what the job gets")
  rel = pathlib.PurePath(rel).as_posix()
  return rel + colon + args, rel.split("/")[0]


def check_workdir(workdir: str) -> None:
  """A pod's hosts share no local disk: the workdir must be a bucket every host reaches."""
  if not workdir.startswith("gs://") or len(workdir) <= len("gs://"):
    raise LaunchError(f"--workdir={workdir!r}: a cluster run needs a gs://BUCKET/PATH "
                      "workdir (the hosts of a pod share no local disk)")


def override_flags(overrides: Mapping[str, object],
                   reserved: Tuple[str, ...] = RESERVED) -> List[str]:
  """{"train.global_batch": 512} -> ["--config.train.global_batch=512"].

  Booleans become true/false (absl's spelling); keys under `reserved` are the
  launcher's own (set from the target) and refused.
  """
  out = []
  for key, value in overrides.items():
    if not _DOTPATH.fullmatch(key):
      raise LaunchError(f"--config.{key}: not a config field path (a.b.c)")
    if any(key == r or key.startswith(r + ".") for r in reserved):
      raise LaunchError(f"--config.{key} is the launcher's: it follows from --tpu, "
                        "--num_slices and --nodes; leave it out")
    text = str(value).lower() if isinstance(value, bool) else str(value)
    out.append(f"--config.{key}={text}")
  return out


def train_command(config_rel: str, workdir: str, target: Target,
                  overrides: Optional[Mapping[str, object]] = None) -> str:
  """The shell command every host runs to train (environment and mesh included)."""
  argv = [PYTHON, "-m", "bliperax.train", f"--config={config_rel}", f"--workdir={workdir}"]
  raw: Tuple[str, ...] = ()  # words the host's shell must expand: not quoted
  env = ""
  if target.tpu:
    env = DISTRIBUTED_ENV + " "
    if target.num_slices > 1:
      argv.append(f"--config.mesh.dcn_data={target.num_slices}")
  elif target.nodes > 1:
    raw = GPU_DISTRIBUTED_FLAGS
  argv += override_flags(overrides or {})
  return env + shlex.join(argv) + "".join(" " + w for w in raw)


def install_command(target: Target) -> str:
  """pip-installs the repository in the current folder with the accelerator's JAX."""
  extra = ".[tpu]" if target.tpu else ".[cuda]"
  return shlex.join([PYTHON, "-m", "pip", "install", "--quiet", extra])
