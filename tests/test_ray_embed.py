"""The Ray Data extraction job, started the real way.

- `bertvision embed --ray` on an in-process Ray writes the same store as the library loop, on
  a Ray of its own (it neither attaches to a head already running on the machine nor leaves a
  process behind);
- a head started with `ray start --head` (dashboard on 127.0.0.1) runs
  `ray job submit --working-dir . -- python -m ray_jobs.embed ...`;
- a job killed after some shards and submitted again, once a second node (`ray start --address
  ...`) has joined, finishes the store with extraction actors on both nodes, equal to an
  uninterrupted run;
- a relative --out is refused, in-process and as a submitted job;
- the head refuses a job submitted without its token, or with a wrong one.

Every head runs with token authentication (RAY_AUTH_MODE=token, a random per-test token in a
0600 file, RAY_AUTH_TOKEN_PATH): its GCS, raylet and client server listen on every interface.
The tests start and stop their own Ray processes only (`tests/ray_cluster.py`; never
`ray stop`, which ends every Ray process of the user): a "bystander" head, started first as
someone else's cluster would be, must still be running when the module's heads are gone.
Tests that start Ray carry the `ray` marker (`-m "not ray"` skips them).
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from bertvision import store as st
from tests import ray_cluster as rc
from tests.conftest import REPO, bertvision_cli, write_toy_task

pytest.importorskip("ray")
pytestmark = pytest.mark.timeout(600)

BIN = Path(sys.executable).parent
RELATIVE_OUT = (
    "is relative: a Ray job runs in a temporary copy of the working directory, deleted when Ray "
    "cleans up; give an absolute path on shared storage, or --storage-root DIR to resolve it against"
)


def _ray(*args, env, check=True, timeout=180) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "ray"), *args], capture_output=True, text=True, env=env, timeout=timeout,
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
    """The library loop's store (no Ray), the reference every Ray run must equal: computed with
    torch's threads at the cores, as the jobs' one actor per machine runs (`pool_plan`), since
    the float sums, and so the stored bits, depend on the thread count (the test session may
    have set fewer, see conftest)."""
    import torch

    from bertvision.config import EmbedConfig
    from bertvision.embed import embed

    out = tmp_path_factory.mktemp("ref") / "store"
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        embed(EmbedConfig(task=str(task), shard_rows=16), out)
    finally:
        torch.set_num_threads(threads)
    return out


# --- relative paths, refused before Ray starts ----------------------------------------------


def test_job_refuses_a_relative_out_and_writes_nothing(task, tmp_path, monkeypatch, capsys):
    from ray_jobs import embed as job

    monkeypatch.chdir(tmp_path)
    code = job.main(["--task", str(task), "--out", "runs/x"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip() == f"bertvision: error: --out runs/x {RELATIVE_OUT}"  # one line, says why
    assert list(tmp_path.iterdir()) == []  # no runs/, no store, no lock file


def _job_parser():
    from bertvision.config import EmbedConfig, RayJobConfig
    from ray_jobs.common import parser

    return parser(EmbedConfig, RayJobConfig)


def _job_paths(argv: list[str]):
    """(the config, `job_paths`) of what the job's command line makes of ``argv``."""
    from bertvision.config import EmbedConfig, RayJobConfig, from_arguments
    from bertvision.outdir import job_paths

    args = _job_parser().parse_args(argv)
    cfg = from_arguments(EmbedConfig, args)
    return cfg, job_paths(cfg, args.out, from_arguments(RayJobConfig, args))


