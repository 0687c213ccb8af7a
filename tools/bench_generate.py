r"""Decoding speed of a model preset: compile, prefill, decode tokens/s; one JSON line each.

  python tools/bench_generate.py [--preset=small] [--batch_sizes=1,16] [--new_tokens=32]

Random weights of the preset (decoding speed does not depend on their values), one
prompt per row of --prompt_tokens text tokens plus one image (a square photo-sized
image, so anyres makes the global crop plus a 2x2 grid), greedy decoding of
--new_tokens tokens with no end token, through `bliperax.infer.generate.generate`,
the same function as `python -m bliperax.generate`. For each batch size:

  first_call_s      the first generate call: compiles prefill and decode loop, runs
  time_to_first_token_s  a warm one-token call without a callback (prefill + first token)
  prefill_s         the same (the first token is the prefill's argmax)
  decode_tokens_per_s    per row, warm, streamed: tokens 2..N from the host times each
                    token arrived; decode_tokens_per_s_all_rows: times the batch
  device_loop_tokens_per_s  per row, warm, without a callback: (N - 1) / (the call less
                    the one-token call)
  init_s            drawing the random parameters (jitted init)

and, since decoding at batch 1 reads every language-model weight once per token (the
input embedding only one row of it), what this machine's memory allows:

  decode_weight_mb  megabytes a decoded token reads: the `lm/` parameters less the
                    input-embedding tables (`decode_weight_bytes`)
  read_gb_per_s     a jitted float32 matrix-vector product [1, 512] x [512, N] over
                    the same number of bytes, best of 20: memory read speed as XLA's
                    own product kernel reaches it here
  bound_tokens_per_s  read_gb_per_s / decode_weight_mb: tokens/s at batch 1 if
                    decoding did nothing but read the weights once
  fraction_of_bound   device_loop_tokens_per_s / bound_tokens_per_s (batch 1)

Compare runs on the same machine only.
"""
import json
import math
import os
import time

from absl import flags

from bliperax import cli

_PRESET = flags.DEFINE_string("preset", "small", "Model preset (bliperax.models.presets).")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "16"], "Batch sizes to measure.")
_PROMPT = flags.DEFINE_integer("prompt_tokens", 40, "Text tokens per prompt.", lower_bound=1)
_NEW = flags.DEFINE_integer("new_tokens", 32, "Tokens to decode.", lower_bound=2)
_DTYPE = flags.DEFINE_enum("dtype", "auto", ["auto", "float32", "bfloat16"],
                           "Weights, compute and KV cache (auto: bfloat16 on GPU/TPU, "
                           "float32 on CPU), as python -m bliperax.generate --dtype.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Warm calls; the fastest is reported.",
                                lower_bound=1)


def decode_weight_bytes(params) -> int:
  """Bytes of the parameters one decoded token reads: every `lm/` array except the
  input-embedding tables (`lm/embed/`), of which a token gathers one row."""
  from bliperax.convert import layout  # pylint: disable=g-import-not-at-top
  return sum(math.prod(leaf.shape) * leaf.dtype.itemsize
             for path, leaf in layout.flatten(params).items()
             if path.startswith("lm/") and not path.startswith("lm/embed/"))


def read_gb_per_s(num_bytes: int, repeats: int = 20) -> float:
  """GB/s of a jitted float32 [1, 512] x [512, N] product over `num_bytes` of matrix."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  columns = max(1, num_bytes // (4 * 512))
  matrix = jnp.ones((512, columns), jnp.float32)
  vector = jnp.ones((1, 512), jnp.float32)
  product = jax.jit(lambda v, m: v @ m)
  product(vector, matrix).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    product(vector, matrix).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return matrix.size * 4 / best / 1e9


def _prompt(cfg, batch: int, prompt_tokens: int):
  """A left-padded batch of `batch` prompts, each with one image and random text."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from bliperax.data import batch as batch_lib  # pylint: disable=g-import-not-at-top
  from bliperax.data import batch_spec  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  side = 2 * cfg.vision.image_size
  pixels = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
  vision = batch_lib.prepare_image(Image.fromarray(pixels), cfg, anyres=True)
  examples = []
  for _ in range(batch):
    text = rng.integers(100, 30000, size=prompt_tokens).tolist()
    ids = text[:1] + [batch_lib.IMAGE_ID] + text[1:]
    examples.append(batch_lib.expand(ids, None, [vision], batch_spec.VisionDims.of(cfg)))
  return batch_lib.collate(examples, cfg, pad_id=32011, side="left")


