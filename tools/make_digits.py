r"""Writes the digits dataset (bliperax/data/digits.py) as ArrayRecord shard sets.

  python tools/make_digits.py --output=/tmp/digits [--num_sum=6000] [--num_read=6000]

Uses scikit-learn's bundled digits (no download). Prints the summary as JSON.
"""
import json

from absl import app, flags

from bliperax import cli

_OUTPUT = flags.DEFINE_string("output", None, "Folder for train/ and heldout/ shard sets.")
_NUM_SUM = flags.DEFINE_integer("num_sum", 6000, "Training samples of the sum task.")
_NUM_READ = flags.DEFINE_integer("num_read", 6000, "Training samples of the reading task.")
_NUM_HELDOUT = flags.DEFINE_integer("num_heldout", 200,
                                    "Held-out samples of the sum and reading tasks "
                                    "(vqa uses every held-out image).")
_CAPTION_COPIES = flags.DEFINE_integer("caption_copies", 4,
                                       "Jittered copies of each training digit among the "
                                       "captions (besides the digit as is).")
_NUM_MOVED = flags.DEFINE_integer("num_moved", 3000,
                                  "Training sums of moved/turned digits (train/sum_moved: "
                                  "the digits DPO's preference prompts).")
_SEED = flags.DEFINE_integer("seed", 0, "Split and sampling seed.")
flags.mark_flag_as_required("output")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from bliperax.data import digits  # after flags: keeps --help fast
  summary = digits.write_dataset(_OUTPUT.value, num_sum=_NUM_SUM.value,
                                 num_read=_NUM_READ.value, num_heldout=_NUM_HELDOUT.value,
                                 caption_copies=_CAPTION_COPIES.value, seed=_SEED.value,
                                 num_moved=_NUM_MOVED.value)
  print(json.dumps(summary))
  return 0


if __name__ == "__main__":
  cli.run(main)
