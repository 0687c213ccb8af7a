r"""Chat with a checkpoint: one prompt, its images, streamed answer (KV cache).

  python -m bliperax.generate --checkpoint=/tmp/digits_run/sft \
      --image=a.png --image=b.png --prompt="What is the sum of these digits?"

Each --image is one `<image>` of the prompt, in order. Without markers in the
prompt, one `<image>\n` per image is put in front (the SFT convention); with
markers, their count must equal the number of images. Without --image the
prompt is text only. Decoding is greedy
(--temperature=0) or sampled (--temperature, --top_k, --top_p, --seed), stops
at `<|end|>` (or `<|endoftext|>`), and prints tokens as they come. Exits
non-zero with a message on a missing checkpoint or an image that does not decode.
"""
import sys

from absl import app, flags, logging

from bliperax import cli

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Training workdir (latest step), a "
                                  "step folder, or a parameter checkpoint.")
_IMAGES = flags.DEFINE_multi_string("image", [], "Image file; repeat for several images.")
_PROMPT = flags.DEFINE_string("prompt", None, "The user turn.")
_SYSTEM = flags.DEFINE_string("system", None, "System turn (default: none, as the digits "
                              "SFT config).")
_ANYRES = flags.DEFINE_bool("anyres", True, "Anyres crops (else the squashed base crop).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Most tokens to generate (the prompt "
                                "plus these must fit the model's max_positions).",
                                lower_bound=1)
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 = greedy; else sampling "
                                  "temperature.", lower_bound=0.0)
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k most likely (0 = all).",
                               lower_bound=0)
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_DTYPE = flags.DEFINE_enum("dtype", "auto", ["auto", "float32", "bfloat16"],
                           "Weights, compute and KV cache: auto = bfloat16 on GPU/TPU, "
                           "float32 on CPU.")
flags.mark_flags_as_required(["checkpoint", "prompt"])
flags.register_validator("top_p", lambda p: 0 < p <= 1, "--top_p must be in (0, 1]")


def _fail(message: str) -> int:
  print(f"error: {message}", file=sys.stderr)
  return 2


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax  # after flags: keeps --help fast
  from bliperax.data import batch as batch_lib
  from bliperax.data import tokenizer as tokenizer_lib
  from bliperax.infer import checkpoints
  from bliperax.infer import evaluate as eval_lib
  from bliperax.infer import generate as generate_lib

  images = []
  for path in _IMAGES.value:
    try:
      with open(path, "rb") as f:
        images.append(f.read())
    except OSError as e:
      return _fail(f"cannot read --image {path}: {e}")
  prompt = _PROMPT.value
  if tokenizer_lib.IMAGE_TOKEN not in prompt:
    prompt = f"{tokenizer_lib.IMAGE_TOKEN}\n" * len(images) + prompt
  tokenizer = tokenizer_lib.Tokenizer()
  try:
    params, model_cfg = checkpoints.load(_CHECKPOINT.value)
  except (checkpoints.CheckpointNotFound, ValueError) as e:
    return _fail(f"cannot load --checkpoint: {e}")
  params, model_cfg = checkpoints.for_inference(
      params, model_cfg, checkpoints.inference_dtype(_DTYPE.value, jax.default_backend()))
  try:
    example = eval_lib.prompt_example(prompt, images, model_cfg, tokenizer, _ANYRES.value,
                                      _SYSTEM.value)
  except ValueError as e:  # undecodable image, markers vs images
    names = ", ".join(_IMAGES.value) or "none"
    return _fail(f"{e} (images: {names})")
  batch = batch_lib.collate_prompts([example], model_cfg, tokenizer.pad_id)
  emitted = []

  def stream(step, tokens):
    del step
    token = int(tokens[0])
    if token in tokenizer.eos_ids:
      return
    emitted.append(token)
    # Decode the whole answer each time: SentencePiece joins pieces (spaces, bytes).
    text = tokenizer.decode(emitted, skip_special_tokens=True)
    previous = tokenizer.decode(emitted[:-1], skip_special_tokens=True)
    print(text[len(previous):], end="", flush=True)

  rng = jax.random.PRNGKey(_SEED.value) if _TEMPERATURE.value > 0 else None
  try:
    generate_lib.generate(params, model_cfg, batch, _MAX_NEW.value, eos_ids=tokenizer.eos_ids,
                          pad_id=tokenizer.pad_id, temperature=_TEMPERATURE.value,
                          top_k=_TOP_K.value, top_p=_TOP_P.value, rng=rng, on_token=stream)
  except ValueError as e:  # max_new_tokens past max_positions: raised before any token
    return _fail(f"--max_new_tokens: {e}")
  print(flush=True)
  return 0


if __name__ == "__main__":
  logging.set_verbosity(logging.WARNING)
  cli.run(main)