def main(argv):
  del argv
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from bliperax.infer import checkpoints  # pylint: disable=g-import-not-at-top
  from bliperax.infer import generate as generate_lib  # pylint: disable=g-import-not-at-top
  from bliperax.models import presets, xgenmm  # pylint: disable=g-import-not-at-top

  cfg = presets.get(_PRESET.value)
  t0 = time.perf_counter()
  params = nn.meta.unbox(xgenmm.init_params(cfg, jax.random.PRNGKey(0)))
  dtype = checkpoints.inference_dtype(_DTYPE.value, jax.default_backend())
  params, cfg = checkpoints.for_inference(params, cfg, dtype)
  jax.block_until_ready(params)
  init_s = time.perf_counter() - t0
  weight_bytes = decode_weight_bytes(params)
  bandwidth = read_gb_per_s(weight_bytes)
  bound = bandwidth * 1e9 / weight_bytes
  new = _NEW.value
  for batch in (int(b) for b in _BATCH_SIZES.value):
    prompt = _prompt(cfg, batch, _PROMPT.value)

    def timed_call():
      stamps = []
      start = time.perf_counter()
      generate_lib.generate(params, cfg, prompt, new, eos_ids=(),
                            on_token=lambda step, tokens: stamps.append(time.perf_counter()))
      return start, stamps

    start, stamps = timed_call()
    first_call = stamps[-1] - start
    best = None
    for _ in range(_REPEATS.value):
      start, stamps = timed_call()
      ttft, decode = stamps[0] - start, stamps[-1] - stamps[0]
      if best is None or decode < best[1]:
        best = (ttft, decode)
    _, decode = best

    def untimed_call(max_new):  # no callback: the whole decode is one device loop
      start = time.perf_counter()
      generate_lib.generate(params, cfg, prompt, max_new, eos_ids=())
      return time.perf_counter() - start

    untimed_call(1), untimed_call(new)  # compile both loops
    # Prefill + first token from a one-token call, and the device loop's rate from the
    # same reference point (subtracting a prefill timed in another kind of call could
    # go negative under load).
    ttft = min(untimed_call(1) for _ in range(_REPEATS.value))
    loop_s = min(untimed_call(new) for _ in range(_REPEATS.value))
    print(json.dumps(dict(
        preset=_PRESET.value, dtype=dtype, batch=batch,
        prompt_length=int(prompt["tokens"].shape[1]),
        crops_per_row=int(prompt["crop_valid"].sum(axis=1).max()), new_tokens=new,
        init_s=round(init_s, 2), first_call_s=round(first_call, 2),
        time_to_first_token_s=round(ttft, 4), prefill_s=round(ttft, 4),
        decode_tokens_per_s=round((new - 1) / decode, 1),
        decode_tokens_per_s_all_rows=round(batch * (new - 1) / decode, 1),
        decode_ms_per_token=round(1000 * decode / (new - 1), 2),
        device_loop_tokens_per_s=round((new - 1) / (loop_s - ttft), 1)
        if loop_s > ttft else None,
        decode_weight_mb=round(weight_bytes / 1e6, 1),
        read_gb_per_s=round(bandwidth, 1), bound_tokens_per_s=round(bound, 1),
        fraction_of_bound=round((new - 1) / (loop_s - ttft) / bound, 3)
        if batch == 1 and loop_s > ttft else None,
        backend=jax.default_backend(), cpus=os.cpu_count(),
        malloc_env={k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        load_avg_1m=round(os.getloadavg()[0], 1))), flush=True)


if __name__ == "__main__":
  cli.run(main)
