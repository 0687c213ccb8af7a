r"""Digits, stage 1: caption pre-training of the digits model (all towers trainable).

  python tools/make_digits.py --output=/tmp/digits
  python -m bliperax.train --config=experiments/digits/pretrain.py:root=/tmp/digits \
      --workdir=/tmp/digits_run/pretrain

Knobs: root=DIR (tools/make_digits.py --output), steps=N, batch=B, workers=N.
One squashed base crop per image (4 vision tokens), captions packed into rows of
64 tokens. The ViT starts from scratch here, so nothing is frozen. The head runs
only at loss positions (at most 40 of a row's 64; the image slots carry no loss).
"""
import ml_collections

from bliperax import configs


def get_config(arg=None):
  knobs = configs.parse_arg(arg)
  root = knobs.get("root", "/tmp/digits")
  c = configs.base("digits")
  c.total_steps = int(knobs.get("steps", 400))
  c.log_every = 25
  c.checkpoint_every = c.total_steps
  c.keep_checkpoints = 1
  c.optim.update(lr=3e-3, warmup_steps=20, final_lr_ratio=0.05, b2=0.98,
                 weight_decay=0.01, freeze=())
  c.train.update(global_batch=int(knobs.get("batch", 16)), seq_len=64,
                 loss_tokens_per_row=40)
  c.data = ml_collections.ConfigDict(dict(
      kind="grain", seed=0, shuffle=True, num_epochs=0, pack=True, max_segments=0,
      max_crops=6, max_groups=0, max_images=4, worker_count=int(knobs.get("workers", 0)),
      worker_buffer_size=2, thread_prefetch=2, read_threads=1, read_buffer_size=32,
      tokenizer="",
      reference_compatible=False))
  c.data.sources = ml_collections.ConfigDict(dict(
      caption=dict(paths=f"{root}/train/caption", weight=1.0, anyres=False)))
  return c
