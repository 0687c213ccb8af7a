"""The sweep's result table, rebuilt from the members' folders alone.

`collect(DIR)` reads, for every member:
- DIR/sweep.json (written when a sweep starts or is launched: the members' names,
  overrides and order, the stages, each train stage's total_steps);
- DIR/<member>/member.json (bliperax/sweep/runner.py: status, stage wall times), when
  the member ran through this runner (a launched member has none: its status then
  follows from its files);
- DIR/<member>/<train stage>/metrics.jsonl (bliperax/train/metrics.py);
- DIR/<member>/<evaluate stage>.json (bliperax.evaluate --output).
Every read and listing goes through etils.epath, so DIR may be `gs://...`.

`write(DIR, rows, curves)` writes DIR/results.jsonl (one object per member),
DIR/results.md (Markdown, swept values as columns), DIR/results.csv, and the plots
(bliperax/sweep/plots.py). The runner calls the same two functions at its end, so
`--collect` rebuilds exactly the table a run wrote.

A row: name, overrides, status, the evaluation metrics (`<stage>/<key>`: numbers
under the evaluate stage's `metrics` keys of its JSON, nested dicts flattened, e.g.
`eval/accuracy/read`), then from the last train stage's metrics.jsonl: final_loss,
steps, step_time_s, tokens_per_s, mfu (medians over its logged records; mfu where
the trainer knew the chip's peak), and wall_s (every stage's, from member.json).
`train` holds those numbers per train stage.
"""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import statistics
from typing import Any, Dict, List, Optional, Sequence, Tuple

from bliperax.sweep import files
from bliperax.sweep import spec

SWEEP_FILE = "sweep.json"
MEMBER_FILE = "member.json"
TRAIN_FIELDS = ("final_loss", "steps", "step_time_s", "tokens_per_s", "mfu")
_SUMMARY_FIELDS = TRAIN_FIELDS + ("wall_s",)
_MEDIANS = {"step_time_s": "step_time_s", "tokens_per_s": "tokens_per_s", "mfu": "mfu"}


def sweep_record(plan, members) -> Dict[str, Any]:
  """DIR/sweep.json's content for `members` of `plan` (bliperax/sweep/plan.py)."""
  return {
      "config": plan.config,
      "stages": [{"name": s.name, "kind": s.kind, "metrics": list(s.metrics)}
                 for s in plan.stages],
      "members": [{"name": m.name, "index": m.index, "overrides": spec.plain(m.overrides),
                   "total_steps": {s.name: plan.total_steps(m, s) for s in plan.stages
                                   if s.kind == "train"}}
                  for m in members],
  }


def merge_sweep_record(workdir: str, record: Dict[str, Any]) -> None:
  """Writes DIR/sweep.json, keeping members an earlier run (e.g. --only) listed."""
  path = files.path(workdir) / SWEEP_FILE
  old = files.read_json(path) or {}
  names = {m["name"] for m in record["members"]}
  kept = [m for m in old.get("members", []) if m["name"] not in names]
  merged = dict(record, members=sorted(kept + record["members"], key=lambda m: m["index"]))
  files.write_json(path, merged)


def _flatten(value: Any, prefix: str, out: Dict[str, float]) -> None:
  if isinstance(value, bool):
    return
  if isinstance(value, (int, float)):
    out[prefix] = value
  elif isinstance(value, dict):
    for k, v in value.items():
      _flatten(v, f"{prefix}/{k}", out)


def eval_metrics(doc: Optional[dict], stage: str, keys: Sequence[str]) -> Dict[str, float]:
  """Numbers under `keys` of an evaluate stage's output JSON, as `stage/key/...`."""
  out: Dict[str, float] = {}
  for key in keys:
    if isinstance(doc, dict) and key in doc:
      _flatten(doc[key], f"{stage}/{key}", out)
  return out


def train_summary(records: List[dict]) -> Dict[str, Any]:
  """final_loss, steps and medians of a train stage's metrics.jsonl records."""
  if not records:
    return {}
  out: Dict[str, Any] = {"final_loss": records[-1].get("loss"),
                         "steps": records[-1].get("step")}
  for field, key in _MEDIANS.items():
    values = [r[key] for r in records if isinstance(r.get(key), (int, float))]
    out[field] = statistics.median(values) if values else None
  return out


def _members(workdir) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
  """sweep.json and the member list: its members in order, then any other folder
  with a member.json (sorted)."""
  root = files.path(workdir)
  sweep = files.read_json(root / SWEEP_FILE) or {}
  members = list(sweep.get("members", []))
  known = {m["name"] for m in members}
  extra = []
  if root.exists():
    for child in root.iterdir():
      if child.name not in known and (child / MEMBER_FILE).exists():
        record = files.read_json(child / MEMBER_FILE) or {}
        extra.append({"name": child.name, "index": record.get("index", 1 << 30),
                      "overrides": record.get("overrides", {}), "total_steps": {}})
  members += sorted(extra, key=lambda m: (m["index"], m["name"]))
  return sweep, members


