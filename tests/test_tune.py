"""Head searches (bertvision.search, ray_jobs/tune.py, `bertvision tune`) on a real Ray.

A toy task embedded with a tiny random BERT gives small stores: trials take a second or two, and
the tests check the search's shape (the default configuration first, trial folders, the
leaderboard), that trials never read dev, the resume of a killed driver, and a trial whose
process dies being retried from its checkpoint.
"""

import contextlib
import json
import os
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


KILLED_EPOCHS = 8


@pytest.fixture(scope="module")
def killed_search(stores, shared_ray, tmp_path_factory) -> dict:
    """A search of 3 trials whose driver alone was SIGKILLed after its second trial ended (its
    local Ray's agents live on a while, its temporary folder stays); then its folder tampered with
    as a full disk and a hostile group member would: Tune's experiment state truncated to half,
    ``tuner.pkl`` replaced by a pickle that runs code, and a trial folder the search never ended
    planted. Then `--resume`, beside another Ray of this user's (the shared head), untouched."""
    import pickle
    import re
    import shutil

    import psutil

    cls_store, _ = stores
    out = tmp_path_factory.mktemp("killed") / "search"
    # KILLED_EPOCHS epochs (a checkpoint each): the search is killed within 0.05 s of its second
    # trial ending, long before the third can
    e = KILLED_EPOCHS
    args = ["--stores", cls_store, "--trials", 3, "--initial-points", 2, "--epochs", e, "--patience", e,
            "--grace-period", e, "--max-concurrent", 1, "--out", out]  # fmt: skip
    log = out.parent / "tune.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([*bertvision_cli(), "tune", *map(str, args)], stdout=f, stderr=subprocess.STDOUT,
                                env=own_ray_env())  # fmt: skip
    left = []
    try:
        deadline = time.time() + 300
        # two trials ended: trial.json says so, and so does search.json where the search keeps one
        while len(_finished(out)) < 2 or ((out / "search.json").exists() and len(_ended(out)) < 2):
            assert proc.poll() is None, "the search ended before it was killed"
            assert time.time() < deadline, "no trials ended"
            time.sleep(0.05)
        left = psutil.Process(proc.pid).children(recursive=True)  # GCS, raylet, agents, workers
    finally:
        proc.kill()  # the driver alone
        proc.wait()
    try:
        temp_dir = Path(re.search(r"local Ray of this process in (\S+)", log.read_text())[1])
        outlived = temp_dir.is_dir() and any(_alive(p) for p in left)
        bystander = sorted(shared_ray.processes())
        before = {p: _outcome(p) for p in _finished(out)}
        states = list(out.glob("experiment_state-*.json"))
        assert states and (out / "tuner.pkl").is_file()
        for state in states:  # cut short, as a full disk leaves it
            state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
        marker = out.parent / "pwned"
        (out / "tuner.pkl").write_bytes(pickle.dumps(_Runs(f"touch {marker}")))
        shutil.copytree(next(iter(before)).parent, out / "trial-lost")  # a trial the search never ended
        resumed = _tune(*args, "--resume")
        deadline = time.time() + 30  # workers started later end with their raylet
        while any(_alive(p) for p in left) and time.time() < deadline:
            time.sleep(0.5)
        gone = not any(_alive(p) for p in left)
    finally:
        for p in left:  # whatever of the killed search's Ray is left: this test started it
            with contextlib.suppress(psutil.Error):
                p.kill()
    return {"out": out, "before": before, "marker": marker, "resumed": resumed, "temp_dir": temp_dir,
            "outlived": outlived, "gone": gone, "bystander": (bystander, sorted(shared_ray.processes()))}  # fmt: skip


def _alive(p) -> bool:
    import psutil

    with contextlib.suppress(psutil.Error):
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    return False


