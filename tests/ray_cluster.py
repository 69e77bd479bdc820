"""Ray heads and nodes that a test starts, and stops, itself.

`ray stop` (with or without ``--force``) ends every Ray process of the user on the machine, a
real cluster's head included, so the tests never call it. Each node here is one
``ray start --block`` process, run in a session of its own (``start_new_session``), with

- its own ``--temp-dir`` (its session, sockets, logs and ``ray_current_cluster`` file), under
  the test's tmp folder where the path is short enough for Ray's Unix sockets (107 bytes);
- its own free ports (GCS, dashboard, client server, dashboard agent, a worker port range);
- token authentication (``RAY_AUTH_MODE=token``) with a random per-test token in a 0600 file
  (``RAY_AUTH_TOKEN_PATH``; Ray 2.60 reads that, or ``RAY_AUTH_TOKEN``, else
  ``~/.ray/auth_token``). The GCS, raylet and client server listen on every interface even
  with ``--dashboard-host 127.0.0.1``: without a token they would be open to the network;
- a marker variable in its environment, inherited by every process it starts (GCS, raylet,
  agents, workers, job drivers; Ray workers rename themselves ``ray::...``, so their command
  line no longer names the temp dir).

`RayNode.stop` sends SIGTERM to the ``ray start --block`` process (it shuts down the processes
it started; ``RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0`` skips the 30 s drain), then SIGKILLs
whatever is left of that node, found by session, marker or temp dir, and checks that nothing
is left. Processes of other Ray instances on the machine are never signalled.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
MARK = "BERTVISION_TEST_RAY_NODE"  # environment variable naming the node a process belongs to
# Ray's longest socket path under --temp-dir: /session_<date>_<time>_<usec>_<pid>/sockets/plasma_store
_SOCKET_SUFFIX = 64
_UNIX_PATH_MAX = 107
_OUTSIDE: set[Path] = set()  # temp dirs made under /tmp, not under the test's folder: removed at stop


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_port_range(size: int = 100) -> tuple[int, int]:
    """A range of ports for a node's workers, apart from other nodes' (not checked one by one),
    below Linux's ephemeral range (32768-60999), where Ray draws its other ports at random."""
    lo = random.randrange(12000, 32000 - size)
    return lo, lo + size - 1


def short_dir(parent: Path, name: str, room: int = 0) -> Path:
    """A new folder for ``--temp-dir`` (or, with ``room``, for a folder of that many more
    characters inside it): under ``parent`` where Ray's socket paths fit, else a fresh folder
    under /tmp (the node removes it when stopped; `discard` otherwise)."""
    candidate = parent / f"{name}-{uuid.uuid4().hex[:4]}"
    if len(str(candidate)) + room + _SOCKET_SUFFIX <= _UNIX_PATH_MAX:
        candidate.mkdir(parents=True)
        return candidate
    fallback = Path(tempfile.mkdtemp(prefix=f"bv{name}-", dir="/tmp"))
    _OUTSIDE.add(fallback)
    return fallback


def discard(path: Path) -> None:
    """Remove ``path`` if `short_dir` had to make it under /tmp (the test's folder is pytest's)."""
    if path in _OUTSIDE:
        shutil.rmtree(path, ignore_errors=True)
        _OUTSIDE.discard(path)


def write_token(path: Path) -> Path:
    """A random token (as `ray get-auth-token --generate` makes) in a new file readable by the
    owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


def ray_env(token: Path | None, **extra: str) -> dict:
    """The environment of a Ray command run by a test: this venv first on PATH (a job's
    ``python``), token authentication with ``token``, no usage stats, and no address or token
    inherited from the caller's shell."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", MARK):
        env.pop(name, None)
    if token is not None:
        env["RAY_AUTH_TOKEN_PATH"] = str(token)
    env.update(extra)
    return env


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _live(pid: int) -> bool:
    """The process exists and is not a zombie (an exited process not yet reaped)."""
    stat = _read(f"/proc/{pid}/stat")
    return bool(stat) and stat.rsplit(b")", 1)[-1].split()[:1] != [b"Z"]


def marked_processes(mark: str, temp_dir: Path | None = None, sid: int | None = None) -> list[int]:
    """Pids of live processes that carry ``mark`` in their environment, name ``temp_dir`` on
    their command line, or belong to session ``sid`` (Linux /proc; other users' processes,
    whose environment cannot be read, never match)."""
    me, found = os.getpid(), []
    needle, tag = (str(temp_dir).encode() if temp_dir else None), f"{MARK}={mark}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        try:
            in_session = sid is not None and os.getsid(pid) == sid
        except OSError:
            continue
        if (in_session or (needle and needle in _read(f"/proc/{pid}/cmdline"))
                or tag in _read(f"/proc/{pid}/environ").split(b"\0")) and _live(pid):  # fmt: skip
            found.append(pid)
    return found


def processes_running(*args: str) -> list[int]:
    """Pids of live processes whose command line holds every one of ``args`` as a whole
    argument (a submitted job's entrypoint, say: its driver is not a child of the test)."""
    wanted, found = [a.encode() for a in args], []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            argv = _read(f"/proc/{entry}/cmdline").split(b"\0")
            if all(a in argv for a in wanted) and _live(int(entry)):
                found.append(int(entry))
    return found


