"""One writer per output folder: `hold` takes a non-blocking ``flock`` on the folder's
``.bertvision.lock`` and writes the holder's facts into it; a second process fails at once with a
`RunError` naming the folder and the holder. The kernel drops a flock when its holder dies, so a
killed run's lock file never blocks a rerun. The file is removed on release, while still locked;
a process that locked the removed inode meanwhile sees it (fstat against stat) and starts over.
Re-entrant per process (a folder is known by device and inode); a forked child holds nothing.
Without fcntl (Windows), or where the file system cannot flock, folders go unlocked, with a warning.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from bertvision.errors import RunError, os_error

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".bertvision.lock"

# Errors of a file system that cannot flock: lock nothing (with a warning) rather than fail.
_NO_FLOCK = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", -1)}
# Rounds of open-lock-check when the lock file keeps being replaced under us (one is usual).
_ATTEMPTS = 20
# A refused process reads the holder's facts; the holder writes them just after it locks, so an
# empty file means "just locked": look again for up to this long before saying "unknown".
_RECORD_WAIT_S = 0.5
_COMMAND_CHARS = 400


@dataclass
class _Held:
    fd: int
    lock_path: Path
    count: int


_mutex = threading.RLock()
_held: dict[tuple[int, int], _Held] = {}  # by the folder's (st_dev, st_ino)
_warned: set[str] = set()


@contextlib.contextmanager
def hold(folder: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold an exclusive lock on `folder` (created if missing; yielded as a Path) while the block
    runs; `what` ("embed store", "finetune run") goes into the holder's facts. A nested `hold` of
    a folder this process holds returns at once; the outermost one releases it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise os_error(exc, f"creating the folder for the {what}") from exc
    if fcntl is None:
        _warn_once("fcntl", "this platform has no fcntl.flock; output folders are not locked", 3)
        yield folder
        return
    with _mutex:
        try:
            st = os.stat(folder)
        except OSError as exc:
            raise os_error(exc, f"locking the folder for the {what}") from exc
        key = (st.st_dev, st.st_ino)
        entry = _held.get(key)
        if entry is not None:
            entry.count += 1
        else:
            entry = _acquire(folder, what)
            if entry is not None:
                _held[key] = entry
    try:
        yield folder
    finally:
        if entry is not None:
            with _mutex:
                _release(key, entry)


def _acquire(folder: Path, what: str) -> _Held | None:
    """Lock folder/LOCK_NAME for this process; None where the file system cannot flock."""
    lock_path = folder / LOCK_NAME
    doing = f"locking {folder} for the {what}"
    for _ in range(_ATTEMPTS):
        try:
            fd, writable = _open_lock_file(lock_path)
        except OSError as exc:
            raise os_error(exc, doing) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            record = _read_record(fd)
            os.close(fd)
            raise RunError(_refusal(folder, record, what)) from None
        except OSError as exc:
            if exc.errno in _NO_FLOCK and writable and os.fstat(fd).st_size == 0:
                with contextlib.suppress(OSError):  # the empty file we created: no litter
                    _unlink_if_same(fd, lock_path)
            os.close(fd)
            if exc.errno in _NO_FLOCK:
                _warn_once(
                    str(folder),
                    f"{folder}: the file system cannot lock files ({exc.strerror}); "
                    f"nothing stops another process from writing this folder too",
                    4,
                )
                return None
            if exc.errno == errno.EBADF and not writable:
                raise RunError(
                    f"{lock_path}: cannot lock it: the file belongs to another user and is "
                    f"read-only to you (this file system locks writable files only); "
                    f"if no one is writing {folder}, delete the file"
                ) from exc
            raise os_error(exc, doing) from exc
        # Locked. Is it still the file at lock_path, or one its holder removed meanwhile?
        try:
            same = _same_file(fd, lock_path)
        except OSError as exc:
            os.close(fd)
            raise os_error(exc, doing) from exc
        if not same:
            os.close(fd)
            continue
        if not writable:
            # A stale lock file of another user, read-only to us: nobody holds it (we do), so
            # remove it while locked and start over with one of our own.
            try:
                os.unlink(lock_path)
            except OSError as exc:
                os.close(fd)
                raise RunError(
                    f"{lock_path}: a lock file left by a process that no longer runs, owned by "
                    f"another user; it cannot be replaced ({str(exc.strerror or exc).lower()}); "
                    f"delete it (no one holds it)"
                ) from exc
            os.close(fd)
            continue
        try:
            _write_record(fd, what)
        except OSError as exc:
            _unlink_if_same(fd, lock_path)
            os.close(fd)
            raise os_error(exc, doing) from exc
        return _Held(fd=fd, lock_path=lock_path, count=1)
    raise RunError(
        f"{lock_path}: the lock file was replaced {_ATTEMPTS} times while locking it; "
        f"other processes keep taking and releasing {folder}; try again"
    )


def _release(key: tuple[int, int], entry: _Held) -> None:
    if _held.get(key) is not entry:  # forgotten in a forked child
        return
    entry.count -= 1
    if entry.count > 0:
        return
    del _held[key]
    # Remove the file while still holding it: whoever opens the path from now on gets a new
    # file; whoever opened it before locks a removed inode, sees it, and starts over.
    with contextlib.suppress(OSError):
        _unlink_if_same(entry.fd, entry.lock_path)
    os.close(entry.fd)  # releases the flock


def _open_lock_file(lock_path: Path) -> tuple[int, bool]:
    """Open (creating with mode 0o666 less the umask) the lock file; (fd, opened for writing).

    A lock file of another user that we may not write is opened read-only: flock works on it
    (on local file systems), so we learn whether someone holds it."""
    try:
        return os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666), True
    except PermissionError:
        try:
            return os.open(lock_path, os.O_RDONLY), False
        except OSError:
            pass
        raise


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)


def _unlink_if_same(fd: int, path: Path) -> None:
    if _same_file(fd, path):
        os.unlink(path)


def _write_record(fd: int, what: str) -> None:
    command = " ".join(getattr(sys, "orig_argv", None) or sys.argv)
    if len(command) > _COMMAND_CHARS:
        command = command[: _COMMAND_CHARS - 3] + "..."
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "what": what,
        "command": command,
        "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    data = (json.dumps(record) + "\n").encode("utf-8")
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _read_record(fd: int) -> dict | None:
    """The holder's facts from the locked file, or None when they cannot be read."""
    deadline = time.monotonic() + _RECORD_WAIT_S
    while True:
        try:
            raw = os.pread(fd, 1 << 16, 0)
            record = json.loads(raw.decode("utf-8"))
            if isinstance(record, dict):
                return record
        except (OSError, ValueError):
            pass
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)


def _refusal(folder: Path, record: dict | None, what: str) -> str:
    advice = f"wait for it to finish, or use another folder for this {what}"
    if record is None:
        return (
            f"{folder}: held by another process (its details in {LOCK_NAME} could not be "
            f"read); {advice}"
        )
    return (
        f"{folder}: held by another process: pid {record.get('pid', '?')} on "
        f"{record.get('host', '?')}, {record.get('what', '?')} since "
        f"{record.get('since', '?')} (command: {record.get('command', '?')}); {advice}"
    )


def _warn_once(key: str, message: str, stacklevel: int) -> None:
    """Warn about `key` once per process; `stacklevel` counts from the caller of _warn_once."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=stacklevel + 1)


def _forget_in_child() -> None:
    """After fork: the child holds nothing. Close its copies of the lock files' descriptors,
    so that the lock goes when the parent does, not when the last child does."""
    global _mutex
    _mutex = threading.RLock()
    for entry in _held.values():
        with contextlib.suppress(OSError):
            os.close(entry.fd)
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
