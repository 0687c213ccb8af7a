"""bliperax.atomic: a directory appears whole at its destination, or not at all."""
import os
import stat

import pytest

from bliperax import atomic


def _listing(root):
  """{relative path: file text} of everything under `root` (directories as None)."""
  out = {}
  for path in sorted(root.rglob("*")):
    out[str(path.relative_to(root))] = path.read_text() if path.is_file() else None
  return out


def test_success_renames_into_place(tmp_path):
  dst = tmp_path / "a" / "b" / "ckpt"  # missing parents are made
  with atomic.atomic_directory(dst) as tmp:
    assert tmp.parent == dst.parent and tmp.name.startswith(".ckpt.")
    assert not dst.exists()  # nothing at the destination while writing
    (tmp / "sub").mkdir()
    (tmp / "sub" / "x.txt").write_text("new")
  assert _listing(dst.parent) == {"ckpt": None, "ckpt/sub": None, "ckpt/sub/x.txt": "new"}
  assert stat.S_IMODE(os.stat(dst).st_mode) == 0o755  # not mkdtemp's 0700


@pytest.mark.parametrize("old", ["dir", "file", "empty_dir"])
def test_success_replaces_an_earlier_destination(tmp_path, old):
  dst = tmp_path / "ckpt"
  if old == "file":
    dst.write_text("old")
  else:
    dst.mkdir()
    if old == "dir":
      (dst / "old.txt").write_text("old")
  with atomic.atomic_directory(dst) as tmp:
    (tmp / "x.txt").write_text("new")
  assert _listing(tmp_path) == {"ckpt": None, "ckpt/x.txt": "new"}


def test_failure_leaves_an_earlier_destination_and_no_temporary(tmp_path):
  dst = tmp_path / "ckpt"
  dst.mkdir()
  (dst / "old.txt").write_text("old")
  with pytest.raises(RuntimeError, match="disk on fire"):
    with atomic.atomic_directory(dst) as tmp:
      (tmp / "x.txt").write_text("half")
      raise RuntimeError("disk on fire")
  assert _listing(tmp_path) == {"ckpt": None, "ckpt/old.txt": "old"}


def test_failure_without_an_earlier_destination_leaves_nothing(tmp_path):
  with pytest.raises(KeyboardInterrupt):  # not only Exceptions clean up
    with atomic.atomic_directory(tmp_path / "ckpt") as tmp:
      (tmp / "x.txt").write_text("half")
      raise KeyboardInterrupt
  assert list(tmp_path.iterdir()) == []


def test_a_block_that_removes_its_temporary_is_reported(tmp_path):
  """The rename's own failure propagates (and there is nothing left to clean)."""
  with pytest.raises(FileNotFoundError):
    with atomic.atomic_directory(tmp_path / "ckpt") as tmp:
      tmp.rmdir()
  assert list(tmp_path.iterdir()) == []


def test_is_occupied(tmp_path):
  assert not atomic.is_occupied(tmp_path / "missing")
  (tmp_path / "empty").mkdir()
  assert not atomic.is_occupied(tmp_path / "empty")
  (tmp_path / "file").write_text("x")
  assert atomic.is_occupied(tmp_path / "file")
  (tmp_path / "empty" / "x").write_text("x")
  assert atomic.is_occupied(str(tmp_path / "empty"))  # str paths too


def test_local_epath_destination(tmp_path):
  epath = pytest.importorskip("etils.epath")
  dst = epath.Path(tmp_path) / "ckpt"
  with atomic.atomic_directory(dst) as tmp:
    (tmp / "x.txt").write_text("new")
  assert _listing(tmp_path) == {"ckpt": None, "ckpt/x.txt": "new"}
  assert atomic.is_occupied(dst)
