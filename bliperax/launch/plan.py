"""`commands`: a config, a workdir and a Target -> the argv lists that launch the run."""
from __future__ import annotations

from typing import Dict, List, Optional

from bliperax.launch import gcloud, job, names, xpk
from bliperax.launch.errors import LaunchError
from bliperax.launch.target import Target


def commands(config: str, workdir: str, target: Target, *, name: str,
             overrides: Optional[Dict[str, object]] = None) -> List[List[str]]:
  """The commands to run, in order, to train `config` on `target` into `workdir`.

  config: `FILE[:ARGS]`, FILE a config inside this repository (it must exist here).
  workdir: `gs://BUCKET/PATH`, shared by every host.
  name: xpk: the workload's name ("" derives one, names.derive_workload_name);
    gcloud: the existing TPU VM's name.
  overrides: config fields for the train command, {"a.b": value} ->
    `--config.a.b=value`.
  Raises LaunchError (one line) for anything that cannot be right; checks everything
  before returning, so nothing runs for a refused launch.
  """
  target.check()
  job.check_workdir(workdir)
  config_rel, config_entry = job.config_in_repo(config)
  overrides = dict(overrides or {})
  job.override_flags(overrides)  # refuse bad keys here, whichever tool runs
  if target.via == "xpk":
    name = names.check_workload_name(name) if name else names.derive_workload_name(
        config_rel, workdir, overrides)
    return [xpk.workload_create(name, target, config_rel, workdir, overrides)]
  if not name:
    raise LaunchError("--via=gcloud needs --name=TPU_VM (the existing TPU VM to run on)")
  names.check_tpu_vm_name(name)
  return gcloud.tpu_vm_commands(name, target, config_rel, config_entry, workdir, overrides)
