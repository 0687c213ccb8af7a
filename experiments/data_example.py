r"""The Grain data pipeline in config: the paper's pre-training mixture, and a tiny runnable run.

The full config names the BLIP-3 pre-training mixture (bliperax/DESIGN.md §9) as ArrayRecord
shard sets under `root` (build them with tools/build_shards.py):

  python -m bliperax.train --config=experiments/data_example.py:root=/data/blip3 \
      --workdir=/ckpt/pretrain

The tiny variant trains the tiny model on small shard sets of every sample kind:

  python -m bliperax.data.example_shards --out=/tmp/bliperax_example_shards \
      [--images=DIR_OF_PHOTOS]
  python -m bliperax.train --config=experiments/data_example.py:tiny=1 --workdir=/tmp/tiny_data
  python tools/inspect_data.py --config=experiments/data_example.py:tiny=1 --num=2

Knobs: tiny=1, root=DIR, sft=1 (the SFT mixture: anyres chats), workers=N.

cfg.data fields (bliperax/data/pipeline.py reads them):
  kind             "grain"
  seed             shuffle seed (per source: crc32(seed/name)); shuffle=False keeps order
  sources          name -> {paths: "glob,dir,...", weight, anyres} or {tfds: {...}, weight,
                   anyres}; see bliperax/data/mixture.py and tfds_source.py
  num_epochs       0 = repeat forever
  pack             False: one sample per row (padding); max_segments caps samples per row
  max_crops        C, crops per row; max_groups G (0 = C)
  max_images       per-sample image cap (the reference: 4); documents keep their first
                   max_images, chats over the cap are skipped
  worker_count     mp_prefetch processes (0: in the training process)
  worker_buffer_size, read_threads, read_buffer_size   prefetch depths
  tokenizer        SentencePiece model ("" = bundled); reference_compatible
cfg.train.seq_len is T and cfg.train.global_batch the batch over all processes.
"""
import ml_collections

from bliperax import configs

# MINT-1T's HTML:PDF:ArXiv ratio is the paper's (7:5:1). The paper gives no other
# weights, so the rest are illustrative: tune them for a real run.
PRETRAIN_MIXTURE = (
    # name, shard folder under root, weight
    ("mint1t_html", "mint1t/html", 7.0),
    ("mint1t_pdf", "mint1t/pdf", 5.0),
    ("mint1t_arxiv", "mint1t/arxiv", 1.0),
    ("obelics", "obelics", 6.0),
    ("blip3_kale", "blip3_kale", 10.0),
    ("blip3_ocr", "blip3_ocr_200m", 3.0),
    ("blip3_grounding", "blip3_grounding_50m", 2.0),
    ("datacomp", "datacomp_1b", 10.0),
    ("cc12m", "cc12m", 2.0),
    ("cc3m", "cc3m", 1.0),
    ("vg", "vg", 0.5),
    ("sbu", "sbu", 0.5),
)

SFT_MIXTURE = (
    ("sft", "sft_1m", 1.0, True),
    ("interleaved_sft", "mantis_mmdu", 0.3, True),
)


def pretrain_sources(root: str) -> ml_collections.ConfigDict:
  """The pre-training mixture: one base crop per image (128 tokens), ArrayRecord shards."""
  return ml_collections.ConfigDict({
      name: dict(paths=f"{root}/{folder}", weight=weight, anyres=False)
      for name, folder, weight in PRETRAIN_MIXTURE})


def sft_sources(root: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      name: dict(paths=f"{root}/{folder}", weight=weight, anyres=anyres)
      for name, folder, weight, anyres in SFT_MIXTURE})


def tiny_sources(root: str) -> ml_collections.ConfigDict:
  """The shard sets of `python -m bliperax.data.example_shards`."""
  return ml_collections.ConfigDict(dict(
      caption=dict(paths=f"{root}/caption", weight=4.0, anyres=False),
      interleaved=dict(paths=f"{root}/interleaved", weight=2.0, anyres=False),
      text=dict(paths=f"{root}/text", weight=1.0, anyres=False),
      chat=dict(paths=f"{root}/chat", weight=2.0, anyres=True),
  ))


def data_config(sources: ml_collections.ConfigDict, **overrides) -> ml_collections.ConfigDict:
  d = ml_collections.ConfigDict(dict(
      kind="grain", seed=0, shuffle=True, num_epochs=0, pack=True, max_segments=0,
      max_crops=4, max_groups=0, max_images=4, worker_count=2, worker_buffer_size=2,
      read_threads=2, read_buffer_size=16, tokenizer="", reference_compatible=False))
  d.sources = sources
  d.update(overrides)
  return d


def get_config(arg=None):
  knobs = configs.parse_arg(arg)
  tiny = bool(int(knobs.get("tiny", 0)))
  sft = bool(int(knobs.get("sft", 0)))
  workers = int(knobs.get("workers", 0 if tiny else 8))
  if tiny:
    c = configs.base("tiny")
    c.total_steps, c.log_every, c.checkpoint_every = 12, 1, 4
    c.optim.lr, c.optim.warmup_steps = 1e-3, 2
    c.train.global_batch, c.train.seq_len = 4, 256
    root = knobs.get("root", "/tmp/bliperax_example_shards")
    # Anyres chats: up to 5 crops per image, two images per chat.
    c.data = data_config(tiny_sources(root), max_crops=12, worker_count=workers)
    return c
  c = configs.base("xgenmm_4b")
  root = knobs.get("root", "/data/blip3")
  if sft:
    # bliperax/DESIGN.md §9: anyres SFT, lr 2e-5, batch 64; <= 4 images of up to 5 crops each.
    c.optim.lr, c.optim.warmup_steps = 2e-5, 2000
    c.train.global_batch, c.train.seq_len = 64, 4096
    c.data = data_config(sft_sources(root), max_crops=20, worker_count=workers)
  else:
    c.train.global_batch, c.train.seq_len = 512, 2048
    # One 128-token crop per image: at most 2048 / 128 = 16 images in a row.
    c.data = data_config(pretrain_sources(root), max_crops=16, worker_count=workers)
  return c
