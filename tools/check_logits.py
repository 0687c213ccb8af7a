"""Checks a converted HF xGen-MM checkpoint against a golden fixture of the PyTorch reference.

  python tools/check_logits.py --hf_checkpoint=DIR --golden=DIR --images=DIR

The checkpoint goes through bliperax's converter; every input is rebuilt from the
fixture's meta.json and the raw images with bliperax's own preprocessing and
tokenizer; then pixels, ids, ViT features, resampler inputs/masks/outputs, hidden
states, selected logits, argmax, per-token NLL, loss and greedy generations are
compared with expected.npz. Prints a table and, as the last line, a JSON object with
the worst error per stage and "ok". Exit status 0 only if every stage passes
(1 on a mismatch, 2 on unreadable input).
"""
import json
import os
import pathlib
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags # noqa: E402

from bliperax import cli

_HF = flags.DEFINE_string("hf_checkpoint", None, "HF xGen-MM checkpoint directory "
                          "(config.json + model.safetensors or shards with index).")
_GOLDEN = flags.DEFINE_string("golden", None, "Fixture directory with meta.json and "
                              "expected.npz (format: bliperax/DESIGN.md §11).")
_IMAGES = flags.DEFINE_string("images", None, "Directory holding the fixture's images "
                              "(default: <golden>/../../images).")
flags.mark_flags_as_required(["hf_checkpoint", "golden"])


def main(argv):
  del argv
  from bliperax.convert.safetensors_io import CheckpointError
  from bliperax.infer import logit_check
  golden = pathlib.Path(_GOLDEN.value)
  images = pathlib.Path(_IMAGES.value) if _IMAGES.value else golden.parent.parent / "images"
  for path, what in ((golden / "meta.json", "fixture meta.json"),
                     (golden / "expected.npz", "fixture expected.npz"), (images, "images dir")):
    if not path.exists():
      print(f"error: {what} not found: {path}", file=sys.stderr)
      return 2
  try:
    results = logit_check.run(pathlib.Path(_HF.value), golden, images,
                              log=lambda s: print(f"[check_logits] {s}", file=sys.stderr))
  except (CheckpointError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(logit_check.table(results))
  s = logit_check.summary(results)
  print(json.dumps(s))
  return 0 if s["ok"] else 1


if __name__ == "__main__":
  cli.run(lambda argv: sys.exit(main(argv)))
