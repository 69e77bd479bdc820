"""Head searches (bertvision.search, ray_jobs/tune.py, `bertvision tune`) on a real Ray.

A toy task embedded with a tiny random BERT gives small stores: trials take a second or two, and
the tests check the search's shape (the default configuration first, trial folders, the
leaderboard), that trials never read dev, the resume of a killed driver, and a trial whose
process dies being retried from its checkpoint.
"""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from bertvision.config import SearchConfig
from bertvision.search import TRIAL_FILE, default_point, leaderboard
from tests.conftest import bertvision_cli, own_ray_env, write_toy_task

pytest.importorskip("ray")
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def stores(tmp_path_factory, tiny_bert_dir) -> tuple[Path, Path]:
    """cls and mean stores of one toy task (train and dev), from the tiny BERT."""
    from bertvision.config import EmbedConfig
    from bertvision.embed import embed

    root = tmp_path_factory.mktemp("tune")
    task = write_toy_task(root / "task", n_train=160, n_dev=40)
    out = []
    for selection in ("cls", "mean"):
        embed(EmbedConfig(task=str(task), checkpoint=str(tiny_bert_dir), selection=selection), root / selection)
        out.append(root / selection)
    return tuple(out)


def _tune(*args, check=True, env=None, **kw) -> subprocess.CompletedProcess:
    """`bertvision tune` on the shared head (``env``: its ``cli_env``), else on a local Ray of its own."""
    proc = subprocess.run([*bertvision_cli(), "tune", *map(str, args)], capture_output=True, text=True,
                          env=env or own_ray_env(), timeout=600, **kw)  # fmt: skip
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_a_search_starts_from_the_default_head_and_never_reads_dev(stores, shared_ray, tmp_path):
    cls_store, mean_store = stores
    # Dev of both stores broken: a trial that read it would fail the search.
    for store in stores:
        for shard in (store / "dev").glob("shard-*.parquet"):
            shard.write_bytes(b"not parquet")
    out = tmp_path / "search"
    proc = _tune("--stores", cls_store, mean_store, "--trials", 5, "--initial-points", 3, "--epochs", 3,
                 "--max-concurrent", 2, "--out", out, env=shared_ray.cli_env)  # fmt: skip
    board = json.loads((out / "leaderboard.json").read_text())
    assert len(board) == 5 and [r["score"] for r in board] == sorted((r["score"] for r in board), reverse=True)
    defaults = default_point(SearchConfig(stores=(str(cls_store), str(mean_store))), "sentence")
    assert any(r["params"] == defaults for r in board), [r["params"] for r in board]
    assert {r["params"]["store"] for r in board} <= {str(cls_store), str(mean_store)}
    assert len({json.dumps(r["params"], sort_keys=True) for r in board}) == 5  # five distinct points
    for row in board:
        folder = Path(row["trial"])
        assert (folder / "head.safetensors").is_file() and list((folder / "tb").glob("events.out.tfevents.*"))
        assert 1 <= len(row["history"]) <= 3 and row["best_epoch"] >= 1
        assert row["score"] == max(h["score"] for h in row["history"])
        assert set(row["config"]) >= {"store", "head", "optim", "seeds"}
    from bertvision.train import load_head

    model, meta = load_head(Path(board[0]["trial"]))  # the best trial's head loads as any head
    assert meta["adapter_pooler"]["adapter_size"] == board[0]["params"]["adapter_size"]
    # printed at the end, and again from disk
    assert "rank" in proc.stdout and f"{board[0]['score']:.4f}" in proc.stdout
    show = subprocess.run([*bertvision_cli(), "tune", "show", str(out), "--top", "2"], capture_output=True, text=True)
    assert show.returncode == 0 and len(show.stdout.strip().splitlines()) == 3, show.stderr
    # the same folder again, without --resume: refused, nothing touched, before any Ray starts
    again = _tune("--stores", cls_store, "--trials", 2, "--out", out, check=False)
    assert again.returncode == 1 and "--resume" in again.stderr and "local Ray" not in again.stdout


KILLED_EPOCHS = 12