def collect(workdir) -> Tuple[List[Dict[str, Any]], Dict[str, Dict[str, List[Tuple]]]]:
  """-> (rows, curves): a row per member and {member: {train stage: [(step, loss)]}}."""
  root = files.path(workdir)
  sweep, members = _members(workdir)
  rows, curves = [], {}
  for member in members:
    name = member["name"]
    directory = root / name
    record = files.read_json(directory / MEMBER_FILE) or {}
    stage_list = sweep.get("stages") or [
        {"name": s, "kind": r.get("kind"), "metrics": r.get("metrics", [])}
        for s, r in record.get("stages", {}).items()]
    row: Dict[str, Any] = {"name": name, "overrides": member.get("overrides", {}),
                           "status": record.get("status")}
    train: Dict[str, Dict[str, Any]] = {}
    metrics: Dict[str, float] = {}
    curves[name] = {}
    finished = True
    for stage in stage_list:
      kind, stage_name = stage["kind"], stage["name"]
      stage_record = record.get("stages", {}).get(stage_name, {})
      if kind == "train":
        records = files.read_jsonl(directory / stage_name / "metrics.jsonl")
        summary = train_summary(records)
        summary["wall_s"] = stage_record.get("wall_s")
        train[stage_name] = summary
        curves[name][stage_name] = [(r["step"], r["loss"]) for r in records
                                    if isinstance(r.get("loss"), (int, float))]
        total = member.get("total_steps", {}).get(stage_name)
        finished &= bool(records) and (total is None or records[-1].get("step", 0) >= total)
      elif kind == "evaluate":
        doc = files.read_json(directory / f"{stage_name}.json")
        finished &= doc is not None
        metrics.update(eval_metrics(doc, stage_name, stage.get("metrics") or ["accuracy"]))
    if row["status"] is None:  # launched elsewhere: no runner recorded it
      started = any(curves[name].values())
      row["status"] = "done" if finished and stage_list else (
          "running" if started else "pending")
    row.update(metrics)
    last = train[list(train)[-1]] if train else {}
    for field in TRAIN_FIELDS:
      row[field] = last.get(field)
    row["wall_s"] = record.get("wall_s")
    row["train"] = train
    rows.append(row)
  return rows, curves


def metric_names(rows: Sequence[Dict[str, Any]]) -> List[str]:
  """The evaluation metric columns, in first-seen order."""
  names: List[str] = []
  for row in rows:
    for key in row:
      if "/" in key and key not in names:
        names.append(key)
  return names


def swept_keys(rows: Sequence[Dict[str, Any]]) -> List[str]:
  keys: List[str] = []
  for row in rows:
    for key in row["overrides"]:
      if key not in keys:
        keys.append(key)
  return keys


def cell(value: Any) -> str:
  if value is None:
    return "-"
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, float):
    return f"{value:.4g}"
  if isinstance(value, (list, tuple)):
    return "(" + ", ".join(cell(v) for v in value) + ")"
  return str(value).replace("|", "\\|")


def table_columns(rows) -> Tuple[List[str], List[str], List[str]]:
  """(swept keys, metric columns, train/summary columns shown)."""
  summary = [f for f in _SUMMARY_FIELDS if any(r.get(f) is not None for r in rows)]
  return swept_keys(rows), metric_names(rows), summary


def markdown(rows: Sequence[Dict[str, Any]]) -> str:
  keys, metrics, summary = table_columns(rows)
  short = spec.short_keys(keys)
  header = ["member"] + [short[k] for k in keys] + ["status"] + metrics + summary
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    cells = [row["name"]] + [cell(row["overrides"][k]) if k in row["overrides"] else ""
                             for k in keys]
    cells += [row["status"] or "-"] + [cell(row.get(m)) for m in metrics]
    cells += [cell(row.get(f)) for f in summary]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[Dict[str, Any]]) -> str:
  keys, metrics, _ = table_columns(rows)
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(["member"] + keys + ["status"] + metrics + list(_SUMMARY_FIELDS))
  for row in rows:
    values = [json.dumps(spec.plain(row["overrides"][k])) if k in row["overrides"] else ""
              for k in keys]
    values = [v[1:-1] if v.startswith('"') else v for v in values]  # strings unquoted
    writer.writerow([row["name"]] + values + [row["status"]]
                    + [_raw(row.get(m)) for m in metrics]
                    + [_raw(row.get(f)) for f in _SUMMARY_FIELDS])
  return buf.getvalue()


def _raw(value: Any) -> str:
  return "" if value is None else repr(value) if isinstance(value, float) else str(value)


def plots_available() -> bool:
  return importlib.util.find_spec("matplotlib") is not None


def write(workdir, rows, curves, log=print) -> List[str]:
  """Writes results.jsonl/.md/.csv and the plots; returns the paths written."""
  root = files.path(workdir)
  written = []
  for name, text in (("results.jsonl", "".join(json.dumps(r) + "\n" for r in rows)),
                     ("results.md", markdown(rows)), ("results.csv", to_csv(rows))):
    files.write_text(root / name, text)
    written.append(str(root / name))
  from bliperax.sweep import plots  # pylint: disable=g-import-not-at-top
  try:
    written += plots.write_all(root, rows, curves)
  except ImportError as e:
    log(f"no plots: {e} (pip install matplotlib)")
  return written
