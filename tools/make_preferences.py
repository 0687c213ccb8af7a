r"""Preference pairs for DPO from a chat shard set: the model's answers on noised images.

  python tools/make_preferences.py --input=DATA/sft_1m --checkpoint=CKPT/sft \
      --output=DATA/noised_pairs [--noise_level=0.5] [--noise_schedule=cosine] \
      [--sampled=N --temperature=1.0] [--max_new_tokens=256] [--batch_size=32] \
      [--limit=N] [--seed=0] [--num_shards=1] [--name=preference] [--overwrite]

For every single-turn chat of --input (a question with images and its answer) the
model of --checkpoint (a training workdir, a step folder or a parameter checkpoint,
as `python -m bliperax.generate` takes) answers the question greedily on a noised
copy of each image, and the pair (prompt, chosen = the chat's answer, rejected = the
model's answer) is written as a `schema.Preference` with the clean images: the
paper's extra rejected responses for DPO, answers the image does not support. The
work is bliperax/infer/preferences.py; this file is its command line.

Noise (bliperax/data/noise.py): the forward process of a diffusion model on the
model-input crops, x_t = sqrt(ᾱ)·x + sqrt(1 − ᾱ)·ε, at --noise_level ℓ ∈ [0, 1]
(the fraction t/T of the chain; 0 = the clean image, 1 = pure noise) through
--noise_schedule: cosine (ᾱ(0.5) ≈ 0.49) or DDPM's linear β schedule over T =
1000 steps (ᾱ(0.5) ≈ 0.08). ε is drawn from a generator seeded by (--seed, the
record's position in --input, counted over its shards in path order): the same run
writes the same pairs, and a record's noise does not depend on --batch_size or --limit.

--sampled=N adds N answers sampled on the clean image (--temperature, --top_p) as
further rejected responses: the model's own wrong answers. They are deterministic
for a given --seed, --batch_size and input.

A pair is dropped (and counted under its reason) when the rejected answer equals
the chosen one after normalisation (case folded, whitespace collapsed, surrounding
punctuation stripped: "same_as_chosen"), repeats another rejected answer of the same
question ("duplicate"), is empty ("empty_text"), or breaks another rule of
`schema.Preference` (its reason); a chat without images has no noised pair
("no_image", counted with the drops). Records that are not single-turn chats are
skipped ("not_a_chat", "multi_turn"), as are chats whose images do not decode
("unreadable_image") and records that do not decode ("corrupt_record").

Shards go through the shard builder's atomic writer (bliperax/data/records.py) as
--output/NAME-0000i-of-0000N.array_record, with --output/NAME.summary.json. The last
line on stdout is a JSON summary: questions read, used and skipped by reason, pairs
written and dropped by reason (a few examples each), the noise, the shards. Exit
status: 0 done; 1 bad flags; 2 missing input or checkpoint, existing output (see
--overwrite), or no single-turn chat in the input.
"""
from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags, logging

from bliperax import cli
from bliperax import paths

_INPUT = flags.DEFINE_string("input", None, "Chat shard set: a folder, glob or shard files "
                             "(comma-separated).")
_OUTPUT = flags.DEFINE_string("output", None, "Folder for the preference shards (created if "
                              "needed).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Training workdir (latest step), a "
                                  "step folder, or a parameter checkpoint.")
_NOISE_LEVEL = flags.DEFINE_float("noise_level", 0.5, "Fraction t/T of the diffusion chain: "
                                  "0 = clean image, 1 = pure noise.", lower_bound=0.0,
                                  upper_bound=1.0)
_NOISE_SCHEDULE = flags.DEFINE_enum("noise_schedule", "cosine", ["cosine", "linear"],
                                    "ᾱ schedule: cosine (Improved DDPM) or linear β over "
                                    "1000 steps (DDPM).")
_SAMPLED = flags.DEFINE_integer("sampled", 0, "Also N answers sampled on the clean image "
                                "as rejected responses.", lower_bound=0)
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "--sampled: sampling temperature.",
                                  lower_bound=0.0)
_TOP_P = flags.DEFINE_float("top_p", 1.0, "--sampled: nucleus sampling mass.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 256, "Most tokens per generated answer.",
                                lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Prompts decoded together.",
                                   lower_bound=1)
