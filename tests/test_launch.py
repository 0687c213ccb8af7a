"""bliperax.launch: the commands it builds, and what every host of a job then runs.

Fake `xpk`, `gcloud` and `python3` programs on PATH stand in for the cluster: each
appends its argv, working folder and the environment variables that matter to a JSON
lines file. The fake xpk runs the workload's `--command` with bash as a pod would (for
GPU workloads with the variables xpk sets in each pod), the fake gcloud runs an ssh
`--command` with bash in a fake home folder, and the fake python3 records what the
job's `python3 -m pip ...` and `python3 -m bliperax.train ...` were given after the
shell's quoting and expansion. Nothing compiles; the file takes seconds.
"""
import json
import os
import shlex
import subprocess
import sys
import textwrap

import pytest

from bliperax import launch
from bliperax.launch import accelerators, names
from conftest import ROOT

CONFIG = "experiments/tiny.py"
WORKDIR = "gs://bucket/runs/tiny"
RECORDED_ENV = ("BLIPERAX_DISTRIBUTED", "JAX_COORDINATOR_ADDRESS", "NNODES", "NODE_RANK")

_FAKE = textwrap.dedent("""\
    #!{python}
    import json, os, subprocess, sys
    prog = os.path.basename(sys.argv[0])
    argv = sys.argv[1:]
    with open(os.environ["FAKE_RECORD"], "a") as f:
      f.write(json.dumps(dict(prog=prog, argv=argv, cwd=os.getcwd(),
                              env={{k: os.environ.get(k) for k in {env!r}}})) + "\\n")
    command = next((a[len("--command="):] for a in argv if a.startswith("--command=")), None)
    if prog == "python3":
      fail = os.environ.get("FAKE_PIP_FAILS")
      sys.exit(int(fail) if fail and "pip" in argv else 0)
    if prog == "xpk" and command is not None:  # a pod: the container runs the command
      env = dict(os.environ)
      if any(a.startswith("--device-type=") for a in argv):  # what xpk sets in GPU pods
        nodes = next(a.split("=")[1] for a in argv if a.startswith("--num-nodes="))
        env.update(JAX_COORDINATOR_ADDRESS="wl-slice-job-0-0.wl", JAX_COORDINATOR_PORT="6002",
                   NNODES=nodes, NODE_RANK="0")
      sys.exit(subprocess.run(["bash", "-c", command], cwd=os.environ["FAKE_POD"],
                              env=env).returncode)
    if prog == "gcloud" and "ssh" in argv and command is not None:  # one host's shell
      sys.exit(subprocess.run(["bash", "-c", command], cwd=os.environ["FAKE_HOME"]).returncode)
    """)


