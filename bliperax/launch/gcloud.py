"""An existing Cloud TPU VM over `gcloud compute tpus tpu-vm ssh/scp --worker=all`.

Four steps, each on every host of the VM: make the folder `~/bliperax`, copy into it
what the job needs from the repository (setup.py, the package, the config's folder),
pip-install it with JAX for TPU, train. The training command runs in the foreground
of the ssh sessions: the launch streams the hosts' output and ends with the run.
"""
from __future__ import annotations

import pathlib
from typing import List, Mapping, Optional

from bliperax.launch import job
from bliperax.launch.target import Target

REMOTE_DIR = "bliperax"  # relative to the ssh user's home on every host
_TPU_VM = ["gcloud", "compute", "tpus", "tpu-vm"]


def _where(target: Target) -> List[str]:
  """--zone / --project where given (else gcloud's configured defaults)."""
  return [f"--{key}={value}" for key, value in (("zone", target.zone),
                                                ("project", target.project)) if value]


def ssh(name: str, target: Target, command: str) -> List[str]:
  """`command` on every host of TPU VM `name`."""
  return [*_TPU_VM, "ssh", name, "--worker=all", *_where(target), f"--command={command}"]


def scp(name: str, target: Target, sources: List[str]) -> List[str]:
  """Local `sources` into ~/REMOTE_DIR on every host of TPU VM `name`."""
  return [*_TPU_VM, "scp", "--recurse", "--worker=all", *_where(target), *sources,
          f"{name}:{REMOTE_DIR}"]


def tpu_vm_commands(name: str, target: Target, config_rel: str, config_entry: str,
                    workdir: str, overrides: Optional[Mapping[str, object]] = None,
                    repo: pathlib.Path = job.REPO) -> List[List[str]]:
  """The argv lists, in order, that install bliperax on TPU VM `name` and train there."""
  sources = [str(repo / entry) for entry in dict.fromkeys(["setup.py", "bliperax",
                                                            config_entry])]
  in_dir = f"cd {REMOTE_DIR} && "
  return [
      ssh(name, target, f"mkdir -p {REMOTE_DIR}"),
      scp(name, target, sources),
      ssh(name, target, in_dir + job.install_command(target)),
      ssh(name, target, in_dir + job.train_command(config_rel, workdir, target, overrides)),
  ]
