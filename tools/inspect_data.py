r"""Prints decoded training batches and writes a contact sheet of their crops.

  python tools/inspect_data.py --config=experiments/data_example.py:root=/tmp/bliperax_example_shards --num=2 \
      [--out=/tmp/crops.png] [--rows=4] [--color=auto]

For each row of the first --num batches (built exactly as the trainer builds
them, in this process) it prints every packed sample (segment): its text with
each image block shown as `<image×k>` (k vision tokens) and the crops and
groups it uses, the loss spans highlighted (green, or ⟦…⟧ without colour),
and a summary line (tokens used, loss tokens, crops). Then the pipeline
counters as JSON. The PNG has one strip per row: its valid crops, left to
right, in sample order (global image first, then its grid crops).
"""
import json
import sys

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np
from PIL import Image

from bliperax import cli
from bliperax import configs
from bliperax.data import batch_spec
from bliperax.data import pipeline
from bliperax.data import tokenizer as tokenizer_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.")
_NUM = flags.DEFINE_integer("num", 1, "Batches to show.")
_ROWS = flags.DEFINE_integer("rows", 0, "Rows per batch to show (0: all).")
_OUT = flags.DEFINE_string("out", "/tmp/bliperax_crops.png", "Contact sheet (PNG).")
_COLOR = flags.DEFINE_enum("color", "auto", ["auto", "always", "never"], "Loss highlight.")
_THUMB = flags.DEFINE_integer("thumb", 96, "Crop size on the contact sheet (px).")
flags.mark_flags_as_required(["config"])

_IGNORE = batch_spec.IGNORE


def _marks(color: bool) -> tuple[str, str]:
  return ("\033[1;32m", "\033[0m") if color else ("⟦", "⟧")


def _runs(kinds: list) -> list[tuple[int, int, object]]:
  """[start, end, kind] of each run of equal kinds."""
  out, start = [], 0
  for i in range(1, len(kinds) + 1):
    if i == len(kinds) or kinds[i] != kinds[start]:
      out.append((start, i, kinds[start]))
      start = i
  return out


def segment_text(tokens, labels, is_slot, tokenizer, color: bool) -> str:
  """One sample's text: image blocks as <image×k>, loss spans marked.

  Text runs are decoded as differences of prefix decodings, so the spaces at
  run boundaries survive (decoding a run alone would drop its leading space).
  """
  open_mark, close_mark = _marks(color)
  kinds = ["image" if s else ("loss" if l != _IGNORE else "text")
           for s, l in zip(is_slot, labels)]
  text_ids = [int(t) for t, s in zip(tokens, is_slot) if not s]
  text_pos = np.cumsum([0] + [0 if s else 1 for s in is_slot])  # text ids before i
  out = []
  for start, end, kind in _runs(kinds):
    if kind == "image":
      out.append(f"<image×{end - start}>")
      continue
    a, b = text_pos[start], text_pos[end]
    piece = tokenizer.decode(text_ids[:b])[len(tokenizer.decode(text_ids[:a])):]
    out.append(f"{open_mark}{piece}{close_mark}" if kind == "loss" else piece)
  return "".join(out)


def describe_row(batch: dict, b: int, tokenizer, lat: int, color: bool) -> str:
  seg = batch["segment_ids"][b]
  t = len(seg)
  slots = batch["vision_slots"][b].reshape(-1, lat)
  is_slot = np.zeros(t, bool)
  slot_group = np.full(t, -1)
  for g, row in enumerate(slots):
    keep = row < t
    is_slot[row[keep]] = True
    slot_group[row[keep]] = g
  # Each group's crops: the crops its gather indices read.
  p = batch["group_index"].shape[-1]
  group_crops = [set((batch["group_index"][b, g] // p).tolist())
                 for g in range(slots.shape[0]) if batch["group_valid"][b, g]]
  lines = []
  for s in range(1, seg.max() + 1):
    cols = np.flatnonzero(seg == s)
    groups = sorted(set(slot_group[cols]) - {-1})
    crops = sorted(set().union(*(group_crops[g] for g in groups))) if groups else []
    loss = int(np.sum(batch["labels"][b, cols] != _IGNORE))
    lines.append(f"  [segment {s}] tokens {cols[0]}..{cols[-1]} ({len(cols)}), loss {loss}, "
                 f"groups {len(groups)}, crops {crops[0] if crops else '-'}.."
                 f"{crops[-1] if crops else '-'} ({len(crops)})")
    lines.append("    " + segment_text(batch["tokens"][b, cols], batch["labels"][b, cols],
                                       is_slot[cols], tokenizer, color).replace("\n", "⏎\n    "))
  used = int(np.sum(seg > 0))
  lines.insert(0, f"row {b}: {seg.max()} sample(s), {used}/{t} tokens, "
               f"{int(batch['crop_valid'][b].sum())}/{batch['crop_valid'].shape[1]} crops, "
               f"{int(np.sum(batch['labels'][b] != _IGNORE))} loss tokens")
  return "\n".join(lines)


def contact_sheet(batches: list[dict], thumb: int) -> Image.Image:
  """One strip per row: its valid crops (uint8 pixels as they are; float crops in
  [-1, 1] de-normalized)."""
  strips = []
  for batch in batches:
    for b in range(batch["crops"].shape[0]):
      crops = batch["crops"][b][batch["crop_valid"][b]]
      if crops.dtype != np.uint8:
        crops = np.clip((crops + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
      tiles = [Image.fromarray(c).resize((thumb, thumb)) for c in crops]
      strips.append(tiles)
  width = max([len(s) for s in strips] + [1]) * (thumb + 2)
  sheet = Image.new("RGB", (width, max(len(strips), 1) * (thumb + 2)), (40, 40, 40))
  for r, tiles in enumerate(strips):
    for c, tile in enumerate(tiles):
      sheet.paste(tile, (c * (thumb + 2), r * (thumb + 2)))
  return sheet


def main(argv) -> None:
  del argv
  cfg = _CONFIG.value
  if cfg.data.get("kind") != "grain":
    raise app.UsageError(f"--config has data.kind {cfg.data.get('kind')!r}; this tool shows "
                         "the Grain pipeline (kind 'grain')")
  model_cfg = configs.model_config(cfg)
  pc = pipeline.from_config(cfg)
  source = pipeline.GrainSource(pc, model_cfg, keys=None)
  tokenizer = tokenizer_lib.load(pc.tokenizer, pc.reference_compatible)
  color = _COLOR.value == "always" or (_COLOR.value == "auto" and sys.stdout.isatty())
  lat = model_cfg.resampler.num_latents
  batches = []
  for i in range(_NUM.value):
    batch = next(source)
    batches.append(batch)
    rows = batch["tokens"].shape[0] if not _ROWS.value else min(_ROWS.value,
                                                                batch["tokens"].shape[0])
    print(f"=== batch {i}: " + ", ".join(f"{k} {list(v.shape)}" for k, v in batch.items()))
    for b in range(rows):
      print(describe_row(batch, b, tokenizer, lat, color))
  contact_sheet(batches, _THUMB.value).save(_OUT.value)
  print(f"contact sheet: {_OUT.value}")
  print(json.dumps(source.stats()))
  source.close()


if __name__ == "__main__":
  cli.run(main)