class _Runs:
    """A pickle that runs a shell command when loaded."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_a_killed_search_resumes_to_the_requested_total_whatever_tune_saved(killed_search):
    """--resume reads the search's own record, not Tune's (unreadable) experiment state: the
    requested number of trials in all, the ended ones kept as they were, told to HyperOpt (no
    point proposed twice); a trial folder the search did not end is set aside, not on the board."""
    from bertvision.search import ORPHANS

    out = killed_search["out"]
    board = leaderboard(out)
    assert len(board) == 3 and len(_finished(out)) == 3 and len(json.loads((out / "search.json").read_text())["trials"]) == 3
    assert (out / ORPHANS / "trial-lost" / TRIAL_FILE).is_file() and "trial-lost" not in {Path(r["trial"]).name for r in board}
    assert f"moved to {out / ORPHANS}" in killed_search["resumed"].stdout
    for path, text in killed_search["before"].items():
        assert _outcome(path) == text  # an ended trial did not run again
    assert len({json.dumps(r["params"], sort_keys=True) for r in board}) == 3


def test_a_resume_runs_no_code_from_the_search_folder(killed_search):
    """The replaced tuner.pkl is never unpickled: its command did not run."""
    assert not killed_search["marker"].exists()


def test_the_resume_removes_what_the_killed_searchs_ray_left(killed_search):
    """The killed driver's agents outlived it and its Ray's temporary folder stayed; the resume,
    once it held the folder, killed what its record names and removed the folder, and left the
    other Ray of this user whole."""
    k = killed_search
    assert k["outlived"]  # the leftovers were there
    assert k["gone"] and not k["temp_dir"].exists() and not (k["out"] / ".bertvision-ray.json").exists()
    assert k["bystander"][0] == k["bystander"][1] and k["bystander"][0]


def test_a_search_record_that_cannot_be_read_stops_the_resume(stores, killed_search, tmp_path):
    """search.json cut short: --resume refuses in one line naming it, before any Ray starts."""
    import shutil

    out = tmp_path / "search"
    shutil.copytree(killed_search["out"], out)
    record = out / "search.json"
    record.write_bytes(record.read_bytes()[:100])
    proc = _tune("--stores", stores[0], "--resume", "--out", out, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and str(record) in lines[0] and "cannot be resumed" in lines[0], proc.stderr
    assert "local Ray" not in proc.stdout


def _outcome(path: Path) -> dict:
    """trial.json less what describes the attempt (``node``, ``timing``): a trial killed between
    its last trial.json and Tune's record of its last report runs its last epoch again, to the
    same result, on whatever node and at whatever time."""
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in ("node", "timing")}


def _ended(out: Path) -> dict:
    """The trials search.json records as ended."""
    try:
        return json.loads((out / "search.json").read_text())["trials"]
    except (OSError, json.JSONDecodeError):
        return {}


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

    def test_a_search_is_the_same_whatever_the_timing(self, stores, local_ray, tmp_path):
        """Three trials at once, each reporting after random waits (so they end in any order): two
        runs of the same search propose the same points and stop the same trials at the same epochs."""
        from ray_jobs import tune as job

        def jittery(params, search, stores):
            import random

            from ray import tune

            wait = random.Random()  # seeded by the OS: a different timing in every run
            for epoch in range(1, search.epochs + 1):
                time.sleep(wait.random() * 0.05)
                score = epoch / 100 - abs(params["lr"] - 1e-3) * 10 - params["dropout"] + params["adapter_size"] / 1000
                tune.report({"epoch": epoch, "score": score})

        search = SearchConfig(stores=(str(stores[0]),), trials=8, initial_points=3, max_concurrent=3, epochs=5,
                              patience=5, grace_period=1)  # fmt: skip
        runs = []
        for name in ("a", "b"):
            results = job.build_tuner(search, tmp_path / name, job.TuneJobConfig(), trainable=jittery).fit()
            runs.append(sorted((json.dumps(r.config, sort_keys=True), list(r.metrics_dataframe["score"])) for r in results))
        assert len(runs[0]) == 8 and runs[0] == runs[1]
        assert 0 < sum(len(scores) < 5 for _, scores in runs[0]) < 8  # some trials stopped early, not all

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


def test_a_resume_with_other_settings_is_refused_naming_them(tmp_path):
    """search.json keeps the settings: a resume may change the number of trials and how they run,
    not what is searched; the refusal names each option with the recorded and the given value."""
    from bertvision.errors import ConfigError
    from bertvision.search import ended_trials, new_record

    was = SearchConfig(stores=("/s/cls",), trials=8, epochs=10)
    new_record(tmp_path, was, {"trial-a": {"params": {"lr": 1e-3}, "status": "done", "scores": [0.5]},
                               "trial-b": {"params": {"lr": 2e-3}, "status": "error", "scores": [0.4]}})  # fmt: skip
    assert list(ended_trials(tmp_path, SearchConfig(stores=("/s/cls",), trials=12, max_concurrent=4, epochs=10))) == ["trial-a"]
    with pytest.raises(ConfigError, match=r"--epochs 10 -> 12; --seed 0 -> 1"):
        ended_trials(tmp_path, SearchConfig(stores=("/s/cls",), trials=8, epochs=12, seed=1))