def test_storage_root_resolves_a_relative_out_and_must_be_absolute(tmp_path, monkeypatch, capsys):
    from ray_jobs import embed as job

    monkeypatch.chdir(tmp_path)
    cfg, out = _job_paths(["--task", "rte", "--out", "rte/store", "--storage-root", str(tmp_path / "runs")])
    assert out == str(tmp_path / "runs" / "rte" / "store") and cfg.task == "rte"
    _, out = _job_paths(["--task", "rte", "--out", str(tmp_path / "abs"), "--storage-root", str(tmp_path / "r")])
    assert out == str(tmp_path / "abs")  # an absolute --out stays
    assert job.main(["--task", "rte", "--out", "x", "--storage-root", "runs"]) == 1
    assert "--storage-root runs is relative" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_job_refuses_relative_inputs_missing_from_the_working_directory(task, tmp_path, monkeypatch, capsys):
    from ray_jobs import embed as job

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert job.main(["--task", str(task), "--out", str(out), "--checkpoint", "runs/rte/ft/checkpoint-e1"]) == 1
    err = capsys.readouterr().err
    assert "--checkpoint runs/rte/ft/checkpoint-e1 is relative and not in the job's working directory" in err
    assert job.main(["--task", str(task), "--out", str(out), "--data-dir", "data"]) == 1
    assert "--data-dir data is relative and not in the job's working directory" in capsys.readouterr().err
    assert not out.exists()
    # One that is in the working directory (an uploaded file) is read from there.
    (tmp_path / "data").mkdir()
    cfg, _ = _job_paths(["--task", str(task), "--out", str(out), "--data-dir", "data"])
    assert cfg.data_dir == "data"


def test_job_options_are_the_configs_fields(tmp_path, capsys):
    """The job's command line is derived from `EmbedConfig` and `RayJobConfig`: the same flags as
    'bertvision embed', plus --out and the pool's; a bad value is one line and exit status 1."""
    from bertvision.config import EmbedConfig, Windowing, from_arguments
    from ray_jobs import embed as job

    args = _job_parser().parse_args(["--task", "rte", "--out", str(tmp_path / "o"), "--splits", "dev", "--doc-stride", "64",
                                          "--batch-size", "8", "--actors", "2", "--gpus-per-actor", "0.5"])  # fmt: skip
    assert from_arguments(EmbedConfig, args) == EmbedConfig(task="rte", splits=("dev",), windowing=Windowing(doc_stride=64), batch_size=8)
    assert from_arguments(job.RayJobConfig, args) == job.RayJobConfig(actors=2, gpus_per_actor=0.5)
    assert job.main(["--task", "rte", "--out", str(tmp_path / "o"), "--actors", "0"]) == 1
    assert capsys.readouterr().err.strip() == "bertvision: error: --actors must be positive"
    assert job.main(["--task", "rte", "--out", str(tmp_path / "o"), "--batch-size", "0"]) == 1
    assert capsys.readouterr().err.strip() == "bertvision: error: --batch-size must be positive"
    assert list(tmp_path.iterdir()) == []


# --- an in-process Ray -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("r", numbered=True)


@pytest.fixture(scope="module")
def token(ray_tmp) -> Path:
    return rc.write_token(ray_tmp / "token")


@pytest.fixture(scope="module")
def bystander(ray_tmp):
    """A head the tests did not start for themselves: someone's cluster on the same machine,
    with its own temp dir (``<root>/ray``, where ``ray.init()`` looks when $RAY_TMPDIR is
    ``<root>``), ports and token. It must outlive every head of this module."""
    root = rc.short_dir(ray_tmp, "by")
    node = rc.start_head(root / "ray", rc.write_token(ray_tmp / "bystander-token"), num_cpus=1, dashboard=False,
                         object_store_memory=100_000_000)  # fmt: skip
    node.root = root
    yield node
    try:  # after every other fixture of the module has stopped its Ray
        assert node.alive() and node.answers(), f"the bystander head died:\n{node.log_tail()}"
    finally:
        node.stop()