def test_a_killed_search_resumes_to_the_requested_total(stores, tmp_path):
    """The driver SIGKILLed mid-search (with its local Ray); `--resume` finishes the search:
    the requested number of trials in all, the finished ones kept as they were. A trial folder
    the resumed search does not know (a trial started after Tune last saved its state; one is
    planted here, as the kill may or may not leave one) is set aside, not on the leaderboard."""
    import shutil

    from bertvision.search import ORPHANS

    cls_store, _ = stores
    out = tmp_path / "search"
    # KILLED_EPOCHS epochs (a checkpoint each): the search is killed within 0.05 s of its second
    # trial finishing, long before the third can
    e = KILLED_EPOCHS
    args = ["--stores", cls_store, "--trials", 3, "--initial-points", 2, "--epochs", e, "--patience", e,
            "--grace-period", e, "--max-concurrent", 1, "--out", out]  # fmt: skip
    env = own_ray_env()  # a local Ray of its own, killed with it
    proc = subprocess.Popen([*bertvision_cli(), "tune", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 300
        while len(_finished(out)) < 2:
            assert proc.poll() is None, "the search ended before it was killed"
            assert time.time() < deadline, "no trials finished"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.wait()
    before = {p: _outcome(p) for p in _finished(out)}
    assert len(before) == 2
    shutil.copytree(next(iter(before)).parent, out / "trial-lost")  # unknown to Tune's state
    proc = _tune(*args, "--resume")
    board = leaderboard(out)
    assert len(board) == 3 and len(_finished(out)) == 3
    assert (out / ORPHANS / "trial-lost" / TRIAL_FILE).is_file() and "trial-lost" not in {Path(r["trial"]).name for r in board}
    assert f"moved to {out / ORPHANS}" in proc.stdout
    for path, text in before.items():
        assert _outcome(path) == text  # a finished trial did not run again
    assert len({json.dumps(r["params"], sort_keys=True) for r in board}) == 3  # no point proposed twice


def _outcome(path: Path) -> dict:
    """trial.json less what describes the attempt (``node``, ``timing``): a trial killed between
    its last trial.json and Tune's record of its last report runs its last epoch again, to the
    same result, on whatever node and at whatever time."""
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in ("node", "timing")}


def _finished(out: Path) -> list[Path]:
    done = []
    for path in out.glob(f"*/{TRIAL_FILE}"):
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        if record.get("epochs_run") == KILLED_EPOCHS:  # every epoch run (patience and ASHA's grace too)
            done.append(path)
    return done


@pytest.fixture(scope="class")
def local_ray():
    """One in-process Ray for this class's searches (`ray_jobs.common.init_ray`, with
    the dashboard that Ray Train trials' state queries need), shut down when the class
    ends (before the module's real head starts)."""
    import shutil

    import ray

    from ray_jobs.common import init_ray

    folder = init_ray(None, dashboard=True)
    yield
    ray.shutdown()
    shutil.rmtree(folder, ignore_errors=True)


class TestOnAnInProcessRay:
    """Searches run in this process, on one local Ray for the class."""

    def test_a_trial_whose_process_dies_is_retried_from_its_last_checkpoint(self, stores, local_ray, tmp_path):
        """The trial's process exits hard after its second epoch, once; Tune retries it from the
        epoch-2 checkpoint, and it ends with the history an uninterrupted trial has."""
        from ray_jobs import tune as job

        cls_store, _ = stores
        marker = tmp_path / "died-once"

        def dies_once(params, search, stores):
            from ray import tune

            original = tune.report

            def report(metrics, checkpoint=None):
                original(metrics, checkpoint=checkpoint)
                if metrics["epoch"] == 2 and not marker.exists():
                    marker.write_text("x")
                    os._exit(1)

            tune.report = report
            try:
                job._trial(params, search, stores)
            finally:
                tune.report = original

        search = SearchConfig(stores=(str(cls_store),), trials=1, epochs=4, patience=4, grace_period=4)
        job.build_tuner(search, tmp_path / "dies", job.TuneJobConfig(), trainable=dies_once).fit()
        job.build_tuner(search, tmp_path / "whole", job.TuneJobConfig()).fit()
        assert marker.exists()
        died, whole = leaderboard(tmp_path / "dies")[0], leaderboard(tmp_path / "whole")[0]
        assert [h["epoch"] for h in died["history"]] == [1, 2, 3, 4]
        assert died["history"] == whole["history"] and died["params"] == whole["params"]

    def test_a_trial_of_two_ray_train_workers(self, stores, local_ray, tmp_path):
        """--workers-per-trial 2: each trial is a Ray Train run (DDP over gloo) under its trial
        folder, its reports forwarded to Tune; rank 0 writes the trial's files. (On the class's
        in-process Ray: `bertvision tune` starts the same, with its dashboard.)"""
        search = SearchConfig(stores=(str(stores[0]),), trials=1, epochs=2, patience=2, grace_period=2,
                              max_concurrent=1, cpus_per_trial=1.0)  # fmt: skip
        from ray_jobs import tune as job

        board = job.run(search, str(tmp_path / "search"), job.TuneJobConfig(workers_per_trial=2))
        assert len(board) == 1
        for row in board:
            assert [h["epoch"] for h in row["history"]] == [1, 2]
            assert row["workers"] == 2
            folder = Path(row["trial"])
            assert (folder / "head.safetensors").is_file() and list((folder / "tb").glob("events.out.tfevents.*"))
            assert list((folder / "ray-train").glob("checkpoint_*"))


# --- a real head: `ray start --head`, a second node, `ray job submit` --------------------------


@pytest.fixture(scope="module")
def tune_head(tmp_path_factory):
    """A real head of 1 CPU for the two-node test (a second trial at once must go to another
    node), dashboard and job API on 127.0.0.1, token authentication, stopped by what it
    started (`tests/ray_cluster.py`; never `ray stop`)."""
    from tests import ray_cluster as rc

    root = tmp_path_factory.mktemp("tune-head")
    token = rc.write_token(root / "token")
    node = rc.start_head(rc.short_dir(root, "h"), token, num_cpus=1)
    node.token = token
    yield node
    node.stop()


def _alive_nodes(head) -> int:
    import sys

    code = f"import ray; ray.init(address={head.gcs!r}, logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=head.env, timeout=60)
    return int(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else 0


def test_two_nodes_run_trials_on_both(stores, tune_head, tmp_path):
    """A worker node joins the head on loopback; two trials at once, one CPU each, the head
    holding one CPU: one trial runs on each node (trial.json's ``node``). The trials run 100
    epochs (a few seconds): a trial that ended before the worker's trial process had started
    (torch imported there) would hand its reused process to the other trial."""
    from tests import ray_cluster as rc

    worker = rc.start_worker(tune_head, rc.short_dir(tmp_path, "w"), tune_head.token, num_cpus=1,
                             remove_temp_dir=True)  # fmt: skip
    try:
        deadline = time.time() + 60
        while _alive_nodes(tune_head) < 2:
            assert time.time() < deadline, "second node did not join"
            time.sleep(1)
        out = tmp_path / "search"  # the same filesystem for both nodes
        proc = subprocess.run([*bertvision_cli(), "tune", "--stores", str(stores[0]), "--trials", "2", "--epochs", "100",
                               "--patience", "100", "--grace-period", "100", "--max-concurrent", "2", "--cpus-per-trial", "1", "--out", str(out)],
                              capture_output=True, text=True, timeout=300,
                              env={**tune_head.env, "RAY_ADDRESS": tune_head.gcs})  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        worker.stop()  # this node only; the fixture stops the head
    board = leaderboard(out)
    assert len(board) == 2 and len({r["node"] for r in board}) == 2, [(r["node"], r["timing"]) for r in board]
    for row in board:
        t = row["timing"]
        assert 0 <= t["to_first_step_s"] and 0 < t["train_seconds"] <= t["wall_seconds"] and t["epochs"] >= 1
    assert worker.processes() == [] and tune_head.alive()


def test_search_through_ray_job_submit(stores, shared_ray, tmp_path):
    from tests.conftest import REPO

    out = tmp_path / "search"
    cmd = [str(Path(shared_ray.env["PATH"].split(os.pathsep)[0]) / "ray"), "job", "submit", "--address",
           shared_ray.dashboard, "--working-dir", ".", "--", "python", "-m", "ray_jobs.tune", "--stores",
           str(stores[0]), "--trials", "3", "--initial-points", "2", "--epochs", "2", "--max-concurrent", "1",
           "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=shared_ray.env, cwd=REPO, timeout=400)
    assert proc.returncode == 0 and "succeeded" in proc.stdout.lower(), (proc.stdout + proc.stderr)[-3000:]
    board = json.loads((out / "leaderboard.json").read_text())
    assert len(board) == 3 and all(r["node"] for r in board)
