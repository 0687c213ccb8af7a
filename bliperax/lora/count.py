"""Trainable fraction of a LoRA setup, from shapes alone (jax.eval_shape: nothing allocated).

  python -m bliperax.lora.count --preset=xgenmm_4b --rank=64

prints one line per adapted module kind and, last, a JSON object {"preset", "rank",
"targets", "adapter_params", "lm_params", "total_params", "fraction_of_lm",
"fraction_of_total", "by_module"}. The paper trains LoRA on "about 2.5%" of the
language model; rank 64 on every Phi-3 projection gives 2.63% of the 4B model's.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from typing import Dict, Optional, Sequence

from bliperax.convert import layout
from bliperax.lora import adapters, config, plan
from bliperax.models import presets, xgenmm
from bliperax.models.config import XGenMMConfig


def report(cfg: XGenMMConfig, targets: Sequence[str], rank: int,
           preset: Optional[str] = None) -> Dict[str, object]:
  """Adapter parameters against the language model's and the whole model's.

  `by_module` counts per HF Linear kind as bliperax names them (q_proj holds the
  A shared with k_proj and v_proj).
  """
  cfg = cfg.with_numerics(scan_layers=True)  # one traced block per stack: fast, same counts
  boxed = xgenmm.abstract_params(cfg)
  sites = plan.make(cfg, targets, boxed)
  flat = layout.flatten(adapters.abstract(sites, boxed, rank))
  params = layout.flatten(boxed)
  by_module: Dict[str, int] = {}
  for path, leaf in flat.items():
    module = path.split("/")[-2]
    by_module[module] = by_module.get(module, 0) + math.prod(leaf.shape)
  n = sum(by_module.values())
  lm = sum(math.prod(v.shape) for k, v in params.items() if k.startswith("lm/"))
  total = sum(math.prod(v.shape) for v in params.values())
  return {"preset": preset, "rank": rank, "targets": list(targets), "adapter_params": n,
          "lm_params": lm, "total_params": total, "fraction_of_lm": n / lm,
          "fraction_of_total": n / total, "by_module": dict(sorted(by_module.items()))}


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="xgenmm_4b", choices=sorted(presets.PRESETS))
  parser.add_argument("--rank", type=int, default=config.defaults().rank)
  parser.add_argument("--targets", nargs="+", default=list(config.PHI3_ALL_LINEAR),
                      help="regexes over kernel paths (default: every Phi-3 projection)")
  args = parser.parse_args(argv)
  out = report(presets.get(args.preset), args.targets, args.rank, args.preset)
  for module, count in out["by_module"].items():
    print(f"{module:12s} {count:>14,d}")
  print(f"{'adapters':12s} {out['adapter_params']:>14,d}  = {100 * out['fraction_of_lm']:.3f}% "
        f"of the language model ({out['lm_params']:,d}), "
        f"{100 * out['fraction_of_total']:.3f}% of the whole model")
  print(json.dumps(out))
  return out


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  main()