@pytest.fixture
def cluster(tmp_path, monkeypatch):
  """Fake xpk/gcloud/python3 first on PATH; returns a function reading their records."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for prog in ("xpk", "gcloud", "python3"):
    path = bin_dir / prog
    path.write_text(_FAKE.format(python=sys.executable, env=RECORDED_ENV))
    path.chmod(0o755)
  for folder in ("pod", "home"):
    (tmp_path / folder).mkdir()
  record = tmp_path / "record.jsonl"
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  monkeypatch.setenv("FAKE_RECORD", str(record))
  monkeypatch.setenv("FAKE_POD", str(tmp_path / "pod"))
  monkeypatch.setenv("FAKE_HOME", str(tmp_path / "home"))
  for name in RECORDED_ENV:
    monkeypatch.delenv(name, raising=False)
  monkeypatch.chdir(ROOT)

  def calls():
    if not record.exists():
      return []
    return [json.loads(line) for line in record.read_text().splitlines()]
  return calls


def _flag(argv, name):
  values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
  assert len(values) == 1, (name, argv)
  return values[0]


def _train_call(calls):
  trains = [c for c in calls
            if c["prog"] == "python3" and c["argv"][:2] == ["-m", "bliperax.train"]]
  assert len(trains) == 1, calls
  return trains[0]


def _tpu(**kwargs):
  return launch.Target(**dict(dict(via="xpk", tpu="v5e-256", cluster="c1"), **kwargs))


@pytest.mark.parametrize("name,xpk_name", [
    ("v5e-256", "v5litepod-256"), ("v5litepod-16", "v5litepod-16"), ("v5p-128", "v5p-128"),
    ("v5p-8", "v5p-8"), ("v5p-1024", "v5p-1024"), ("v6e-256", "v6e-256"), ("v6e-1", "v6e-1"),
    ("v4-8", "v4-8"), ("v4-4096", "v4-4096"), ("V5E-8", "v5litepod-8")])
def test_tpu_names_map_to_xpk_tpu_types(name, xpk_name):
  assert accelerators.xpk_tpu_type(name) == xpk_name


@pytest.mark.parametrize("name", ["v5e-12", "v5e-512", "v3-8", "v5p-96", "v6e-2", "v4-6",
                                  "tpu", "v5e", "v5e-256x", "h100-80gb-8"])
def test_unknown_tpu_names_are_refused_listing_the_forms(name):
  with pytest.raises(launch.LaunchError, match="accepted forms: v4-N .*v5litepod-N.*v6e-N"):
    accelerators.xpk_tpu_type(name)


def test_xpk_one_slice(cluster):
  cmds = launch.commands(CONFIG, WORKDIR, _tpu(project="p1", zone="us-east5-b"),
                         name="tiny-run", overrides={"train.global_batch": 16,
                                                      "model.numerics.scan_layers": True})
  assert len(cmds) == 1 and cmds[0][:3] == ["xpk", "workload", "create"]
  assert launch.execute(cmds) == 0
  calls = cluster()
  xpk, = [c for c in calls if c["prog"] == "xpk"]
  argv = xpk["argv"]
  assert _flag(argv, "workload") == "tiny-run" and _flag(argv, "cluster") == "c1"
  assert _flag(argv, "tpu-type") == "v5litepod-256" and _flag(argv, "num-slices") == "1"
  assert _flag(argv, "project") == "p1" and _flag(argv, "zone") == "us-east5-b"
  # A base image: xpk copies the repository in, the job installs it, then trains.
  assert _flag(argv, "base-docker-image") == "python:3.11"
  assert _flag(argv, "script-dir") == str(ROOT)
  assert not any(a.startswith(("--docker-image=", "--device-type=")) for a in argv)
  pip, train = [c for c in calls if c["prog"] == "python3"]
  assert pip["argv"] == ["-m", "pip", "install", "--quiet", ".[tpu]"]
  assert train["argv"] == ["-m", "bliperax.train", f"--config={CONFIG}", f"--workdir={WORKDIR}",
                           "--config.train.global_batch=16",
                           "--config.model.numerics.scan_layers=true"]
  assert train["env"]["BLIPERAX_DISTRIBUTED"] == "1"
  assert pip["env"]["BLIPERAX_DISTRIBUTED"] is None  # the train command's, not the pod's


def test_xpk_several_slices_are_data_parallel_across_slices(cluster):
  config = "experiments/xgenmm_4b/pretrain.py:root=gs://bucket/data,init=gs://bucket/init"
  target = _tpu(tpu="v5p-128", num_slices=4, image="us-docker.pkg.dev/p1/r/bliperax:1")
  assert launch.execute(launch.commands(config, WORKDIR, target, name="")) == 0
  calls = cluster()
  xpk, = [c for c in calls if c["prog"] == "xpk"]
  assert _flag(xpk["argv"], "tpu-type") == "v5p-128"
  assert _flag(xpk["argv"], "num-slices") == "4"
  # A ready-made registry image runs as it is: no build, no install step.
  assert _flag(xpk["argv"], "docker-image") == "us-docker.pkg.dev/p1/r/bliperax:1"
  assert not any(a.startswith(("--base-docker-image=", "--script-dir=")) for a in xpk["argv"])
  assert [c["argv"][1] for c in calls if c["prog"] == "python3"] == ["bliperax.train"]
  train = _train_call(calls)
  assert train["argv"][2:] == [f"--config={config}", f"--workdir={WORKDIR}",
                               "--config.mesh.dcn_data=4"]
  assert train["env"]["BLIPERAX_DISTRIBUTED"] == "1"
  name = _flag(xpk["argv"], "workload")
  assert name.startswith("xgenmm-4b-pretrain-") and len(name) <= names.WORKLOAD_MAX
  with pytest.raises(launch.LaunchError, match="mesh.dcn_data is the launcher's"):
    launch.commands(config, WORKDIR, target, name="", overrides={"mesh.dcn_data": 2})


def test_gcloud_copies_installs_and_trains_on_every_host(cluster):
  target = launch.Target(via="gcloud", tpu="v4-32", zone="us-central2-b", project="p1")
  cmds = launch.commands(CONFIG, WORKDIR, target, name="my-tpu",
                         overrides={"total_steps": 7})
  assert launch.execute(cmds) == 0
  calls = cluster()
  gcloud = [c["argv"] for c in calls if c["prog"] == "gcloud"]
  assert [a[:5] for a in gcloud] == [["compute", "tpus", "tpu-vm", "ssh", "my-tpu"],
                                     ["compute", "tpus", "tpu-vm", "scp", "--recurse"],
                                     ["compute", "tpus", "tpu-vm", "ssh", "my-tpu"],
                                     ["compute", "tpus", "tpu-vm", "ssh", "my-tpu"]]
  for argv in gcloud:
    assert "--worker=all" in argv
    assert _flag(argv, "zone") == "us-central2-b" and _flag(argv, "project") == "p1"
  scp = gcloud[1]
  assert scp[-1] == "my-tpu:bliperax"
  assert [a for a in scp if not a.startswith("-")][4:-1] == [
      str(ROOT / "setup.py"), str(ROOT / "bliperax"), str(ROOT / "experiments")]
  assert _flag(gcloud[0], "command") == "mkdir -p bliperax"
  pip, train = [c for c in calls if c["prog"] == "python3"]
  home = os.environ["FAKE_HOME"]
  assert pip["argv"][-1] == ".[tpu]" and pip["cwd"] == os.path.join(home, "bliperax")
  assert train["cwd"] == os.path.join(home, "bliperax")
  assert train["argv"] == ["-m", "bliperax.train", f"--config={CONFIG}",
                           f"--workdir={WORKDIR}", "--config.total_steps=7"]
  assert train["env"]["BLIPERAX_DISTRIBUTED"] == "1"


def test_gcloud_refuses_several_slices_gpus_and_a_missing_vm_name():
  with pytest.raises(launch.LaunchError, match="several slices need --via=xpk"):
    launch.commands(CONFIG, WORKDIR, launch.Target(via="gcloud", tpu="v5e-8", num_slices=2),
                    name="my-tpu")
  with pytest.raises(launch.LaunchError, match="GPU runs go through xpk"):
    launch.commands(CONFIG, WORKDIR, launch.Target(via="gcloud", gpu="h100-80gb-8"),
                    name="my-tpu")
  with pytest.raises(launch.LaunchError, match="needs --name=TPU_VM"):
    launch.commands(CONFIG, WORKDIR, launch.Target(via="gcloud", tpu="v5e-8"), name="")


def test_gpu_nodes_via_xpk_get_the_coordinator_xpk_sets_in_each_pod(cluster):
  target = launch.Target(gpu="h100-80gb-8", nodes=2, cluster="gpu-cluster")
  assert launch.execute(launch.commands(CONFIG, WORKDIR, target, name="gpu-run")) == 0
  calls = cluster()
  xpk, = [c for c in calls if c["prog"] == "xpk"]
  assert _flag(xpk["argv"], "device-type") == "h100-80gb-8"
  assert _flag(xpk["argv"], "num-nodes") == "2"
  assert not any(a.startswith(("--tpu-type=", "--num-slices=")) for a in xpk["argv"])
  assert '"' not in _flag(xpk["argv"], "command")  # xpk puts it in a double-quoted YAML value
  pip = [c for c in calls if c["prog"] == "python3" and "pip" in c["argv"]]
  assert pip[0]["argv"][-1] == ".[cuda]"
  train = _train_call(calls)
  assert train["argv"][4:] == ["--config.distributed.coordinator=wl-slice-job-0-0.wl:6002",
                               "--config.distributed.num_processes=2",
                               "--config.distributed.process_id=0"]
  assert not any("dcn" in a for a in train["argv"])
  with pytest.raises(launch.LaunchError, match="--num_slices is for TPU runs"):
    launch.commands(CONFIG, WORKDIR, launch.Target(gpu="h100-80gb-8", num_slices=2,
                                                   cluster="c"), name="x")
  with pytest.raises(launch.LaunchError, match="unknown GPU 'h100'"):
    launch.commands(CONFIG, WORKDIR, launch.Target(gpu="h100", cluster="c"), name="x")


def test_execute_stops_at_the_first_failure_and_returns_its_status(cluster, monkeypatch):
  monkeypatch.setenv("FAKE_PIP_FAILS", "3")
  cmds = launch.commands(CONFIG, WORKDIR, launch.Target(via="gcloud", tpu="v5e-8"),
                         name="my-tpu")
  assert launch.execute(cmds) == 3
  calls = cluster()
  assert [c["prog"] for c in calls] == ["gcloud", "gcloud", "gcloud", "python3"]  # no train


def test_dry_run_is_the_default_without_the_tool(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(ROOT)
  monkeypatch.setenv("PATH", str(tmp_path))  # neither xpk nor gcloud here
  cmds = launch.commands(CONFIG, WORKDIR, _tpu(num_slices=2), name="tiny-run")
  assert launch.execute(cmds) == 0
  out, err = capsys.readouterr()
  assert [shlex.split(line) for line in out.splitlines()] == cmds
  assert "dry run: xpk not on PATH" in err
  assert launch.execute(cmds, dry_run=False) == 127  # asked to run: refuses, runs nothing


def test_command_line_dry_run_prints_copyable_commands_and_runs_nothing(tmp_path, cluster):
  env = dict(os.environ, PATH=str(tmp_path / "empty"))  # the fakes are not on this PATH
  args = [f"--config={CONFIG}", f"--workdir={WORKDIR}", "--tpu=v6e-256", "--num_slices=2",
          "--cluster=c1", "--zone=us-east5-b", "--config.train.global_batch=64"]
  result = subprocess.run([sys.executable, "-m", "bliperax.launch", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr
  expected = launch.commands(CONFIG, WORKDIR, _tpu(tpu="v6e-256", num_slices=2, zone="us-east5-b"),
                             name="", overrides={"train.global_batch": "64"})
  assert [shlex.split(line) for line in result.stdout.splitlines()] == expected
  assert "--config.mesh.dcn_data=2" in _flag(expected[0], "command")
  assert cluster() == []
  forced = subprocess.run([sys.executable, "-m", "bliperax.launch", *args, "--dry_run"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
  assert forced.stdout == result.stdout and cluster() == []  # xpk on PATH, still not run


def test_command_line_errors_are_one_line_and_help_explains(tmp_path):
  def run(*args):
    return subprocess.run([sys.executable, "-m", "bliperax.launch", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
  result = run(f"--config={CONFIG}", "--workdir=/tmp/run", "--tpu=v5e-256", "--cluster=c")
  assert result.returncode == 1 and result.stdout == ""
  assert result.stderr.strip().splitlines() == [
      "error: --workdir='/tmp/run': a cluster run needs a gs://BUCKET/PATH workdir "
      "(the hosts of a pod share no local disk)"]
  result = run(f"--config={CONFIG}", f"--workdir={WORKDIR}", "--tpu=v5e-300", "--cluster=c")
  assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
  assert "unknown TPU 'v5e-300'; accepted forms" in result.stderr
  help_text = run("--help").stdout
  for words in ("xpk workload create", "--num_slices", "dcn_data", "--via", "gs://",
                "--dry_run", "--config.a.b=VALUE"):
    assert words in help_text, words


@pytest.mark.parametrize("name", ["Bad-Name", "bad_name", "-x", "x-", "9abc", "a" * 41, ""])
def test_invalid_workload_names_are_refused(name):
  with pytest.raises(launch.LaunchError, match="not a valid xpk workload name"):
    names.check_workload_name(name)


def test_derived_workload_names_are_valid_stable_and_tell_runs_apart():
  name = names.derive_workload_name("experiments/xgenmm_4b/pretrain.py:root=x", WORKDIR)
  assert name.startswith("xgenmm-4b-pretrain-")
  assert names.check_workload_name(name) == name
  assert names.derive_workload_name("experiments/xgenmm_4b/pretrain.py:root=x", WORKDIR) == name
  assert names.derive_workload_name("experiments/xgenmm_4b/pretrain.py:root=x",
                                    WORKDIR + "2") != name
  assert names.derive_workload_name("experiments/xgenmm_4b/pretrain.py:root=x", WORKDIR,
                                    {"seed": 1}) != name
  long = names.derive_workload_name("a/Very_Long_Experiment_Name_With_Many_Words__v2.py", "w")
  assert len(long) <= names.WORKLOAD_MAX and names.check_workload_name(long) == long
  assert names.derive_workload_name("x/9.py", "w").startswith("x-9-")
  assert names.derive_workload_name("7/9.py", "w").startswith("run-7-9-")
  with pytest.raises(launch.LaunchError, match="not a valid xpk workload name"):
    launch.commands(CONFIG, WORKDIR, _tpu(), name="My_Run")
  with pytest.raises(launch.LaunchError, match="not a valid TPU VM name"):
    launch.commands(CONFIG, WORKDIR, launch.Target(via="gcloud", tpu="v5e-8"), name="My_TPU")


@pytest.mark.parametrize("workdir", ["/tmp/run", "runs/tiny", "gs://", "gcs://bucket/run",
                                     "s3://bucket/run", ""])
def test_cluster_runs_need_a_gs_workdir(workdir):
  with pytest.raises(launch.LaunchError, match="needs a gs://BUCKET/PATH workdir"):
    launch.commands(CONFIG, workdir, _tpu(), name="x")


def test_the_config_must_exist_here_inside_the_repository(tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)
  with pytest.raises(launch.LaunchError, match="no such file 'experiments/nope.py'"):
    launch.commands("experiments/nope.py:a=1", WORKDIR, _tpu(), name="x")
  outside = tmp_path / "mine.py"
  outside.write_text("def get_config(): pass\n")
  with pytest.raises(launch.LaunchError, match="must be inside the repository"):
    launch.commands(str(outside), WORKDIR, _tpu(), name="x")
  monkeypatch.chdir(ROOT / "experiments")  # another folder: the job still gets the repo path
  cmd = _flag(launch.commands("tiny.py:x", WORKDIR, _tpu(), name="x")[0], "command")
  assert "--config=experiments/tiny.py:x " in cmd


def test_target_combinations_that_no_tool_runs_are_refused():
  cases = [(launch.Target(tpu="v5e-8"), "needs --cluster"),
           (launch.Target(cluster="c"), "exactly one of --tpu"),
           (launch.Target(tpu="v5e-8", gpu="h100-80gb-8", cluster="c"), "exactly one of"),
           (launch.Target(tpu="v5e-8", nodes=2, cluster="c"), "--nodes is for GPU runs"),
           (launch.Target(via="ssh", tpu="v5e-8"), "must be one of xpk, gcloud"),
           (launch.Target(via="gcloud", tpu="v5e-8", image="python:3.11"), "are for --via=xpk")]
  for target, message in cases:
    with pytest.raises(launch.LaunchError, match=message):
      target.check()
  with pytest.raises(AttributeError):  # frozen: a sweep can share one Target safely
    launch.Target().tpu = "v5e-8"