@pytest.mark.ray
def test_embed_ray_in_process_equals_the_library_loop(task, reference, tmp_path, token, bystander, ray_tmp):
    """`bertvision embed --ray` runs the job in this process and folder, where a relative --out
    means what it says (the CLI makes it absolute for the actors)."""
    out = tmp_path / "store"
    own = rc.short_dir(ray_tmp, "ip", room=15)  # TMPDIR: the job's own Ray makes its temp dir here
    mark = uuid.uuid4().hex
    # RAY_TMPDIR points ray.init() at the bystander's ray_current_cluster: a plain ray.init()
    # would attach to it (and fail, being given num_cpus); the job must start a Ray of its own.
    env = rc.ray_env(token, RAY_TMPDIR=str(bystander.root), TMPDIR=str(own), **{rc.MARK: mark})
    proc = subprocess.run([*bertvision_cli(), "embed", "--ray", "--task", str(task), "--out", "store",
                           "--shard-rows", "16"], capture_output=True, text=True, env=env, timeout=400,
                          cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for split in ("train", "dev"):
        _stores_equal(out / split, reference / split)
        st.verify(out / split)
        run = st.read_manifest(out / split)["extra"]["last_run"]
        assert run["runner"] == "ray" and run["rows"] == st.read_manifest(out / split)["rows"]
        assert len(run["shards_per_node"]) == 1
    # the tensor column is Arrow's own fixed-shape tensor: pyarrow alone reads the shape back
    import pyarrow.parquet as pq

    table = pq.read_table(out / "train" / "shard-00000.parquet")
    assert table.column("hidden").combine_chunks().to_numpy_ndarray().shape == (16, 7, 384)
    # The job's Ray went with the process, and its session folder too; the bystander is intact.
    deadline = time.time() + 30
    while rc.marked_processes(mark, own) and time.time() < deadline:
        time.sleep(0.5)
    assert rc.marked_processes(mark, own) == []
    assert f"local Ray of this process in {own}/bvray-" in proc.stdout, proc.stdout[-2000:]
    assert not list(own.glob("bvray-*"))
    assert bystander.alive() and bystander.answers()
    rc.discard(own)


# --- a real head -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def head(shared_ray, bystander):
    """A real head: the session's shared one (`ray start --head --block`, dashboard on 127.0.0.1,
    token authentication), stopped by what started it, after the bystander has been checked."""
    return shared_ray


def _submit(head, task, out, *extra, wait=True, job_id=None, env=None, check=True, runtime_env=None) -> subprocess.CompletedProcess:
    args = ["job", "submit", "--address", head.dashboard, "--working-dir", ".", *(() if wait else ("--no-wait",)),
            *(("--submission-id", job_id) if job_id else ()),
            *(("--runtime-env-json", json.dumps(runtime_env)) if runtime_env else ()),
            "--", "python", "-m", "ray_jobs.embed", "--task", str(task), "--out", str(out), "--shard-rows", "16", *extra]
    return _ray(*args, env=env or head.env, timeout=400, check=check)


@pytest.mark.ray
def test_a_killed_job_submitted_again_on_two_nodes_equals_the_library_loop(head, task, reference, tmp_path):
    """`ray job submit` to the real head, its driver SIGKILLed after a few shards; a second node
    joins on loopback and the job is submitted again with two actors: the store (train and dev)
    is the library loop's, the second job wrote only the shards the first had not, and its
    actors wrote them on both nodes."""
    out = tmp_path / "store"
    job_id = f"kill-{uuid.uuid4().hex[:8]}"
    _submit(head, task, out, wait=False, job_id=job_id)
    deadline = time.time() + 300
    while len(list((out / "train").glob("shard-*.parquet"))) < 3:
        assert time.time() < deadline, "no shards written"
        time.sleep(0.05)
    # SIGKILL the job's driver: at once (`ray job stop` takes a CLI start and a grace period,
    # in which a fast machine wrote the remaining shards), and harder than a stop
    drivers = rc.processes_running("ray_jobs.embed", str(out))  # `python -m ray_jobs.embed ... --out OUT`
    assert drivers, "the job's driver process was not found"
    for pid in drivers:
        os.kill(pid, signal.SIGKILL)
    written = len(list((out / "train").glob("shard-*.parquet")))
    manifest = json.loads((out / "train" / "_manifest.json").read_text())
    assert manifest["status"] == "incomplete" and written < 30, written  # killed part-way (30 shards planned)
    token = Path(head.env["RAY_AUTH_TOKEN_PATH"])
    worker = rc.start_worker(head, rc.short_dir(tmp_path, "w"), token, num_cpus=2, remove_temp_dir=True)
    try:
        deadline = time.time() + 60
        while _alive_nodes(head) < 2:
            assert time.time() < deadline, "second node did not join"
            time.sleep(1)
        kept = len(list((out / "train").glob("shard-*.parquet")))  # finished shards (written whole, then renamed)
        # The pool's actor on the new node starts slowly on a small machine (the working dir
        # unpacked there, torch imported): Ray Data waits for both actors before handing out
        # shards, or the head's actor may write them all first.
        wait = {"env_vars": {"RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S": "300"}}
        proc = _submit(head, task, out, "--actors", "2", runtime_env=wait)
        assert "succeeded" in proc.stdout.lower(), proc.stdout[-2000:]
    finally:
        worker.stop()  # this node only; the head fixture stops the head
    assert worker.processes() == [] and head.alive()
    for split in ("train", "dev"):
        _stores_equal(out / split, reference / split)  # same ids, in order, none twice, same tensors
        st.verify(out / split)
    assert st.verify(out / "train")["rows"] == 480
    run = st.read_manifest(out / "train")["extra"]["last_run"]
    assert run["rows"] < 480  # the rerun wrote only the rest
    nodes = run["shards_per_node"]
    assert len(nodes) == 2 and sum(nodes.values()) == 30 - kept, (nodes, kept)


def _alive_nodes(head) -> int:
    code = f"import ray; ray.init(address={head.gcs!r}, logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=head.env, timeout=60)
    return int(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else 0


@pytest.mark.ray
def test_a_submitted_job_refuses_a_relative_out(head, task):
    name = f"runs/bv-relative-{uuid.uuid4().hex[:8]}"
    proc = _submit(head, task, name, check=False)
    logs = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "failed" in logs.lower(), logs[-2000:]
    assert f"bertvision: error: --out {name} {RELATIVE_OUT}" in logs, logs[-2000:]  # the job's log
    assert not (REPO / name).exists()
    assert not list(head.temp_dir.glob(f"session_*/runtime_resources/working_dir_files/*/{name}"))


@pytest.mark.ray
def test_the_head_refuses_a_job_without_its_token(head, task, tmp_path):
    ran = tmp_path / "ran"
    entry = ["--", "python", "-c", f"open({str(ran)!r}, 'w').write('x')"]
    wrong = rc.write_token(tmp_path / "wrong-token")
    no_token = rc.ray_env(None, HOME=str(tmp_path))  # no ~/.ray/auth_token there either
    for env, says in ((rc.ray_env(wrong), "invalid"), (no_token, "couldn't find an authentication token")):
        proc = _ray("job", "submit", "--address", head.dashboard, *entry, env=env, check=False, timeout=120)
        assert proc.returncode != 0 and says in proc.stderr.lower(), proc.stderr[-2000:]
    assert not ran.exists() and not (tmp_path / ".ray").exists()
    # with the token it runs
    proc = _ray("job", "submit", "--address", head.dashboard, *entry, env=head.env, timeout=120)
    assert "succeeded" in proc.stdout.lower() and ran.exists()


@pytest.mark.ray
def test_stopping_a_test_head_leaves_a_bystander_running(bystander, tmp_path):
    """What the tests' fixtures do to their own heads (start, stop) spares a head they did not
    start; the module's fixtures are checked the same way when they end (`bystander`)."""
    node = rc.start_head(rc.short_dir(tmp_path, "h"), rc.write_token(tmp_path / "token"), num_cpus=1,
                         dashboard=False, remove_temp_dir=True, object_store_memory=100_000_000)  # fmt: skip
    assert node.answers() and node.processes()
    node.stop()
    assert node.processes() == [] and not node.alive()
    assert bystander.alive() and bystander.answers() and bystander.processes()
