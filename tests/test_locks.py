"""The per-folder lock: real processes hold, refuse, die and race for one folder."""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from bertvision import locks
from bertvision.errors import EXIT_RUN, RunError
from bertvision.locks import LOCK_NAME, hold

pytestmark = pytest.mark.skipif(locks.fcntl is None, reason="no fcntl: folders are not locked")

REPO = Path(__file__).resolve().parents[1]

# Takes the lock, says so, and holds it until its stdin closes (or it is killed).
HOLDER = """
import sys
from bertvision.locks import hold
with hold(sys.argv[1], sys.argv[2]):
    print("held", flush=True)
    sys.stdin.read()
"""

# Says "ready", waits for a line on stdin (unless argv[2] is "now"), tries the lock once and
# says "won" (then holds it until stdin closes) or "refused <message>".
CONTENDER = """
import sys
from bertvision.errors import RunError
from bertvision.locks import hold
print("ready", flush=True)
if sys.argv[2] != "now":
    sys.stdin.readline()
try:
    with hold(sys.argv[1], "contender"):
        print("won", flush=True)
        sys.stdin.read()
except RunError as exc:
    print("refused", exc, flush=True)
"""


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def spawn(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,  # unbuffered: readline reads no further than the line, so select works
        env=_env(),
    )


def read_line(proc: subprocess.Popen, timeout: float = 60.0) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise AssertionError(f"pid {proc.pid} said nothing in {timeout} s")
    line = proc.stdout.readline().decode()
    if not line:
        raise AssertionError(f"pid {proc.pid} exited: {proc.wait()} {proc.stderr.read()!r}")
    return line.rstrip("\n")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream:
            stream.close()


def probe(folder: Path) -> str:
    """Whether another process can take `folder` now: "won" or "refused <message>"."""
    proc = spawn(CONTENDER, folder, "now")
    try:
        assert read_line(proc) == "ready"
        answer = read_line(proc)
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
        return answer
    finally:
        stop(proc)


@pytest.fixture
def holder(tmp_path):
    """A subprocess holding tmp_path/"out" for an "embed store"."""
    folder = tmp_path / "out"
    proc = spawn(HOLDER, folder, "embed store")
    try:
        assert read_line(proc) == "held"
        yield folder, proc
    finally:
        stop(proc)


def test_another_process_holding_the_folder_refuses_at_once(holder):
    folder, proc = holder
    start = time.monotonic()
    with pytest.raises(RunError) as err:
        with hold(folder, "head training"):
            pytest.fail("the block must not run while another process holds the folder")
    assert time.monotonic() - start < 5  # refused, not waited
    message = str(err.value)
    assert str(folder) in message
    assert f"pid {proc.pid}" in message
    assert "embed store" in message
    assert socket.gethostname() in message
    assert "since " in message and "command: " in message and "-c" in message
    assert err.value.exit_code == EXIT_RUN
    # the refused process neither removed nor rewrote the holder's lock file
    record = json.loads((folder / LOCK_NAME).read_text())
    assert record["pid"] == proc.pid and record["what"] == "embed store"


