"""The side-by-side benchmark workload: one definition read by both implementations.

`tools/bench_process.py` (bliperax) and `tools/bench_reference.py` (the PyTorch
reference) import this module, so both build the same model shapes, draw the same
inputs and time the same things. Only numpy and PIL here: the reference runs in its own
environment (transformers 4.41.2), without JAX.

Protocol, the same in both scripts (one process each, run alternately by
`tools/bench_side_by_side.py`):
  1. build the model with random weights and the optimizer          -> build_s
  2. TRAIN_STEPS training steps on `train_rows(i)`                   -> first_step_s,
     each waited for (the first one compiles, where anything does)     step_median_s
  3. one greedy generation of NEW_TOKENS tokens from `prompt_row()`  -> first_generate_s
  4. record `process_done_unix` (time.time()): the driver subtracts its own start time,
     so the whole process (imports included) is build + TRAIN_STEPS steps + one generate
  5. warm generations, not part of the whole process: time to first token and
     decode tokens/s over tokens 2..N from per-token host timestamps (the best of 2)
Every number is a JSON field of the script's last line.

The model is bliperax's `small` preset (bliperax/models/presets.py), spelled out below
so that the reference can build it without bliperax.
"""
from __future__ import annotations

import dataclasses
from typing import List, Tuple

import numpy as np

# --- model: the `small` preset --------------------------------------------------------
VISION = dict(image_size=112, patch_size=14, width=256, mlp_dim=1024, depth=4, num_heads=4)
RESAMPLER = dict(num_latents=32, depth=2, num_heads=4, head_dim=64, ff_mult=4)
TEXT = dict(width=512, depth=8, num_heads=8, num_kv_heads=8, head_dim=64, mlp_dim=1536,
            vocab_rows=32064, added_tokens=3, rope_theta=10000.0, max_positions=4096,
            sliding_window=2047)
ANYRES_GRIDS = ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))

# --- special tokens (the released tokenizer's ids) ------------------------------------
IMAGE_ID = 32012
END_OF_CHUNK_ID = 32014
PAD_ID = 32011
IGNORE = -100

# --- what is timed --------------------------------------------------------------------
SEED = 0
IMAGE_SIDE = 224          # a square image: anyres picks the 2x2 grid -> 1 + 4 = 5 crops
TRAIN_BATCH = 4           # rows per training step
TRAIN_TEXT_TOKENS = 96    # text tokens per row, around one image
TRAIN_STEPS = 6           # training steps per run; the median is over steps 2..6
LR, BETAS, EPS, WEIGHT_DECAY, GRAD_CLIP = 1e-4, (0.9, 0.95), 1e-8, 0.01, 1.0
PROMPT_TEXT_TOKENS = 40   # generation: batch 1, this many text tokens plus the image
NEW_TOKENS = 32           # greedy, no end token


@dataclasses.dataclass(frozen=True)
class Row:
  """One sequence before image expansion.

  ids: text token ids with one IMAGE_ID where the image goes.
  labels: the training targets aligned with `ids` (IGNORE off the loss: the image
    marker and the first token); None for a prompt.
  image: uint8[IMAGE_SIDE, IMAGE_SIDE, 3], the RGB image of the IMAGE_ID.
  """
  ids: List[int]
  labels: List[int] | None
  image: np.ndarray


def _image(rng: np.random.Generator) -> np.ndarray:
  return rng.integers(0, 256, size=(IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8)


def _text(rng: np.random.Generator, n: int) -> List[int]:
  return rng.integers(100, 30000, size=n).tolist()


def train_rows(step: int) -> List[Row]:
  """The TRAIN_BATCH rows of training step `step`: text[0], <image>, text[1:]; the loss
  is on text[1:]."""
  rng = np.random.default_rng([SEED, 1, step])
  rows = []
  for _ in range(TRAIN_BATCH):
    text = _text(rng, TRAIN_TEXT_TOKENS)
    ids = text[:1] + [IMAGE_ID] + text[1:]
    labels = [IGNORE, IGNORE] + text[1:]
    rows.append(Row(ids, labels, _image(rng)))
  return rows


def prompt_row() -> Row:
  """The generation prompt: text[0], <image>, text[1:], PROMPT_TEXT_TOKENS text tokens."""
  rng = np.random.default_rng([SEED, 2])
  text = _text(rng, PROMPT_TEXT_TOKENS)
  return Row(text[:1] + [IMAGE_ID] + text[1:], None, _image(rng))


def summary() -> dict:
  """The workload as a JSON-able dict (each benchmark prints it beside its numbers)."""
  return dict(model="small", vision=VISION, resampler=RESAMPLER, text=TEXT,
              train_batch=TRAIN_BATCH, crops_per_image=5, train_text_tokens=TRAIN_TEXT_TOKENS,
              prompt_text_tokens=PROMPT_TEXT_TOKENS, new_tokens=NEW_TOKENS,
              optimizer=dict(name="adamw", lr=LR, betas=BETAS, eps=EPS,
                             weight_decay=WEIGHT_DECAY, grad_clip=GRAD_CLIP,
                             frozen="vision encoder"),
              dtype="float32")


def median(xs: List[float]) -> float:
  return float(np.median(np.asarray(xs)))


def decode_rate(stamps: List[float]) -> Tuple[float, float]:
  """(tokens/s over tokens 2..N, seconds) from the host times each token arrived."""
  seconds = stamps[-1] - stamps[0]
  return (len(stamps) - 1) / seconds, seconds
