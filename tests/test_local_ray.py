"""The local Ray a job starts for itself (`ray_jobs.common`): what listens, and when the job's
folder is locked. Items 4 and 9(e) of the issue "Hardening, second pass" (item 5, what a killed
search's Ray leaves, is tests/test_tune.py's killed search); each test fails on the code before
the fix (said in its docstring)."""

import ipaddress
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from bertvision.errors import EXIT_RUN
from tests.conftest import bertvision_cli, own_ray_env, write_toy_task
from tests.ray_cluster import free_port

pytest.importorskip("ray")
pytestmark = pytest.mark.ray

STARTED = re.compile(r"local Ray of this process in (\S+)")  # init_ray's line: the Ray's temp dir

# A local Ray started as a job starts its own (`JobRay`, dashboard and workers up), held until
# stdin closes.
LOCAL_RAY = """
import sys

import ray

from ray_jobs.common import JobRay

with JobRay(dashboard=True) as job_ray:
    job_ray.need()
    ray.get([ray.remote(lambda: 0).remote() for _ in range(2)])
    print("ready", flush=True)
    sys.stdin.read()
"""


def _local_ray() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", LOCAL_RAY], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=own_ray_env())  # fmt: skip


def _ready(proc: subprocess.Popen) -> Path:
    """The temporary folder of ``proc``'s local Ray, once it is up."""
    folder = None
    for line in proc.stdout:
        if started := STARTED.match(line):
            folder = Path(started[1])
        elif line.strip() == "ready":
            return folder
    raise AssertionError(f"the local Ray did not start ({proc.wait()})")


def _stop(proc: subprocess.Popen) -> int:
    proc.stdin.close()
    return proc.wait(120)


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]




def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def test_4_a_local_ray_listens_on_loopback_only(tmp_path):
    """Before: GCS, raylet, workers and the driver listened on every interface, the agents on the
    machine's address, and the monitor's, the dashboard's and the agent's Prometheus endpoints on
    0.0.0.0. Now every socket of the job's Ray is on 127.0.0.1, and none answers from outside."""
    proc = _local_ray()
    try:
        _ready(proc)
        listening = {(p.pid, p.name(), c.laddr.ip, c.laddr.port) for p in _tree(proc.pid)
                     for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN}  # fmt: skip
        # the driver, GCS, raylet, agents, workers...
        assert len({pid for pid, *_ in listening}) >= 5, listening
        assert all(_loopback(ip) for _, _, ip, _ in listening), sorted(listening)
        outside = [a.address for addresses in psutil.net_if_addrs().values() for a in addresses
                   if a.family == socket.AF_INET and not _loopback(a.address)]  # fmt: skip
        for address in outside:  # e.g. 192.0.2.2: every port, the metrics endpoints too, refuses
            for *_, port in listening:
                with pytest.raises(OSError), socket.create_connection((address, port), timeout=2):
                    pass
    finally:
        assert _stop(proc) == 0


@pytest.mark.parametrize("ray_address", [False, True])
def test_9e_a_run_into_a_held_folder_is_refused_before_any_ray(ray_address, tmp_path, tiny_bert_dir):  # fmt: skip
    """Before: the run decided how to extract (attaching to $RAY_ADDRESS's cluster for it: with
    no cluster there it hung) before it took the folder's lock. Now it takes the lock first, and
    is refused having started or reached no Ray."""
    from tests.test_hardening import _holder

    task, out = write_toy_task(tmp_path / "toy"), tmp_path / "run"
    env = own_ray_env()
    if ray_address:  # $RAY_ADDRESS naming one where no Ray answers
        env["RAY_ADDRESS"] = f"127.0.0.1:{free_port()}"
    holder = _holder(out)
    try:
        proc = subprocess.run([*bertvision_cli(), "run", "--task", str(task), "--encoder", str(tiny_bert_dir),
                               "--out", str(out)], capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert proc.returncode == EXIT_RUN and f"pid {holder.pid}" in proc.stderr, proc.stderr[-2000:]
    # nothing ran, nothing was written (the lock file is the killed holder's)
    assert proc.stdout == "" and os.listdir(out) == [".bertvision.lock"], proc.stdout
