"""What every command-line entry point shares: flag parsing whose errors are one line.

`run(main)` is `absl.app.run(main)` with a flag parser that turns the mistakes a user
makes on the command line into one line on stderr and exit status 1 (as absl), instead of a
traceback: an unknown `--config.a.b=...` key (naming the nearest valid keys), a value
of the wrong type, a config file that does not load, a flag out of its bounds.

Importing this module also pins JAX to the CPU on a host without any accelerator
device (`pin_cpu_where_no_accelerator`), so every entry point imports it before jax,
keeps freed host memory mapped (`bliperax.host_memory`: XLA's per-step CPU
temporaries are not page-faulted in again every step), collects Python garbage less
often (`bliperax.python_gc`: tracing a model allocates millions of short-lived
objects), and turns on JAX's persistent
compilation cache (`use_compilation_cache`), so the second run of a config compiles
nothing.
"""
from __future__ import annotations

import difflib
import glob
import importlib.util
import os
import sys
from typing import Callable, List, MutableMapping, Optional, Sequence

from absl import app, flags

from bliperax import host_memory
from bliperax import python_gc

USAGE_ERROR = 1  # the exit status of a refused command line, as absl's own flag errors
# Device files of the accelerators JAX runs on: TPU (accel or VFIO), NVIDIA, AMD.
ACCELERATOR_DEVICES = ("/dev/accel*", "/dev/vfio/[0-9]*", "/dev/nvidia[0-9]*", "/dev/kfd")
# Shortest compile worth a persistent-cache entry, seconds. JAX's default (1 s) left
# the `small` preset's prefill and decode loop (0.8 s each on a 2-core host) to be
# compiled again by every process; read back from the cache, both take ~0.1 s.
MIN_CACHED_COMPILE_S = 0.2


def pin_cpu_where_no_accelerator(environ: MutableMapping[str, str] = os.environ,
                                 patterns: Sequence[str] = ACCELERATOR_DEVICES) -> None:
  """Sets JAX_PLATFORMS=cpu where no accelerator device exists and the user set none.

  Why: without JAX_PLATFORMS, JAX initialises every backend plugin it finds, and
  libtpu installed on a CPU host (the AOT-compile setup) prints its "Failed to find
  host bounds" warnings at the start of every command. With no TPU, GPU or AMD
  device file the platform is known to be the CPU, so nothing needs probing. Must
  run before jax is imported (JAX reads the variable at import).
  """
  if "JAX_PLATFORMS" not in environ and not any(glob.glob(p) for p in patterns):
    environ["JAX_PLATFORMS"] = "cpu"


def use_compilation_cache(environ: MutableMapping[str, str] = os.environ) -> Optional[str]:
  """Points JAX's persistent compilation cache at a user cache folder; returns it.

  `JAX_COMPILATION_CACHE_DIR` (any value, e.g. a gs:// path shared by a pod's hosts)
  wins; `BLIPERAX_COMPILATION_CACHE=0` turns the cache off (the tests do, where they
  time compiles); else `$XDG_CACHE_HOME/bliperax/jax` (default `~/.cache/...`).
  Compiles of `MIN_CACHED_COMPILE_S` or more are cached, unless the user set
  `JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`. Must run before jax is imported (JAX
  reads these at import).
  """
  if environ.get("BLIPERAX_COMPILATION_CACHE", "1") in ("0", "false", "off"):
    return None
  if "JAX_COMPILATION_CACHE_DIR" not in environ:
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(base, "bliperax", "jax")
  environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", str(MIN_CACHED_COMPILE_S))
  return environ["JAX_COMPILATION_CACHE_DIR"]


pin_cpu_where_no_accelerator()
host_memory.keep_freed_memory()
python_gc.collect_less_often()
use_compilation_cache()


def fail(message: str, status: int = USAGE_ERROR) -> None:
  """Prints `error: message` on stderr and exits with `status`."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(status)


def _config_flag_names() -> List[str]:
  """Names of the ml_collections config flags defined by this program."""
  return [name for name, flag in flags.FLAGS._flags().items()  # pylint: disable=protected-access
          if type(flag).__module__.startswith("ml_collections.config_flags")
          and "." not in name]


def load_config(spec: str):
  """`file.py[:arg]` -> the ConfigDict of its get_config (as config_flags loads it)."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_bliperax_cli_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def dotted_keys(config, prefix: str = "") -> List[str]:
  """Every field of a ConfigDict as a dotted path, sub-dicts included."""
  out = []
  for key, value in config.items():
    path = f"{prefix}{key}"
    out.append(path)
    if hasattr(value, "items") and hasattr(value, "to_dict"):
      out.extend(dotted_keys(value, path + "."))
  return out


def unknown_key_message(key: str, valid: Sequence[str], config_name: str) -> str:
  """'unknown config key ...; nearest valid keys: ...' (close spellings, else siblings)."""
  near = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
  if not near:
    parent = key.rpartition(".")[0]
    near = [k for k in valid if k.rpartition(".")[0] == parent][:6]
  hint = f"; nearest valid keys: {', '.join(config_name + '.' + k for k in near)}" if near else ""
  return f"unknown config key --{config_name}.{key}{hint}"


def _explain_override_error(argv: Sequence[str]) -> Optional[str]:
  """The unknown `--config.key` in argv, with its nearest valid keys, if there is one."""
  for name in _config_flag_names():
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")), None)
    if spec is None and f"--{name}" in argv[:-1]:  # the `--config FILE` spelling
      spec = argv[argv.index(f"--{name}") + 1]
    if spec is None:
      continue
    try:
      valid = dotted_keys(load_config(spec))
    except Exception:  # pylint: disable=broad-except  (reported by the caller's message)
      continue
    for a in argv:
      if a.startswith(f"--{name}."):
        key = a[len(name) + 3:].split("=", 1)[0]
        if key not in valid:
          return unknown_key_message(key, valid, name)
  return None


def parse_flags(argv: List[str]) -> List[str]:
  """absl's parsing, with one-line errors (see the module docstring)."""
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:  # wrong type, out of bounds, unknown flag, missing required
    fail(_one_line(str(e)))
  except (AttributeError, KeyError) as e:  # config_flags on an unknown override key
    fail(_explain_override_error(argv) or f"bad config override: {e}")
  for name in _config_flag_names():
    try:  # a config file that failed to load raises on first use: make that now
      getattr(flags.FLAGS[name].value, "keys", None)
    except (OSError, ImportError, SyntaxError, AttributeError, TypeError, ValueError) as e:
      fail(f"--{name}: cannot load the config: {_one_line(str(e))}")
  return rest


def _one_line(message: str) -> str:
  """A message that embeds a traceback -> its first line and the exception's line."""
  lines = [l.strip() for l in message.strip().splitlines() if l.strip()]
  if len(lines) <= 1:
    return message.strip()
  if any(l.startswith("Traceback") for l in lines):
    return f"{lines[0]} {lines[-1]}"
  return " ".join(lines)


def run(main: Callable[[List[str]], Optional[int]]) -> None:
  """absl.app.run(main) with `parse_flags`; main's return value is the exit status."""
  app.run(main, flags_parser=parse_flags)
