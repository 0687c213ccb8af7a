"""Tiny xGen-MM on synthetic CPU-sized batches: seconds per dozen steps (tests, smoke runs).

  python -m bliperax.train --config=experiments/tiny.py --workdir=/tmp/tiny
  python -m bliperax.train --config=experiments/tiny.py:scan=1,accum=2 --workdir=/tmp/tiny2

Knobs: scan (0/1), remat, dtype, batch, accum.
"""
from bliperax import configs


def get_config(arg=None):
  k = configs.parse_arg(arg)
  c = configs.base("tiny")
  c.total_steps = 12
  c.log_every = 1
  c.checkpoint_every = 4
  c.model.numerics.update(dtype=k.get("dtype", "float32"), param_dtype="float32",
                          scan_layers=bool(int(k.get("scan", 0))),
                          remat_policy=k.get("remat", "none"))
  c.optim.update(lr=1e-3, warmup_steps=2, final_lr_ratio=0.1, b1=0.9, b2=0.95, eps=1e-8,
                 weight_decay=0.01, grad_clip=1.0, freeze=("^vision/",))
  c.train.update(global_batch=int(k.get("batch", 8)), seq_len=48,
                 accum_steps=int(k.get("accum", 1)))
  return c
