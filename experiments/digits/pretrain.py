r"""Digits, stage 1: caption pre-training of the digits model (all towers trainable).

  python tools/make_digits.py --output=/tmp/digits
  python -m bliperax.train --config=experiments/digits/pretrain.py:root=/tmp/digits \
      --workdir=/tmp/digits_run/pretrain

Knobs: root=DIR (tools/make_digits.py --output), steps=N, batch=B, workers=N.
One squashed base crop per image (4 vision tokens), captions packed into rows of
64 tokens. The ViT starts from scratch here, so nothing is frozen. The head runs
only at loss positions (at most 40 of a row's 64; the image slots carry no loss).
"""
from bliperax import configs


def get_config(arg=None):
  return configs.digits_stage(
      arg, steps=400, seq_len=64, loss_tokens_per_row=40, freeze=(), data_seed=0,
      max_crops=6, sources={"caption": (1.0, False)})