_LIMIT = flags.DEFINE_integer("limit", 0, "Use the first N single-turn chats (0 = all).",
                              lower_bound=0)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the noise and of the sampled answers.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 1, "Output shards; pair i goes to shard "
                                   "i % num_shards.", lower_bound=1)
_NAME = flags.DEFINE_string("name", "preference", "Shard file prefix.")
_ANYRES = flags.DEFINE_bool("anyres", True, "Anyres crops (else the squashed base crop).")
_DTYPE = flags.DEFINE_enum("dtype", "auto", ["auto", "float32", "bfloat16"],
                           "Weights, compute and KV cache: auto = bfloat16 on GPU/TPU, "
                           "float32 on CPU.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace existing shards of --name in "
                               "--output (the old ones stay until the new set is complete).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar on stderr.")
flags.mark_flags_as_required(["input", "output", "checkpoint"])
flags.register_validator("top_p", lambda p: 0 < p <= 1, "--top_p must be in (0, 1]")

BAD_INPUT = 2  # as tools/build_shards.py and bliperax.generate


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  from bliperax.data import records  # pylint: disable=g-import-not-at-top
  try:
    source = records.open_shards(_INPUT.value.split(","))
  except (FileNotFoundError, ValueError) as e:
    cli.fail(f"--input: {e}", BAD_INPUT)
  # jax only after the input check, so a wrong --input fails fast.
  import jax  # pylint: disable=g-import-not-at-top
  from bliperax.data import noise  # pylint: disable=g-import-not-at-top
  from bliperax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from bliperax.infer import checkpoints  # pylint: disable=g-import-not-at-top
  from bliperax.infer import preferences  # pylint: disable=g-import-not-at-top
  try:
    params, model_cfg = checkpoints.load(_CHECKPOINT.value)
  except (checkpoints.CheckpointNotFound, ValueError) as e:
    cli.fail(f"cannot load --checkpoint: {e}", BAD_INPUT)
  params, model_cfg = checkpoints.for_inference(
      params, model_cfg, checkpoints.inference_dtype(_DTYPE.value, jax.default_backend()))
  try:
    writer = records.ShardSetWriter(_OUTPUT.value, _NAME.value, _NUM_SHARDS.value,
                                    _OVERWRITE.value)
  except (FileExistsError, ValueError, OSError) as e:
    cli.fail(f"--output: {e}", BAD_INPUT)
  options = preferences.Options(
      noise_level=_NOISE_LEVEL.value, noise_schedule=_NOISE_SCHEDULE.value,
      sampled=_SAMPLED.value, temperature=_TEMPERATURE.value, top_p=_TOP_P.value,
      max_new_tokens=_MAX_NEW.value, batch_size=_BATCH_SIZE.value, seed=_SEED.value,
      anyres=_ANYRES.value)
  start = time.time()
  with writer, tqdm(total=None if _LIMIT.value else len(source), unit=" records",
                    file=sys.stderr, mininterval=1.0, disable=not _PROGRESS.value) as bar:
    tally = preferences.make_preferences(params, model_cfg, tokenizer_lib.Tokenizer(),
                                         source, writer, options, _LIMIT.value,
                                         progress=bar.update)
    if not tally.used:  # leaving the block uncommitted removes the temporary shards
      cli.fail(f"--input {_INPUT.value}: no single-turn chat among its {tally.read} "
               f"record(s) (skipped: {dict(tally.skipped)})", BAD_INPUT)
    shards = writer.commit()
  summary = {"input": _INPUT.value, "checkpoint": _CHECKPOINT.value, "output": _OUTPUT.value,
             **tally.summary(),
             "noise": {"level": options.noise_level, "schedule": options.noise_schedule,
                       "alpha_bar": noise.alpha_bar(options.noise_level,
                                                    options.noise_schedule),
                       "seed": options.seed},
             "sampled": options.sampled, "max_new_tokens": options.max_new_tokens,
             "shards": [{"path": str(p), "samples": n} for p, n in shards],
             "seconds": round(time.time() - start, 3)}
  paths.write_text_atomic(os.path.join(_OUTPUT.value, f"{_NAME.value}.summary.json"),
                          json.dumps(summary, indent=1))
  print(json.dumps(summary))
  return 0


if __name__ == "__main__":
  logging.set_verbosity(logging.WARNING)
  cli.run(main)
