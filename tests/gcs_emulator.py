"""A local Google Cloud Storage for tests: gcp-storage-emulator in a subprocess.

Every client bliperax's gs:// paths go through is pointed at it by the variables
each one reads: gcsfs (etils.epath: listing, the run record, metrics) reads
STORAGE_EMULATOR_HOST, ArrayRecord's C++ GCS reader (shards) reads
CLOUD_STORAGE_EMULATOR_ENDPOINT, TensorStore (Orbax checkpoints) reads
TENSORSTORE_GCS_HTTP_URL. No credentials are involved. gcs_emulator_server.py
adds the read preconditions TensorStore relies on.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import pathlib
import sys
import socket
import subprocess
import time
from typing import Dict, Iterator

from etils import epath

BUCKET = "bliperax-test"


def available() -> bool:
  return importlib.util.find_spec("gcp_storage_emulator") is not None


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def running(stop: bool = True) -> Iterator[Dict[str, str]]:
  """Starts the emulator with an empty bucket BUCKET; yields the client variables.

  With stop=False it outlives the block and ends with this process: clients that
  write once more when garbage-collected (tensorboardX's bucket writer) still
  reach it, rather than retrying for minutes against a closed port.
  """
  port = _free_port()
  proc = subprocess.Popen(
      [sys.executable, str(pathlib.Path(__file__).with_name("gcs_emulator_server.py")),
       str(port), BUCKET], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 30
    while True:
      with socket.socket() as s:
        if s.connect_ex(("localhost", port)) == 0:
          break
      if proc.poll() is not None or time.time() > deadline:
        raise RuntimeError("gcp-storage-emulator did not start")
      time.sleep(0.1)
    url = f"http://localhost:{port}"
    yield {"STORAGE_EMULATOR_HOST": url, "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,
           "TENSORSTORE_GCS_HTTP_URL": url}
  finally:
    if stop:
      proc.terminate()
      proc.wait(timeout=10)


def upload(local: os.PathLike, url: str) -> None:
  """Copies the local folder `local` to `url` (gs://BUCKET/...), file by file."""
  local = pathlib.Path(local)
  for path in local.rglob("*"):
    if path.is_file():
      dst = epath.Path(url) / str(path.relative_to(local))
      dst.parent.mkdir(parents=True, exist_ok=True)
      dst.write_bytes(path.read_bytes())
