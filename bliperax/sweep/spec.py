"""Sweep members: override dicts on dot paths, the helpers that build them, their names.

A sweep config's `get_sweep()` returns a list of members, each a dict of overrides
`{"model.resampler.num_latents": 8, "data.anyres": False}` (a `"stage:dot.path"` key
overrides that stage's config only, bliperax/sweep/stages.py). The helpers compose as
in big_vision and Kauldron:

  product({"model.resampler.num_latents": [2, 4, 8]}, seed=[0, 1])   # 6 members
  zip_({"optim.lr": [1e-3, 3e-3]}, {"optim.warmup_steps": [10, 20]})  # 2 members
  product(zip_(...), {"train.global_batch": [8, 16]}) + [{"name": "baseline"}]

An argument of product/zip_ is either an axes dict (each key mapped to the list of its
values) or a list of members (another product or zip); keyword arguments are axes
whose names have no dots. In a product the first argument varies slowest.

Each member is named from its overrides (`member_names`): `num_latents-8_anyres-false`
(last dot-path component, value); a `"name"` key names a member explicitly. Names are
directory names under the sweep's workdir, so they must not change between runs of the
same sweep: a name depends on the member's own overrides only, except where two
members would otherwise get the same name (then both get a short hash of their
overrides appended).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import re
from typing import Any, Dict, List, Mapping, Sequence, Union

NAME_KEY = "name"  # a member's explicit name, not an override
MAX_NAME = 80  # longer names are cut and get a hash: they are directory names
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+=-]+")

Member = Dict[str, Any]
Part = Union[Mapping[str, Sequence[Any]], Sequence[Mapping[str, Any]]]


class SweepError(ValueError):
  """A sweep definition that cannot be run; the message says which member and why."""


def _members_of(part: Part, where: str) -> List[Member]:
  """An axes dict -> its product; a list of member dicts -> itself (copied)."""
  if isinstance(part, Mapping):
    return _axes_product(part, where)
  if isinstance(part, (list, tuple)) and all(isinstance(m, Mapping) for m in part):
    return [dict(m) for m in part]
  raise SweepError(f"{where}: expected an axes dict {{'a.b': [values]}} or a list of "
                   f"member dicts, got {type(part).__name__}")


def _axes_product(axes: Mapping[str, Sequence[Any]], where: str) -> List[Member]:
  for key, values in axes.items():
    # A string is a sequence too, but as an axis it is always a forgotten pair of brackets.
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
      raise SweepError(f"{where}: axis {key!r} must be a list of values, got {values!r}")
  keys = list(axes)
  return [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k] for k in keys))]


def _merge(members: Sequence[Member], where: str) -> Member:
  out: Member = {}
  for m in members:
    for key, value in m.items():
      if key in out and _canonical(out[key]) != _canonical(value):
        raise SweepError(f"{where}: {key!r} is set twice in one member "
                         f"({out[key]!r} and {value!r})")
      out[key] = value
  return out


def product(*parts: Part, **axes: Sequence[Any]) -> List[Member]:
  """Every combination of the parts' members (the first part varies slowest)."""
  groups = [_members_of(p, "product") for p in parts]
  if axes:
    groups.append(_axes_product(axes, "product"))
  return [_merge(combo, "product") for combo in itertools.product(*groups)]


def zip_(*parts: Part, **axes: Sequence[Any]) -> List[Member]:
  """The parts' members merged position by position; all must be equally long.

  Each key of an axes dict is zipped on its own (`zip_({"a": [1, 2], "b": [3, 4]})` is
  two members), as is each keyword axis; a list of members is zipped as a whole.
  """
  groups = []
  for part in parts:
    if isinstance(part, Mapping):
      groups += [_axes_product({k: v}, "zip_") for k, v in part.items()]
    else:
      groups.append(_members_of(part, "zip_"))
  groups += [_axes_product({k: v}, "zip_") for k, v in axes.items()]
  lengths = sorted({len(g) for g in groups})
  if len(lengths) > 1:
    raise SweepError(f"zip_: parts of different lengths {lengths}")
  return [_merge(combo, "zip_") for combo in zip(*groups)]


def _canonical(value: Any) -> str:
  return json.dumps(plain(value), sort_keys=True)


def plain(value: Any) -> Any:
  """A member value as JSON keeps it: tuples become lists (the comparison form)."""
  if isinstance(value, (list, tuple)):
    return [plain(v) for v in value]
  if isinstance(value, Mapping):
    return {str(k): plain(v) for k, v in value.items()}
  return value


def as_config_value(value: Any) -> Any:
  """A member value as a ConfigDict field holds it: lists (JSON's) become tuples."""
  if isinstance(value, (list, tuple)):
    return tuple(as_config_value(v) for v in value)
  return value


