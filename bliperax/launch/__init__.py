"""Launching training runs on clusters with the tools users already have.

`python -m bliperax.launch` (bliperax/launch/__main__.py) turns a config into cluster
commands: `xpk workload create` for GKE clusters (TPU slices, several slices, GPU
nodes) or `gcloud compute tpus tpu-vm ssh --worker=all` for an existing Cloud TPU VM.
The library API, for tools that launch many runs (sweeps):

    target = Target(via="xpk", tpu="v5e-256", num_slices=2, cluster="my-cluster")
    cmds = commands("experiments/xgenmm_4b/pretrain.py:root=gs://b/data",
                    "gs://b/runs/pretrain", target, name="",
                    overrides={"train.global_batch": 1024})
    status = execute(cmds)          # dry run (printed) where xpk is not on PATH

Modules, one idea each: `target` (Target and its checks), `accelerators` (TPU and
GPU names, xpk's spellings), `names` (workload and TPU VM names), `job` (the command
every host runs: install, train, multi-host environment, mesh), `xpk` and `gcloud`
(each tool's argv), `plan` (`commands`), `runner` (`execute`), `errors`.
"""
from bliperax.launch.errors import LaunchError
from bliperax.launch.names import derive_workload_name
from bliperax.launch.plan import commands
from bliperax.launch.runner import execute
from bliperax.launch.target import Target

__all__ = ["LaunchError", "Target", "commands", "derive_workload_name", "execute"]
