"""Tiny xGen-MM on synthetic CPU-sized batches: seconds per dozen steps (tests, smoke runs).

  python -m bliperax.train --config=experiments/tiny.py --workdir=/tmp/tiny
  python -m bliperax.train --config=experiments/tiny.py:scan=1,accum=2 --workdir=/tmp/tiny2
"""
import ml_collections


def _parse(arg):
  out = {}
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    out[key.strip()] = value.strip()
  return out


def get_config(arg=None):
  knobs = _parse(arg)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 12
  c.log_every = 1
  c.checkpoint_every = 4
  c.keep_checkpoints = 3

  c.model = ml_collections.ConfigDict()
  c.model.preset = "tiny"
  c.model.init_from = ""  # a converted parameter checkpoint (tools/convert_checkpoint.py)
  c.model.numerics = ml_collections.ConfigDict(dict(
      dtype=knobs.get("dtype", "float32"), param_dtype="float32",
      scan_layers=bool(int(knobs.get("scan", 0))), remat_policy=knobs.get("remat", "none")))

  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
  c.rules = ()  # () = bliperax.sharding.DEFAULT_RULES

  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-3, warmup_steps=2, final_lr_ratio=0.1, b1=0.9, b2=0.95, eps=1e-8,
      weight_decay=0.01, grad_clip=1.0, freeze=("^vision/",)))

  c.train = ml_collections.ConfigDict(dict(
      global_batch=int(knobs.get("batch", 8)), seq_len=48, accum_steps=int(knobs.get("accum", 1))))
  c.data = ml_collections.ConfigDict(dict(kind="synthetic", seed=0))
  c.distributed = ml_collections.ConfigDict(dict(coordinator="", num_processes=1, process_id=0))
  return c