def normalize(raw: Any) -> List[Member]:
  """get_sweep()'s result checked: a list of dicts with string keys and plain values."""
  if isinstance(raw, Mapping) or not isinstance(raw, (list, tuple)):
    raise SweepError(f"get_sweep() must return a list of member dicts, got "
                     f"{type(raw).__name__}")
  out = []
  for i, member in enumerate(raw):
    if not isinstance(member, Mapping):
      raise SweepError(f"member {i}: expected a dict of overrides, got {member!r}")
    for key, value in member.items():
      if not isinstance(key, str) or not key:
        raise SweepError(f"member {i}: override key {key!r} is not a dot path")
      _check_value(value, f"member {i}: {key}")
    if NAME_KEY in member and not isinstance(member[NAME_KEY], str):
      raise SweepError(f"member {i}: its {NAME_KEY!r} must be a string")
    out.append({k: as_config_value(v) for k, v in member.items()})
  if not out:
    raise SweepError("get_sweep() returned no members")
  return out


def _check_value(value: Any, where: str) -> None:
  if value is None or isinstance(value, (bool, int, float, str)):
    return
  if isinstance(value, (list, tuple)):
    for v in value:
      _check_value(v, where)
    return
  raise SweepError(f"{where}: value {value!r} is not a bool, number, string, None or a "
                   "tuple of those (what a config flag can carry)")


def overrides_of(member: Member) -> Dict[str, Any]:
  """The member's overrides: everything but its explicit name."""
  return {k: v for k, v in member.items() if k != NAME_KEY}


def short_value(value: Any) -> str:
  """A value as it appears in a member name: `false`, `8`, `0.001`, `a+b`, `none`."""
  if value is None:
    return "none"
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, float):
    return f"{value:g}"
  if isinstance(value, (list, tuple)):
    return "+".join(short_value(v) for v in value) or "none"
  return _UNSAFE.sub("-", str(value)).strip("-._") or "empty"


def _key_parts(key: str) -> List[str]:
  stage, _, path = key.rpartition(":")
  return ([stage] if stage else []) + path.split(".")


def short_keys(keys: Sequence[str]) -> Dict[str, str]:
  """Each dot path -> its last component, with more components (and a stage prefix)
  where two keys of `keys` would otherwise read the same."""
  parts = {k: _key_parts(k) for k in keys}
  depth = {k: 1 for k in keys}
  while True:
    shown = {k: ".".join(parts[k][-depth[k]:]) for k in keys}
    clashes = [k for k in keys if list(shown.values()).count(shown[k]) > 1
               and depth[k] < len(parts[k])]
    if not clashes:
      return shown
    for k in clashes:
      depth[k] += 1


def _hash(member: Member) -> str:
  return hashlib.sha256(_canonical(overrides_of(member)).encode()).hexdigest()[:6]


def base_name(member: Member) -> str:
  """The name from the member's own overrides (see the module docstring)."""
  if NAME_KEY in member:
    name = short_value(member[NAME_KEY])
  else:
    overrides = overrides_of(member)
    shown = short_keys(list(overrides))
    name = "_".join(f"{short_value(shown[k])}-{short_value(v)}"
                    for k, v in overrides.items()) or "base"
  if len(name) > MAX_NAME:
    name = f"{name[:MAX_NAME - 7]}-{_hash(member)}"
  return name


def member_names(members: Sequence[Member]) -> List[str]:
  """Stable, distinct names; explicit names must be distinct themselves."""
  names = [base_name(m) for m in members]
  canon = [_canonical(overrides_of(m)) for m in members]
  for i in range(len(members)):
    for j in range(i):
      if canon[i] == canon[j]:
        raise SweepError(f"members {j} and {i} have the same overrides {canon[i]}")
  explicit = [base_name(m) for m in members if NAME_KEY in m]
  dup = sorted({n for n in explicit if explicit.count(n) > 1})
  if dup:
    raise SweepError(f"two members are named {dup[0]!r}")
  for name in explicit:
    if name.startswith("_"):  # DIR/_setup, DIR/aot: the sweep's own folders
      raise SweepError(f"member name {name!r}: names starting with '_' are reserved")
  out = []
  for i, name in enumerate(names):
    if names.count(name) > 1 and NAME_KEY not in members[i]:
      name = f"{name[:MAX_NAME - 7]}-{_hash(members[i])}"
    out.append(name)
  if len(set(out)) != len(out):  # a hashed name meeting an explicit one
    dup = sorted({n for n in out if out.count(n) > 1})
    raise SweepError(f"two members are named {dup[0]!r}; name one of them explicitly "
                     f"with {{{NAME_KEY!r}: ...}}")
  return out
