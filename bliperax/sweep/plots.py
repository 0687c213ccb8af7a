"""The sweep's plots as PNG files (matplotlib, headless): DIR/plots/.

- `loss.png`: every member's training loss against the step, one panel per train
  stage, all members in each panel.
- `<metric>_vs_<swept key>.png`: each evaluation metric (and the final training loss)
  of the finished members against each swept value. Members that differ only in
  that key form one line; the other swept keys' values label the lines. Numeric values are placed on a numeric
  axis (log scale where they span 8x or more, as latents 2, 4, ..., 128 do); others
  (bools, strings) on an axis of categories in first-seen order.
"""
from __future__ import annotations

import io
import re
from typing import Any, Dict, List, Sequence

from bliperax.sweep import files
from bliperax.sweep import results as results_lib
from bliperax.sweep import spec

_UNSAFE = re.compile(r"[^A-Za-z0-9_.+=-]+")


def _pyplot():
  import logging  # pylint: disable=g-import-not-at-top
  import matplotlib  # pylint: disable=g-import-not-at-top
  # Its font cache notice would land in the sweep's output through absl's handler.
  logging.getLogger("matplotlib").setLevel(logging.WARNING)
  matplotlib.use("Agg")  # no display needed (a server, CI)
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _save(fig, path) -> str:
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
  files.write_bytes(path, buf.getvalue())
  return str(path)


def loss_curves(plt, curves: Dict[str, Dict[str, List]], path):
  stage_names: List[str] = []
  for per_stage in curves.values():
    stage_names += [s for s in per_stage if s not in stage_names]
  if not stage_names:
    return None
  fig, axes = plt.subplots(1, len(stage_names), figsize=(5.5 * len(stage_names), 4),
                           squeeze=False)
  for ax, stage in zip(axes[0], stage_names):
    for member, per_stage in curves.items():
      points = per_stage.get(stage) or []
      if points:  # (a one-point curve shows as a marker)
        ax.plot([p[0] for p in points], [p[1] for p in points], label=member, lw=1.2,
                marker="o" if len(points) == 1 else None)
    ax.set_title(f"training loss: {stage}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
  axes[0][-1].legend(fontsize=7, loc="upper right")
  path = _save(fig, path)
  plt.close(fig)
  return path


def _numeric(values: Sequence[Any]) -> bool:
  return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def metric_vs_key(plt, rows, metric: str, key: str, short: Dict[str, str], path):
  """One figure: `metric` against swept `key`; None when no member has both."""
  # Finished members only: a running member's last loss is not its final one.
  have = [r for r in rows if key in r["overrides"] and r.get("status") == "done"
          and isinstance(r.get(metric), (int, float))]
  if not have:
    return None
  xs_all = [spec.plain(r["overrides"][key]) for r in have]
  numeric = _numeric(xs_all)
  categories: List[str] = []
  if not numeric:
    for x in xs_all:
      label = results_lib.cell(x)
      if label not in categories:
        categories.append(label)
  groups: Dict[str, List] = {}
  for row, x in zip(have, xs_all):
    others = ", ".join(f"{short[k]}={results_lib.cell(v)}"
                       for k, v in row["overrides"].items() if k != key)
    xpos = x if numeric else categories.index(results_lib.cell(x))
    groups.setdefault(others, []).append((xpos, row[metric]))
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for label, points in groups.items():
    points.sort()
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
            label=label or None)
  if numeric and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 8:
    ax.set_xscale("log", base=2)
  if numeric:
    ticks = sorted(set(xs_all))
    ax.set_xticks(ticks)
    ax.set_xticklabels([results_lib.cell(t) for t in ticks])
  else:
    ax.set_xticks(range(len(categories)))
    ax.set_xticklabels(categories)
  ax.set_xlabel(key)
  ax.set_ylabel(metric)
  ax.set_title(f"{metric} vs {short[key]}")
  ax.grid(alpha=0.3)
  if any(groups):
    ax.legend(fontsize=7)
  path = _save(fig, path)
  plt.close(fig)
  return path


def write_all(workdir, rows: Sequence[Dict[str, Any]],
              curves: Dict[str, Dict[str, List]]) -> List[str]:
  """Every plot of the module docstring; returns the files written.
  Raises ImportError without matplotlib."""
  plt = _pyplot()
  out_dir = files.path(workdir) / "plots"
  written = []
  path = loss_curves(plt, curves, out_dir / "loss.png")
  if path:
    written.append(path)
  keys = results_lib.swept_keys(rows)
  short = spec.short_keys(keys)
  for metric in results_lib.metric_names(rows) + ["final_loss"]:
    for key in keys:
      name = _UNSAFE.sub("-", f"{metric}_vs_{short[key]}").strip("-")
      path = metric_vs_key(plt, rows, metric, key, short, out_dir / f"{name}.png")
      if path:
        written.append(path)
  return written
