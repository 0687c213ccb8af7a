"""A sweep for the tests (tests/test_sweep*.py): the tiny model on synthetic batches.

  python -m bliperax.sweep --config=tests/sweep_tiny.py:steps=3 --workdir=/tmp/sw --dry_run

Members differ in `seed` only, so they compile the same train step (a compilation
cache shared by the members compiles it once). Knobs: steps=N (train steps, a
checkpoint and a metrics line after each), broken=1 adds a member the trainer refuses
at once (train.accum_steps=3 does not divide the batch of 2), setup=1 adds a setup
stage (writes DIR/made.txt once for the sweep).
"""
from bliperax import configs
from bliperax import sweep


def get_sweep(arg=None):
  knobs = configs.parse_arg(arg)
  members = sweep.product({"seed": [0, 1]})
  if knobs.get("broken") == "1":
    members += [{"name": "broken", "train.accum_steps": 3}]
  return members


def get_stages(arg=None):
  knobs = configs.parse_arg(arg)
  steps = int(knobs.get("steps", 3))
  stages = [sweep.train("train", "experiments/tiny.py:batch=2", overrides={
      "total_steps": steps, "checkpoint_every": 1, "log_every": 1})]
  if knobs.get("setup") == "1":
    stages.insert(0, sweep.setup("made", [
        "python", "-c", "import pathlib, sys; pathlib.Path(sys.argv[1]).write_text('ok')",
        "{sweep}/made.txt"]))
  return stages
