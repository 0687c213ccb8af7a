"""Trainer entry point.

  python -m bliperax.train --config=experiments/tiny.py --workdir=/tmp/run [--config.total_steps=50]

Running again on the same workdir resumes from its latest checkpoint, if the workdir
was made with the same config and code (bliperax/run_record.py); otherwise it stops
with one line on stderr saying what differs, and exit status 1.
"""
import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from bliperax import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (get_config(arg)); `file.py:arg` passes arg; "
    "override fields with --config.a.b=value.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl "
                               "and TensorBoard logs; reusing it resumes the run.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from bliperax import run_record  # pylint: disable=g-import-not-at-top
  from bliperax.train import checkpoint  # pylint: disable=g-import-not-at-top
  from bliperax.train import trainer  # after flags: keeps --help fast
  try:
    result = trainer.train(_CONFIG.value, _WORKDIR.value)
  except (run_record.RunMismatch, trainer.InvalidRun, checkpoint.DataStateMismatch) as e:
    # A refusal, not a crash: the message says what is wrong and what to do.
    sys.exit(f"bliperax.train: {e}")
  print(json.dumps(result))


if __name__ == "__main__":
  logging.set_verbosity(logging.WARNING)
  cli.run(main)