def test_lock_of_a_killed_process_does_not_block_a_rerun(holder):
    folder, proc = holder
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert (folder / LOCK_NAME).is_file()  # left behind, naming the dead process
    assert json.loads((folder / LOCK_NAME).read_text())["pid"] == proc.pid
    start = time.monotonic()
    with hold(folder, "embed store") as got:
        assert time.monotonic() - start < 5
        assert got == folder
        record = json.loads((folder / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid() and record["what"] == "embed store"
        assert probe(folder).startswith("refused")
    assert not (folder / LOCK_NAME).exists()
    assert probe(folder) == "won"


def test_reentrant_in_one_process(tmp_path):
    folder = tmp_path / "store"
    with hold(folder, "embed store"):
        # the same folder under another spelling, and through a symlink
        with hold(tmp_path / "." / "store", "embed store"):
            link = tmp_path / "link"
            link.symlink_to(folder, target_is_directory=True)
            with hold(link, "helper"):
                assert probe(folder).startswith("refused")
        # the inner blocks ended; the outer still holds it
        refusal = probe(folder)
        assert refusal.startswith("refused") and f"pid {os.getpid()}" in refusal
        assert "embed store" in refusal
    assert probe(folder) == "won"


def test_released_when_the_block_raises(tmp_path):
    folder = tmp_path / "run"
    with pytest.raises(ValueError, match="boom"):
        with hold(folder, "finetune run"):
            assert (folder / LOCK_NAME).is_file()
            raise ValueError("boom")
    assert not (folder / LOCK_NAME).exists()
    assert probe(folder) == "won"
    with hold(folder, "finetune run"):  # and this process can take it again
        assert probe(folder).startswith("refused")


def test_four_processes_racing_one_wins(tmp_path):
    folder = tmp_path / "race"
    procs = [spawn(CONTENDER, folder, "wait") for _ in range(4)]
    try:
        for proc in procs:
            assert read_line(proc) == "ready"
        for proc in procs:  # all alive and about to try: go
            proc.stdin.write(b"go\n")
        for proc in procs:
            proc.stdin.flush()
        answers = {proc.pid: read_line(proc) for proc in procs}
        winners = [pid for pid, answer in answers.items() if answer == "won"]
        assert len(winners) == 1, answers
        [winner] = winners
        for pid, answer in answers.items():
            if pid != winner:
                assert answer.startswith("refused") and f"pid {winner}" in answer, answer
        assert next(p for p in procs if p.pid == winner).poll() is None  # still holding
    finally:
        for proc in procs:
            stop(proc)


def test_race_with_the_lock_file_removed_between_open_and_lock(tmp_path, monkeypatch):
    """A process that opened the lock file just before its holder released (and removed) it
    locks a removed inode; it must notice and lock the file now at the path instead."""
    folder = tmp_path / "store"
    folder.mkdir()
    lock_file = folder / LOCK_NAME
    real_flock = locks.fcntl.flock
    calls = []

    def flock(fd, op):
        if not calls:  # the holder releases now: removes the file we opened
            os.unlink(lock_file)
        calls.append(os.fstat(fd).st_nlink)
        return real_flock(fd, op)

    monkeypatch.setattr(locks.fcntl, "flock", flock)
    with hold(folder, "embed store"):
        # it locked the removed file first, then the one at the path
        assert calls == [0, 1]
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
        monkeypatch.setattr(locks.fcntl, "flock", real_flock)
        assert probe(folder).startswith("refused")
    assert probe(folder) == "won"


def test_lock_file_mode_follows_umask(tmp_path):
    old = os.umask(0o002)
    try:
        with hold(tmp_path / "out", "head training") as folder:
            assert stat.S_IMODE((folder / LOCK_NAME).stat().st_mode) == 0o664
    finally:
        os.umask(old)


def test_creates_the_folder_and_reports_a_file_in_the_way(tmp_path):
    with hold(tmp_path / "a" / "b", "head training") as folder:
        assert folder.is_dir()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RunError, match="file"):
        with hold(blocker, "head training"):
            pass


def test_without_fcntl_it_warns_once_and_does_not_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(locks, "fcntl", None)
    monkeypatch.setattr(locks, "_warned", set())
    with pytest.warns(RuntimeWarning, match="not locked"):
        with hold(tmp_path / "a", "embed store") as folder:
            assert folder.is_dir() and not (folder / LOCK_NAME).exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with hold(tmp_path / "b", "embed store"):
            pass


def test_file_system_without_flock_warns_and_goes_on(tmp_path, monkeypatch):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(locks.fcntl, "flock", no_locks)
    monkeypatch.setattr(locks, "_warned", set())
    with pytest.warns(RuntimeWarning, match="cannot lock files"):
        with hold(tmp_path / "nfs", "embed store") as folder:
            assert not (folder / LOCK_NAME).exists()


def test_forked_child_does_not_keep_the_lock(tmp_path):
    """A child forked while the lock is held (a DataLoader worker) holds nothing: once the
    parent is gone the folder is free, even while the child lives."""
    folder = tmp_path / "out"
    script = """
import os, sys, time
from bertvision.locks import hold
with hold(sys.argv[1], "embed store"):
    child = os.fork()
    if child == 0:
        time.sleep(60)
        os._exit(0)
    print(child, flush=True)
    sys.stdin.read()
"""
    proc = spawn(script, folder, "x")
    child = None
    try:
        child = int(read_line(proc))
        assert probe(folder).startswith("refused")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        os.kill(child, 0)  # the child still runs
        assert probe(folder) == "won"
    finally:
        stop(proc)
        if child is not None:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
