"""`xpk workload create`: one workload on a GKE cluster, TPU slices or GPU nodes.

The container image, as xpk decides it (its `core/docker_image.py`): a registry image
(`gcr.io/...`, `docker.pkg.dev/...`, `REGION-docker.pkg.dev/...`) runs as it is, so it
must already hold the repository at its working folder with bliperax installed; any
other name is a base image into which xpk copies `--script-dir` (here the repository)
at /app, builds and pushes the result, and the job pip-installs bliperax there first.
"""
from __future__ import annotations

import pathlib
import re
from typing import List, Mapping, Optional

from bliperax.launch import accelerators, job
from bliperax.launch.target import Target

DEFAULT_BASE_IMAGE = "python:3.11"  # bliperax needs Python >= 3.10; JAX's wheels bring the rest
_REGISTRY_IMAGE = re.compile(r"(gcr\.io|([a-z0-9-]+-)?docker\.pkg\.dev)/")


def is_ready_made(image: str) -> bool:
  """Whether xpk runs `image` as it is (a registry image) rather than building on it."""
  return bool(_REGISTRY_IMAGE.match(image))


def workload_create(name: str, target: Target, config_rel: str, workdir: str,
                    overrides: Optional[Mapping[str, object]] = None,
                    repo: pathlib.Path = job.REPO) -> List[str]:
  """The argv of `xpk workload create` for one training run."""
  argv = ["xpk", "workload", "create", f"--workload={name}", f"--cluster={target.cluster}"]
  if target.tpu:
    argv += [f"--tpu-type={accelerators.xpk_tpu_type(target.tpu)}",
             f"--num-slices={target.num_slices}"]
  else:
    argv += [f"--device-type={target.gpu}", f"--num-nodes={target.nodes}"]
  train = job.train_command(config_rel, workdir, target, overrides)
  if is_ready_made(target.image):
    argv.append(f"--docker-image={target.image}")
    command = train
  else:
    argv += [f"--base-docker-image={target.image or DEFAULT_BASE_IMAGE}",
             f"--script-dir={repo}"]
    command = f"{job.install_command(target)} && {train}"
  argv += [f"--{key}={value}" for key, value in (("project", target.project),
                                                  ("zone", target.zone)) if value]
  argv.append(f"--command={command}")
  return argv
