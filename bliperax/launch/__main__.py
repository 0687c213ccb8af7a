r"""Launch a training run on a cluster: xpk (GKE: TPU slices, GPU nodes) or gcloud (a TPU VM).

  python -m bliperax.launch --config=FILE[:ARGS] --workdir=gs://BUCKET/PATH \
      --tpu=v5e-256 [--num_slices=N] --cluster=NAME [--project=P --zone=Z] \
      [--image=IMAGE] [--name=NAME] [--dry_run] [--config.a.b=VALUE ...]
  python -m bliperax.launch --via=gcloud --name=TPU_VM --tpu=v5e-256 --zone=Z ...
  python -m bliperax.launch --gpu=h100-80gb-8 --nodes=N --cluster=NAME ...

Every host runs `python3 -m bliperax.train --config=FILE[:ARGS] --workdir=...` with the
`--config.a.b=VALUE` overrides given here, after pip-installing the repository with
JAX for its accelerator (bliperax/launch/job.py). Multi-host setup is the launcher's:
BLIPERAX_DISTRIBUTED=1 on TPU hosts, `--config.mesh.dcn_data=N` for N slices (data
parallel across slices), the coordinator that xpk provides for GPU nodes.

--via=xpk (default): one `xpk workload create` on GKE cluster --cluster. --image: a
registry image (gcr.io/..., *docker.pkg.dev/...) runs as it is and must hold the
repository, installed, at its working folder; any other image (default python:3.11)
is a base that xpk puts this repository into. The workload name is --name, or the
config's folder and name plus a hash of the launch (the same launch, the same name).

--via=gcloud: runs on an existing TPU VM named --name, all its hosts: copies the
repository's setup.py, bliperax/ and the config's folder to ~/bliperax, installs,
trains in the foreground (the ssh sessions last as long as the run). One slice only.

FILE must be inside this repository (the job gets the repository and finds FILE at
the same place); the workdir must be gs:// (a pod's hosts share no disk). Without
xpk/gcloud on PATH, or with --dry_run, the commands are printed (one copyable line
each) instead of run; otherwise they run, output streamed, and the exit status is
theirs. Errors are one line and exit status 1.
"""
from typing import Dict, List

from absl import app, flags

from bliperax import cli

_CONFIG = flags.DEFINE_string("config", None, "Experiment config FILE[:ARGS], FILE inside "
                              "this repository; override fields with --config.a.b=VALUE.")
_WORKDIR = flags.DEFINE_string("workdir", None, "gs://BUCKET/PATH for the run's checkpoints "
                               "and logs, shared by every host; reusing it resumes the run.")
_VIA = flags.DEFINE_enum("via", "xpk", ["xpk", "gcloud"], "xpk: a workload on a GKE cluster; "
                         "gcloud: an existing Cloud TPU VM over ssh.")
_TPU = flags.DEFINE_string("tpu", "", "TPU slice type: v4-N, v5e-N (= v5litepod-N), v5p-N, "
                           "v6e-N, as Cloud TPU names them (e.g. v5e-256).")
_GPU = flags.DEFINE_string("gpu", "", "GPU node type, as xpk's --device-type (e.g. "
                           "h100-80gb-8); xpk only.")
_NODES = flags.DEFINE_integer("nodes", 1, "GPU nodes (hosts) of the workload.", lower_bound=1)
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "TPU slices, data parallel across them "
                                   "(xpk only).", lower_bound=1)
_IMAGE = flags.DEFINE_string("image", "", "xpk: a ready-made registry image, or a base image "
                             "for xpk to put the repository into (default python:3.11).")
_NAME = flags.DEFINE_string("name", "", "xpk: the workload name (default: derived from the "
                            "config); gcloud: the TPU VM to run on (required).")
_CLUSTER = flags.DEFINE_string("cluster", "", "xpk: the GKE cluster.")
_PROJECT = flags.DEFINE_string("project", "", "Google Cloud project (default: gcloud config).")
_ZONE = flags.DEFINE_string("zone", "", "Google Cloud zone (default: gcloud config).")
_DRY_RUN = flags.DEFINE_bool("dry_run", None, "Print the commands instead of running them "
                             "(the default when xpk/gcloud is not on PATH); --nodry_run runs "
                             "them or fails.")
flags.mark_flags_as_required(["config", "workdir"])

_OVERRIDE = "--config."
_overrides: Dict[str, str] = {}


def parse_flags(argv: List[str]) -> List[str]:
  """absl's parsing (one-line errors), with the `--config.a.b=VALUE` words taken out first.

  Those are the train command's config overrides: the launcher does not load the config
  (its ARGS may name paths that exist only on the cluster), so it passes them on as
  they are and the trainer checks them on the cluster.
  """
  rest = []
  for arg in argv:
    if not arg.startswith(_OVERRIDE):
      rest.append(arg)
      continue
    key, eq, value = arg[len(_OVERRIDE):].partition("=")
    if not eq:
      cli.fail(f"{arg}: write config overrides as --config.a.b=VALUE")
    _overrides[key] = value
  return cli.parse_flags(rest)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from bliperax import launch  # pylint: disable=g-import-not-at-top
  target = launch.Target(via=_VIA.value, tpu=_TPU.value, gpu=_GPU.value, nodes=_NODES.value,
                         num_slices=_NUM_SLICES.value, image=_IMAGE.value,
                         cluster=_CLUSTER.value, project=_PROJECT.value, zone=_ZONE.value)
  try:
    cmds = launch.commands(_CONFIG.value, _WORKDIR.value, target, name=_NAME.value,
                           overrides=_overrides)
  except launch.LaunchError as e:
    cli.fail(str(e))
  return launch.execute(cmds, dry_run=_DRY_RUN.value)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
