"""gcp-storage-emulator with the object-read preconditions real GCS has.

  python tests/gcs_emulator_server.py PORT BUCKET

It exits when the process that started it does.

The emulator answers a read whatever its `ifGenerationMatch` /
`ifGenerationNotMatch` say and sends no `x-goog-generation` header. TensorStore
(Orbax's storage) re-reads the OCDBT manifest of a checkpoint it is writing with
`ifGenerationNotMatch=<the generation it has>`, expects "304 Not Modified", and
reads the generation of what it got from that header; without them it fails with
"Malformed StorageGeneration". This wrapper adds both before the server starts.
"""
import os
import sys
import threading
import time
from http import HTTPStatus

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_download = objects.download


def _download_with_preconditions(request, response, storage, *args, **kwargs):
  try:
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
  except NotFound:
    response.status = HTTPStatus.NOT_FOUND
    return
  generation = str(obj["generation"])
  match = request.query.get("ifGenerationMatch")
  not_match = request.query.get("ifGenerationNotMatch")
  if match and match[0] != generation:
    response.status = HTTPStatus.PRECONDITION_FAILED
    return
  response["x-goog-generation"] = generation
  if not_match and not_match[0] == generation:
    response.status = HTTPStatus.NOT_MODIFIED
    return
  _download(request, response, storage, *args, **kwargs)


# Before the server module builds its routing table from these functions.
objects.download = _download_with_preconditions
from gcp_storage_emulator import server  # noqa: E402  pylint: disable=g-import-not-at-top


def _exit_with(parent: int) -> None:
  """Ends this server once the process that started it is gone (no orphans)."""
  while os.getppid() == parent:
    time.sleep(0.5)
  os._exit(0)


if __name__ == "__main__":
  port, bucket = int(sys.argv[1]), sys.argv[2]
  threading.Thread(target=_exit_with, args=(os.getppid(),), daemon=True).start()
  server.create_server("localhost", port, in_memory=True, default_bucket=bucket).start()