@dataclass
class RayNode:
    """One ``ray start --block`` process and everything it started."""

    proc: subprocess.Popen
    temp_dir: Path
    mark: str
    env: dict
    log: Path
    gcs: str
    dashboard: str | None = None
    remove_temp_dir: bool = False
    stopped: bool = field(default=False, init=False)

    def processes(self) -> list[int]:
        return marked_processes(self.mark, self.temp_dir, self.proc.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def answers(self, wait: float = 60) -> bool:
        """The node's GCS answers `ray status` (with this node's token) within ``wait`` seconds:
        just after `ray start`, on a loaded machine, the autoscaler's first report may take a
        while, and `ray status` fails until then."""
        deadline = time.time() + wait
        while True:
            out = subprocess.run([str(BIN / "ray"), "status", f"--address={self.gcs}"], capture_output=True,
                                 text=True, env=self.env, timeout=60)  # fmt: skip
            if out.returncode == 0 and "Active:" in out.stdout:
                return True
            if time.time() > deadline or self.proc.poll() is not None:
                return False
            time.sleep(1)

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, timeout: float = 60) -> None:
        """Stop this node and every process it started; AssertionError if any survive."""
        if self.stopped:
            return
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.time() + timeout
        left = self.processes()
        while left and time.time() < deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.5)
            left = self.processes()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if (self.remove_temp_dir or self.temp_dir in _OUTSIDE or self.temp_dir.parent in _OUTSIDE) and not left:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        assert not left, f"processes of the node in {self.temp_dir} survived: {left}"


def _start(args: list[str], temp_dir: Path, token: Path, gcs: str, dashboard: str | None, timeout: float,
           remove_temp_dir: bool, object_store_memory: int | None) -> RayNode:  # fmt: skip
    mark = uuid.uuid4().hex
    env = ray_env(token)
    temp_dir.mkdir(parents=True, exist_ok=True)
    log = temp_dir / "ray-start.log"
    lo, hi = worker_port_range()
    cmd = [str(BIN / "ray"), "start", "--block", f"--temp-dir={temp_dir}", f"--min-worker-port={lo}",
           f"--max-worker-port={hi}", "--disable-usage-stats", *args]  # fmt: skip
    if object_store_memory:  # Ray Data sizes its in-flight budget by it: keep the default for jobs
        cmd.append(f"--object-store-memory={object_store_memory}")
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env={**env, MARK: mark}, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    node = RayNode(proc, temp_dir, mark, env, log, gcs, dashboard, remove_temp_dir)
    deadline = time.time() + timeout
    try:
        while "Ray runtime started" not in node.log_tail(100_000):
            if proc.poll() is not None:
                raise AssertionError(f"`ray start` exited ({proc.returncode}):\n{node.log_tail()}")
            if time.time() > deadline:
                raise AssertionError(f"`ray start` not up after {timeout:.0f} s:\n{node.log_tail()}")
            time.sleep(0.5)
        while dashboard:  # the job API answers (with the token) once the dashboard is up
            probe = subprocess.run([str(BIN / "ray"), "job", "list", "--address", dashboard], capture_output=True,
                                   text=True, env=env, timeout=60)  # fmt: skip
            if probe.returncode == 0:
                break
            if time.time() > deadline:
                raise AssertionError(f"the job API at {dashboard} did not answer:\n{probe.stderr[-2000:]}")
            time.sleep(1)
    except BaseException:
        node.stop()
        raise
    return node


def start_head(temp_dir: Path, token: Path, *, num_cpus: int = 4, dashboard: bool = True, timeout: float = 180,
               remove_temp_dir: bool = False, object_store_memory: int | None = None) -> RayNode:  # fmt: skip
    """``ray start --head --block`` on free ports (dashboard on 127.0.0.1 when asked for)."""
    port, client, agent = free_port(), free_port(), free_port()
    args = ["--head", f"--port={port}", f"--num-cpus={num_cpus}", f"--ray-client-server-port={client}",
            f"--dashboard-agent-listen-port={agent}"]  # fmt: skip
    url = None
    if dashboard:
        dash = free_port()
        args += ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}"]
        url = f"http://127.0.0.1:{dash}"
    else:
        args += ["--include-dashboard=false"]
    return _start(args, temp_dir, token, f"127.0.0.1:{port}", url, timeout, remove_temp_dir, object_store_memory)


def start_worker(head: RayNode, temp_dir: Path, token: Path, *, num_cpus: int = 2, timeout: float = 180,
                 remove_temp_dir: bool = False, object_store_memory: int | None = None) -> RayNode:  # fmt: skip
    """A second node (``ray start --address``) joining ``head``, on ports of its own."""
    ports = {f"--{name}": free_port() for name in ("node-manager-port", "object-manager-port",
                                                   "dashboard-agent-grpc-port", "dashboard-agent-listen-port",
                                                   "metrics-export-port", "runtime-env-agent-port")}  # fmt: skip
    args = [f"--address={head.gcs}", f"--num-cpus={num_cpus}", *[f"{k}={v}" for k, v in ports.items()]]
    return _start(args, temp_dir, token, head.gcs, None, timeout, remove_temp_dir, object_store_memory)
