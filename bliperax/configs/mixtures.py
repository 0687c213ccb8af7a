"""The paper's data mixtures (bliperax/DESIGN.md §9): source names, shard folders, weights, crops.

Every stage config (`recipes.py`) and the tiny paper-layout shards of
`python -m bliperax.data.example_shards --layout=paper` read the mixtures here, so a
folder name is written once. A folder is relative to the stage's `root=DIR`, the
folder `tools/build_shards.py --output=ROOT/<folder>` filled.

Weights: MINT-1T's HTML:PDF:ArXiv = 7:5:1 is the paper's; the paper publishes no
other mixture weights, so the rest are this project's placeholders: tune them for a
real run (a weight of 0 switches a source off).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

import ml_collections

# What a source's records hold; example_shards writes tiny shards of each.
CONTENTS = ("caption", "ocr", "grounding", "interleaved", "chat", "multi_image_chat",
            "preference")


@dataclasses.dataclass(frozen=True)
class Source:
  """One shard set of a mixture.

  Attributes:
    name: the key in `cfg.data.sources` (the pipeline counts samples under it).
    folder: the shard folder under the stage's root.
    content: one of CONTENTS (schema kind, and task for captions).
    weight: relative share of the mixture.
    anyres: anyres crops (SFT) instead of one squashed 384 px crop (pre-training).
  """
  name: str
  folder: str
  content: str
  weight: float
  anyres: bool


def _sources(anyres: bool, *rows) -> Tuple[Source, ...]:
  return tuple(Source(name, folder, content, weight, anyres)
               for name, folder, content, weight in rows)


# Pre-training: one base crop (128 tokens) per image, loss on all text.
PRETRAIN = _sources(
    False,
    # name, folder under root, content, weight
    ("mint1t_html", "mint1t/html", "interleaved", 7.0),
    ("mint1t_pdf", "mint1t/pdf", "interleaved", 5.0),
    ("mint1t_arxiv", "mint1t/arxiv", "interleaved", 1.0),
    ("obelics", "obelics", "interleaved", 6.0),
    ("blip3_kale", "blip3_kale", "caption", 10.0),
    ("blip3_ocr", "blip3_ocr_200m", "ocr", 3.0),
    ("blip3_grounding", "blip3_grounding_50m", "grounding", 2.0),
    ("datacomp", "datacomp_1b", "caption", 10.0),
    ("cc12m", "cc12m", "caption", 2.0),
    ("cc3m", "cc3m", "caption", 1.0),
    ("vg", "vg", "caption", 0.5),
    ("sbu", "sbu", "caption", 0.5),
)

# SFT: ~1M public instruction samples (single-image and text-only chats), anyres.
SFT = _sources(True, ("sft", "sft_1m", "chat", 1.0))

# Interleaved SFT: multi-image chats (MANTIS, MMDU) plus part of the SFT set, anyres,
# at most 4 images per sample (the reference skips longer ones).
SFT_INTERLEAVED = _sources(
    True,
    ("mantis", "mantis", "multi_image_chat", 1.0),
    ("mmdu", "mmdu", "multi_image_chat", 1.0),
    ("sft", "sft_1m", "chat", 0.5),
)

# DPO (recipes.dpo): VLFeedback preference pairs, and pairs whose rejected answer is
# the SFT model's answer on a noised image (tools/make_preferences.py
# --output=ROOT/noised_pairs), drawn 1 : 1 (a placeholder: the paper adds one noised
# answer per prompt but publishes no ratio).
DPO = _sources(True, ("vlfeedback", "vlfeedback", "preference", 1.0),
               ("noised_pairs", "noised_pairs", "preference", 1.0))
# Safety (recipes.safety): VLGuard chats (tools/build_shards.py --format=vlguard) and SFT
# chats drawn 2 : 5, the paper's ~2k VLGuard and 5k SFT samples. The paper repeats one
# 5k subset; here SFT chats are drawn from the whole set (build a 5k folder to match).
SAFETY = _sources(True, ("vlguard", "vlguard", "chat", 2.0), ("sft", "sft_1m", "chat", 5.0))

MIXTURES: Dict[str, Tuple[Source, ...]] = {
    "pretrain": PRETRAIN, "sft": SFT, "sft_interleaved": SFT_INTERLEAVED, "dpo": DPO,
    "safety": SAFETY}


def folders() -> Dict[str, str]:
  """Every shard folder of every mixture -> its content (the paper's shard layout)."""
  out: Dict[str, str] = {}
  for mixture in MIXTURES.values():
    for source in mixture:
      if out.setdefault(source.folder, source.content) != source.content:
        raise ValueError(f"folder {source.folder!r} is listed with two contents")
  return out


def sources_config(mixture: Tuple[Source, ...], root: str) -> ml_collections.ConfigDict:
  """`cfg.data.sources` of a mixture whose shard folders lie under `root`."""
  root = root.rstrip("/")
  return ml_collections.ConfigDict({
      s.name: dict(paths=f"{root}/{s.folder}", weight=s.weight, anyres=s.anyres)
      for s in mixture})


# How rows are packed (bliperax/data/packing.py): next-fit, or best-fit over `open_rows`
# rows in flight; in every Grain config so `--config.data.packing=best_fit` works. The
# pipeline assumes the same for configs that lack them (a test keeps the two equal).
PACKING = dict(packing="next_fit", open_rows=8)


def grain_data(sources: ml_collections.ConfigDict, **overrides) -> ml_collections.ConfigDict:
  """A `cfg.data` for the Grain pipeline over `sources` (fields: experiments/data_example.py).

  Defaults: shuffled, repeated, packed rows, at most 4 crops per row and 4 images per
  sample, 8 worker processes; `overrides` replace any field.
  """
  d = ml_collections.ConfigDict(dict(
      kind="grain", seed=0, shuffle=True, num_epochs=0, pack=True, max_segments=0,
      max_crops=4, max_groups=0, max_images=4, worker_count=8, worker_buffer_size=2,
      read_threads=2, read_buffer_size=16, tokenizer="", reference_compatible=False,
      **PACKING))
  d.sources = sources
  d.update(overrides)
  return d
