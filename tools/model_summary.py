"""Per-tower parameter counts of a model preset, computed abstractly (nothing allocated).

  python tools/model_summary.py --preset=xgenmm_4b

Prints one line per tower and per top-level module, then as the last line a JSON
object {"preset", "total", "towers": {...}, "bytes_float32", "bytes_bfloat16"}.
"""
import json
import os
import re

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags # noqa: E402

from bliperax import cli
import numpy as np  # noqa: E402

from bliperax.convert import layout  # noqa: E402
from bliperax.models import presets, xgenmm  # noqa: E402

_PRESET = flags.DEFINE_enum("preset", "xgenmm_4b", sorted(presets.PRESETS),
                            "Model preset to count.")
_TOWERS = {"vision": "SigLIP vision tower", "resampler": "Perceiver resampler",
           "lm": "Phi-3 language model"}


def main(argv):
  del argv
  cfg = presets.get(_PRESET.value)
  flat = layout.flatten(xgenmm.abstract_params(cfg))
  counts = {}
  for path, leaf in flat.items():
    parts = path.split("/")
    if parts[1] in ("decoder", "embed", "head") and len(parts) > 2:
      parts = [parts[0], parts[1] + "/" + parts[2]] + parts[3:]
    parts[1] = re.sub(r"layers_\d+$", "layers (all)", parts[1])
    counts.setdefault(parts[0], {}).setdefault(parts[1], 0)
    counts[parts[0]][parts[1]] += int(np.prod(leaf.shape))
  towers = {t: sum(c.values()) for t, c in counts.items()}
  total = sum(towers.values())
  for tower, modules in counts.items():
    print(f"{tower:10s} {towers[tower]:>16,d}  {_TOWERS.get(tower, '')}")
    for name, n in sorted(modules.items()):
      print(f"  {name:28s} {n:>16,d}")
  print(f"{'total':10s} {total:>16,d}")
  print(json.dumps({"preset": _PRESET.value, "total": total, "towers": towers,
                    "bytes_float32": 4 * total, "bytes_bfloat16": 2 * total}))


if __name__ == "__main__":
  cli.run(main)
