"""Atomic writes: the files get the mode open() gives (0o666 less the umask), stay atomic."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from bertvision import io
from bertvision.io import atomic_write_bytes, atomic_write_json

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")


@pytest.fixture
def umask():
    """Set the process umask for one test, restoring it afterwards."""
    old = os.umask(0o022)
    os.umask(old)

    def set_umask(mask: int) -> int:
        os.umask(mask)
        return mask

    try:
        yield set_umask
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    "mask, expected",
    [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600), (0o027, 0o640)],
    ids=["umask022", "umask002", "umask077", "umask027"],
)
def test_atomic_write_json_mode_follows_umask(tmp_path, umask, mask, expected):
    umask(mask)
    path = atomic_write_json(tmp_path / "sub" / "manifest.json", {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    assert mode(path) == expected == 0o666 & ~mask
    # as open() gives under the same umask
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert mode(plain) == expected


def test_overwrite_takes_the_new_mode(tmp_path, umask):
    umask(0o077)
    path = atomic_write_bytes(tmp_path / "f.bin", b"one")
    assert mode(path) == 0o600
    umask(0o022)
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two" and mode(path) == 0o644


def test_no_temporary_file_left_and_old_content_kept_on_error(tmp_path, monkeypatch):
    path = atomic_write_bytes(tmp_path / "f.bin", b"old")

    def fail(src, dst):
        raise OSError(28, "No space left on device", str(dst))

    monkeypatch.setattr(io.os, "replace", fail)
    with pytest.raises(OSError, match="No space"):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_temporary_file_is_beside_the_target_with_the_cleanup_name(tmp_path, monkeypatch):
    """The temporary file sits in the target's folder (so the rename is atomic) under the
    name StoreWriter removes after a killed writer, '.<name>.<random>.tmp'."""
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append((Path(src), Path(dst), mode(Path(src))))
        real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", spy)
    old = os.umask(0o002)
    try:
        atomic_write_bytes(tmp_path / "shard-00000.parquet", b"data")
    finally:
        os.umask(old)
    [(src, dst, src_mode)] = seen
    assert src.parent == dst.parent == tmp_path
    assert src.match(".shard-*.parquet.*.tmp")
    assert src_mode == 0o664


@pytest.mark.parametrize("mask", [0o002, 0o022], ids=["umask002", "umask022"])
def test_store_files_follow_umask(tmp_path, umask, mask):
    """Every file of a real store (shards and manifest) has mode 0o666 less the umask."""
    from tests.test_store import build

    umask(mask)
    folder = tmp_path / "store"
    manifest = build(folder)
    assert manifest["status"] == "complete"
    files = sorted(p for p in folder.iterdir())
    names = [p.name for p in files]
    assert "_manifest.json" in names and "shard-00000.parquet" in names
    assert not [n for n in names if n.endswith(".tmp")], names
    for p in files:
        assert mode(p) == 0o666 & ~mask, f"{p.name}: {oct(mode(p))}"
