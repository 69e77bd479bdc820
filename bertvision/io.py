"""Small file helpers. Every artifact is written atomically (a temporary name, then a rename), so
a killed process never leaves a half-written file under the final name, with the mode `open()`
gives (0o666 less the umask, not `tempfile.mkstemp`'s 0600, unreadable to teammates)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# As tempfile.mkstemp opens its files, but with the mode open() uses: the kernel applies the
# umask (and a folder's default ACL) at creation, so nothing reads or changes the process-wide
# umask and no other thread can race with it. O_BINARY matters on Windows only.
_TEMP_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
_TEMP_ATTEMPTS = 100


def _create_temp(path: Path) -> tuple[int, str]:
    """Create and open a new temporary file beside ``path``, named ".<name>.<random>.tmp"
    (the names `StoreWriter` cleans up after a killed writer)."""
    for _ in range(_TEMP_ATTEMPTS):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, _TEMP_FLAGS, 0o666), str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: no free temporary name for {path.name}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)  # a failed write (ENOSPC) names no file; say which
        raise
    return path


def read_utf8(path: Path) -> str:
    """The text of ``path``, read as bytes (no newline translation, so offsets are the file's); a
    DataError names the file when it cannot be read or is not UTF-8 (and where)."""
    from bertvision.errors import DataError, decode_error

    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(path, f"cannot read: {e.strerror or e}") from e
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise decode_error(path, e, data) from e


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def default_mode() -> int:
    """The mode `open()` gives a new file, 0o666 less the umask: read from /proc/self/status
    where it exists, so no thread sees the umask changed; else by setting and restoring it."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def respect_umask(folder: str | os.PathLike) -> None:
    """Give every file under ``folder`` the mode `open()` would have: for files written by
    libraries that create them 0600 (safetensors' writer does), so teammates can read them."""
    mode = default_mode()
    for root, _dirs, files in os.walk(folder):
        for name in files:
            os.chmod(os.path.join(root, name), mode)


@contextmanager
def atomic_folder(path: str | os.PathLike, doing: str) -> Iterator[Path]:
    """Write a folder whole or not at all: the block writes into ``.<name>.tmp`` beside
    ``path``, which then replaces ``path`` (its files given the default mode, `respect_umask`).
    Any failure removes the temporary folder; an OSError becomes a RunError naming the path and
    ``doing`` ("saving checkpoint ...")."""
    from bertvision.errors import os_error

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        yield tmp
        respect_umask(tmp)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise os_error(exc, doing) from None
        raise

