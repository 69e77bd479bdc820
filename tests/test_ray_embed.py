"""The Ray Data extraction job, started the real way.

- `bertvision embed --ray` on an in-process Ray writes the same store as the library loop;
- a head started with `ray start --head` (dashboard on 127.0.0.1) runs
  `ray job submit --working-dir . -- python -m ray_jobs.embed ...`;
- a job killed after some shards and submitted again finishes the store, equal to an
  uninterrupted run;
- a second node (`ray start --address ...`) joins and extraction actors run on both nodes.

Local clusters run with RAY_AUTH_MODE=disabled (token authentication is for real clusters).
"""

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from bertvision import store as st
from tests.conftest import REPO, bertvision_cli, write_toy_task

pytest.importorskip("ray")
pytestmark = pytest.mark.timeout(600)

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # the job's `python` is this venv's
    env["RAY_AUTH_MODE"] = "disabled"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.pop("RAY_ADDRESS", None)
    return env


def _ray(*args, check=True, timeout=180) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "ray"), *args], capture_output=True, text=True, env=_env(), timeout=timeout,
                          cwd=REPO)  # fmt: skip
    if check and proc.returncode:
        raise AssertionError(f"ray {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _stores_equal(a: Path, b: Path) -> None:
    x, y = st.load_split(a), st.load_split(b)
    assert x.ids == y.ids and len(set(x.ids)) == len(x.ids)
    np.testing.assert_array_equal(x.hidden.numpy(), y.hidden.numpy())
    if x.labels is not None:
        np.testing.assert_array_equal(x.labels.numpy(), y.labels.numpy())
    skip = ("created", "code_version", "shards", "extra", "status")
    assert {k: v for k, v in x.manifest.items() if k not in skip} == {k: v for k, v in y.manifest.items() if k not in skip}


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    return write_toy_task(tmp_path_factory.mktemp("ray-task"), n_train=480, n_dev=40)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, task) -> Path:
    """The library loop's store (no Ray), the reference every Ray run must equal."""
    from bertvision.embed import embed

    out = tmp_path_factory.mktemp("ref") / "store"
    embed(str(task), None, out, shard_rows=16)
    return out


def test_embed_ray_in_process_equals_the_library_loop(task, reference, tmp_path):
    out = tmp_path / "store"
    proc = subprocess.run([*bertvision_cli(), "embed", "--ray", "--task", str(task), "--out", str(out),
                           "--shard-rows", "16"], capture_output=True, text=True, env=_env(), timeout=400)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for split in ("train", "dev"):
        _stores_equal(out / split, reference / split)
        st.verify(out / split)
        run = st.read_manifest(out / split)["extra"]["last_run"]
        assert run["runner"] == "ray" and run["rows"] == st.read_manifest(out / split)["rows"]
    # the tensor column is Arrow's own fixed-shape tensor: pyarrow alone reads the shape back
    import pyarrow.parquet as pq

    table = pq.read_table(out / "train" / "shard-00000.parquet")
    assert table.column("hidden").combine_chunks().to_numpy_ndarray().shape == (16, 7, 384)


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A real single-node Ray head (`ray start --head`), dashboard on 127.0.0.1."""
    _ray("stop", "--force", check=False)
    port, dash = _free_port(), _free_port()
    _ray("start", "--head", f"--port={port}", "--num-cpus=4", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dash}", "--include-dashboard=true", "--disable-usage-stats")  # fmt: skip
    yield {"gcs": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dash}"}
    _ray("stop", "--force", check=False)


def _submit(head, task, out, *extra, wait=True, job_id=None) -> subprocess.CompletedProcess:
    args = ["job", "submit", "--address", head["dashboard"], "--working-dir", ".", *(() if wait else ("--no-wait",)),
            *(("--submission-id", job_id) if job_id else ()),
            "--", "python", "-m", "ray_jobs.embed", "--task", str(task), "--out", str(out), "--shard-rows", "16", *extra]
    return _ray(*args, timeout=400)


def test_ray_job_submit_to_a_real_head(head, task, reference, tmp_path):
    out = tmp_path / "store"
    proc = _submit(head, task, out)
    assert "succeeded" in proc.stdout.lower(), proc.stdout[-2000:]
    for split in ("train", "dev"):
        _stores_equal(out / split, reference / split)
        st.verify(out / split)


def test_killed_job_resumes_and_equals_an_uninterrupted_run(head, task, reference, tmp_path):
    out = tmp_path / "store"
    job_id = f"kill-{uuid.uuid4().hex[:8]}"
    _submit(head, task, out, "--splits", "train", wait=False, job_id=job_id)
    deadline = time.time() + 300
    while len(list((out / "train").glob("shard-*.parquet"))) < 3:
        assert time.time() < deadline, "no shards written"
        time.sleep(0.2)
    _ray("job", "stop", "--address", head["dashboard"], job_id)
    written = len(list((out / "train").glob("shard-*.parquet")))
    manifest = json.loads((out / "train" / "manifest.json").read_text())
    assert manifest["status"] == "incomplete" and written < 30, written  # killed part-way (30 shards planned)
    proc = _submit(head, task, out, "--splits", "train")
    assert "succeeded" in proc.stdout.lower(), proc.stdout[-2000:]
    _stores_equal(out / "train", reference / "train")  # same ids, in order, none twice, same tensors
    assert st.verify(out / "train")["rows"] == 480
    assert st.read_manifest(out / "train")["extra"]["last_run"]["rows"] < 480  # the rerun wrote only the rest


def test_two_nodes_run_extraction_actors_on_both(head, task, tmp_path):
    """A second node joins on loopback; the actor pool spreads over both nodes."""
    ports = {f"--{name}": _free_port() for name in ("node-manager-port", "object-manager-port",
                                                    "dashboard-agent-grpc-port", "dashboard-agent-listen-port",
                                                    "metrics-export-port", "runtime-env-agent-port")}  # fmt: skip
    _ray("start", f"--address={head['gcs']}", "--num-cpus=2", *[f"{k}={v}" for k, v in ports.items()],
         "--min-worker-port=20000", "--max-worker-port=20999", "--disable-usage-stats")  # fmt: skip
    try:
        deadline = time.time() + 60
        while _alive_nodes(head) < 2:
            assert time.time() < deadline, "second node did not join"
            time.sleep(1)
        out = tmp_path / "store"
        proc = _submit(head, task, out, "--splits", "train", "--actors", "2")
        assert "succeeded" in proc.stdout.lower(), proc.stdout[-2000:]
        nodes = st.read_manifest(out / "train")["extra"]["last_run"]["shards_per_node"]
        assert len(nodes) == 2 and sum(nodes.values()) == 30, nodes
    finally:
        _ray("stop", "--force", check=False)  # stops both nodes; the head fixture's stop is then a no-op


def _alive_nodes(head) -> int:
    code = f"import ray; ray.init(address={head['gcs']!r}, logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=60)
    return int(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else 0
