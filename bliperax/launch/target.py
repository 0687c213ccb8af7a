"""Where a run goes: `Target`, the cluster-side half of a launch, and its checks."""
from __future__ import annotations

import dataclasses

from bliperax.launch import accelerators
from bliperax.launch.errors import LaunchError

VIAS = ("xpk", "gcloud")


@dataclasses.dataclass(frozen=True)
class Target:
  """The accelerators a run asks for and the tool that gets them.

  Attributes:
    via: `xpk` (a workload on a GKE cluster: TPU slices or GPU nodes) or `gcloud`
      (an existing Cloud TPU VM, all its hosts over ssh).
    tpu: a TPU slice type, `v5e-256` (accelerators.TPU_FORMS); or empty for a GPU run.
    gpu: an xpk GPU device type, `h100-80gb-8`; or empty for a TPU run.
    nodes: GPU nodes (hosts) of the workload; TPU slices bring their hosts with their type.
    num_slices: TPU slices joined over the data-centre network (xpk only).
    image: xpk's container image: a ready-made registry image (gcr.io/...,
      *docker.pkg.dev/...) is used as it is; any other name is a base image xpk puts
      the repository into (default python:3.11). See bliperax/launch/xpk.py.
    cluster: the GKE cluster (xpk).
    project, zone: Google Cloud project and zone; empty: the tool's own defaults
      (`gcloud config`).
  """
  via: str = "xpk"
  tpu: str = ""
  gpu: str = ""
  nodes: int = 1
  num_slices: int = 1
  image: str = ""
  cluster: str = ""
  project: str = ""
  zone: str = ""

  def check(self) -> None:
    """Raises LaunchError, in one line, for a combination no tool can run."""
    if self.via not in VIAS:
      raise LaunchError(f"--via={self.via!r}: must be one of {', '.join(VIAS)}")
    if bool(self.tpu) == bool(self.gpu):
      raise LaunchError("give exactly one of --tpu=TYPE (e.g. v5e-256) or --gpu=TYPE "
                        "(e.g. h100-80gb-8)")
    if self.nodes < 1 or self.num_slices < 1:
      raise LaunchError(f"--nodes={self.nodes}, --num_slices={self.num_slices}: must be >= 1")
    if self.tpu:
      accelerators.parse_tpu(self.tpu)
      if self.nodes != 1:
        raise LaunchError("--nodes is for GPU runs; a TPU slice's hosts come with its type "
                          "(more TPUs: a bigger --tpu or --num_slices)")
    else:
      accelerators.check_gpu(self.gpu)
      if self.num_slices != 1:
        raise LaunchError("--num_slices is for TPU runs; more GPUs: --nodes=N")
    if self.via == "xpk":
      if not self.cluster:
        raise LaunchError("--via=xpk needs --cluster=NAME (the GKE cluster to run on)")
      return
    # gcloud: one existing TPU VM, reached over ssh.
    if self.gpu:
      raise LaunchError("GPU runs go through xpk: --via=xpk --cluster=NAME")
    if self.num_slices != 1:
      raise LaunchError("--via=gcloud runs on one TPU VM (one slice); several slices "
                        "need --via=xpk")
    if self.image or self.cluster:
      raise LaunchError("--image and --cluster are for --via=xpk; --via=gcloud installs "
                        "bliperax on the TPU VM itself")
