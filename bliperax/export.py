r"""Export a training run's parameters as a parameter checkpoint: the next stage's `init`.

  python -m bliperax.export --checkpoint=CKPT/pretrain --output=CKPT/pretrain_params
  python -m bliperax.train --config=experiments/xgenmm_4b/sft.py:root=DATA,init=CKPT/pretrain_params ...

--checkpoint takes a training workdir (its latest step), its checkpoints/ folder or
one step folder `checkpoints/<step>/`, or a parameter checkpoint; both paths may be
in a bucket (gs://). Only the parameters are read, not the optimizer state. The output
(bliperax/convert/params_io.py: `params/` + `bliperax.json`) holds the parameters
alone, as trained (float32 master weights, the run's layer layout: the trainer
restacks them for the next stage's config), and its card names the source: the
workdir, the step and the digest of the run's run_record.json. It appears only
when complete; an earlier export at --output is replaced, anything else there
is refused. The last line printed is a JSON object (output, source).
The same export also converts to the HF layout: tools/convert_checkpoint.py
--from=orbax --to=hf --src=OUTPUT.
"""
import json

from absl import app, flags, logging

from bliperax import cli

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Training workdir (latest step), its "
                                  "checkpoints/ or a step folder, or a parameter checkpoint.")
_OUTPUT = flags.DEFINE_string("output", None, "Where the parameter checkpoint goes.")
flags.mark_flags_as_required(["checkpoint", "output"])

BAD_INPUT = 2  # as bliperax.evaluate and bliperax.generate


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # After flag parsing: keeps --help fast.
  from bliperax import atomic  # pylint: disable=g-import-not-at-top
  from bliperax import paths  # pylint: disable=g-import-not-at-top
  from bliperax.convert import params_io  # pylint: disable=g-import-not-at-top
  from bliperax.infer import checkpoints  # pylint: disable=g-import-not-at-top

  output = paths.resolve(_OUTPUT.value)  # local or gs://
  # Replacing an earlier export is the point of rerunning; replacing a folder that
  # is not one (a mistyped --output) would lose it.
  if atomic.is_occupied(output) and not (output / params_io.CARD).exists():
    cli.fail(f"--output {output} exists and is not a parameter checkpoint "
             f"(no {params_io.CARD}); not replacing it", BAD_INPUT)
  try:
    written = checkpoints.export(_CHECKPOINT.value, output)
  except (checkpoints.CheckpointNotFound, params_io.CheckpointError, ValueError) as e:
    cli.fail(f"cannot export --checkpoint: {e}", BAD_INPUT)
  card = json.loads((written / params_io.CARD).read_text())
  print(json.dumps({"output": str(written), "source": card.get("source")}))
  return 0


if __name__ == "__main__":
  logging.set_verbosity(logging.WARNING)
  cli.run(main)
