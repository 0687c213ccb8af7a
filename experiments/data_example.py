r"""The Grain data pipeline in config: a tiny runnable run over small shard sets of every kind.

  python -m bliperax.data.example_shards --out=/tmp/bliperax_example_shards \
      [--images=DIR_OF_PHOTOS]
  python -m bliperax.train --config=experiments/data_example.py:root=/tmp/bliperax_example_shards \
      --workdir=/tmp/tiny_data
  python tools/inspect_data.py --config=experiments/data_example.py:root=/tmp/bliperax_example_shards \
      --num=2

Knobs: root=DIR (default /tmp/bliperax_example_shards), workers=N. The paper's
mixtures and stages are bliperax/configs/mixtures.py and recipes.py
(experiments/xgenmm_4b/, experiments/xgenmm_14b/).

cfg.data fields (bliperax/data/pipeline.py reads them):
  kind             "grain"
  seed             shuffle seed (per source: crc32(seed/name)); shuffle=False keeps order
  sources          name -> {paths: "glob,dir,...", weight, anyres} or {tfds: {...}, weight,
                   anyres}; see bliperax/data/mixture.py and tfds_source.py
  num_epochs       0 = repeat forever
  pack             False: one sample per row (padding); max_segments caps samples per row
  packing          "next_fit" (default) or "best_fit" (fuller rows; open_rows, default 8,
                   rows in flight; bliperax/data/packing.py)
  max_crops        C, crops per row; max_groups G (0 = C)
  max_images       per-sample image cap (the reference: 4); documents keep their first
                   max_images, chats over the cap are skipped
  worker_count     mp_prefetch processes (0: in the training process)
  worker_buffer_size, read_threads, read_buffer_size   prefetch depths
  thread_prefetch  batches a thread of the training process fetches ahead (0: none)
  tokenizer        SentencePiece model ("" = bundled); reference_compatible
  system           the system turn of chats (default: the reference's; None: no turn)
cfg.train.seq_len is T and cfg.train.global_batch the batch over all processes.
"""
import ml_collections

from bliperax import configs
from bliperax.configs import mixtures


def tiny_sources(root: str) -> ml_collections.ConfigDict:
  """The shard sets of `python -m bliperax.data.example_shards`."""
  return ml_collections.ConfigDict(dict(
      caption=dict(paths=f"{root}/caption", weight=4.0, anyres=False),
      interleaved=dict(paths=f"{root}/interleaved", weight=2.0, anyres=False),
      text=dict(paths=f"{root}/text", weight=1.0, anyres=False),
      chat=dict(paths=f"{root}/chat", weight=2.0, anyres=True),
  ))


def get_config(arg=None):
  knobs = configs.parse_arg(arg)
  c = configs.base("tiny")
  c.total_steps, c.log_every, c.checkpoint_every = 12, 1, 4
  c.optim.lr, c.optim.warmup_steps = 1e-3, 2
  c.train.global_batch, c.train.seq_len = 4, 256
  root = knobs.get("root", "/tmp/bliperax_example_shards")
  # Anyres chats: up to 5 crops per image, two images per chat.
  c.data = mixtures.grain_data(tiny_sources(root), max_crops=12,
                               worker_count=int(knobs.get("workers", 0)))
  return c
