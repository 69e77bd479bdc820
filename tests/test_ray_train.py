"""Head training through Ray Train (ray_jobs/train.py, `bertvision train --ray`) on a real Ray.

One worker must compute exactly what the library loop computes (same batches, no DDP wrapper
for one rank): the tests compare weights and validation histories bit for bit. Two workers (DDP
over gloo, half a CPU each on this small machine) must train to the end and write the library's
output; on token stores each reads its own shards. A worker process killed mid-run must be
replaced, and the run must end with every epoch once and a loadable head.
"""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from bertvision.config import HeadTrainConfig, Optimisation
from tests.conftest import bertvision_cli, own_ray_env, write_toy_task
from tests.test_squad_pipeline import squad_dir, tiny_qa, token_store  # noqa: F401  (fixtures)

pytest.importorskip("ray")
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def sentence_store(tmp_path_factory, tiny_bert_dir) -> Path:
    from bertvision.config import EmbedConfig
    from bertvision.embed import embed

    root = tmp_path_factory.mktemp("ray-train")
    task = write_toy_task(root / "task", n_train=240, n_dev=40)
    embed(EmbedConfig(task=str(task), checkpoint=str(tiny_bert_dir), selection="mean"), root / "store")
    return root / "store"


@pytest.fixture(scope="module")
def local_ray():
    """An in-process Ray of this module's own (`ray_jobs.common.init_ray`, with the dashboard
    that Ray Train's state queries need, as the jobs start it), shut down after."""
    import shutil

    import ray

    from ray_jobs.common import init_ray

    folder = init_ray(None, dashboard=True)
    yield
    ray.shutdown()
    shutil.rmtree(folder, ignore_errors=True)


def _library_run(cfg: HeadTrainConfig, out: Path) -> None:
    """`train_heads` in this process with one torch thread, as a 1-CPU worker runs: the same
    float operations in the same order, so the same bits."""
    import torch

    from bertvision.train import train_heads

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_heads(cfg, out)
    finally:
        torch.set_num_threads(threads)


def _same_run(a: Path, b: Path) -> None:
    """Two head runs of one seed: the same validation history, epoch, dev scores and weights."""
    from safetensors.torch import load_file

    ma, mb = (json.loads((p / "seed-0" / "metrics.json").read_text()) for p in (a, b))
    assert ma["validation_history"] == mb["validation_history"]
    assert ma["best_epoch"] == mb["best_epoch"]
    for split in ("dev", "test"):
        assert ma.get(split) == mb.get(split)
    wa, wb = (load_file(str(p / "seed-0" / "head.safetensors")) for p in (a, b))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert (wa[k] == wb[k]).all(), k


def _check_two_workers(out: Path, epochs: int) -> dict:
    from bertvision.train import load_head

    metrics = json.loads((out / "seed-0" / "metrics.json").read_text())
    assert metrics["workers"] == 2
    assert [h["epoch"] for h in metrics["validation_history"]] == list(range(1, epochs + 1))
    model, meta = load_head(out / "seed-0")
    assert meta["train"]["seeds"] == [0]
    assert list((out / "seed-0" / "tb").glob("events.out.tfevents.*"))
    assert json.loads((out / "summary.json").read_text())["seeds"] == [0]
    return metrics


def test_sentence_heads_one_worker_is_the_library_loop(sentence_store, local_ray, tmp_path):
    """(Two workers on this store: the killed-worker test below.)"""
    from bertvision.errors import ConfigError
    from ray_jobs import train as job

    cfg = HeadTrainConfig(store=str(sentence_store), seeds=(0,), optim=Optimisation(epochs=3, patience=3, batch_size=16))
    _library_run(cfg, tmp_path / "lib")
    job.run(cfg, str(tmp_path / "one"), job.TrainJobConfig(workers=1))
    _same_run(tmp_path / "lib", tmp_path / "one")
    one = json.loads((tmp_path / "one" / "seed-0" / "metrics.json").read_text())
    assert one["workers"] == 1 and one["resumed_from_epochs"] == [] and one["dropped_batches"] == 0
    assert json.loads((tmp_path / "one" / "config.json").read_text())["train_rows"] == one["train_rows"] > 0
    # A finished run is reused only for the same number of workers.
    head = (tmp_path / "one" / "seed-0" / "head.safetensors").stat().st_mtime_ns
    job.run(cfg, str(tmp_path / "one"), job.TrainJobConfig(workers=1))
    assert (tmp_path / "one" / "seed-0" / "head.safetensors").stat().st_mtime_ns == head
    with pytest.raises(ConfigError, match="ray_workers"):
        job.run(cfg, str(tmp_path / "one"), job.TrainJobConfig(workers=2, cpus_per_worker=0.5))


def test_span_heads_one_worker_is_the_library_loop_two_read_their_own_shards(token_store, squad_dir, local_ray,  # noqa: F811
                                                                             tmp_path):  # fmt: skip
    from ray_jobs import train as job

    store, _ = token_store
    cfg = HeadTrainConfig(store=str(store), seeds=(0,), data_dir=str(squad_dir), validation_fraction=0.2,
                          optim=Optimisation(epochs=2, patience=2, batch_size=8))  # fmt: skip
    _library_run(cfg, tmp_path / "lib")
    job.run(cfg, str(tmp_path / "one"), job.TrainJobConfig(workers=1))
    _same_run(tmp_path / "lib", tmp_path / "one")
    job.run(cfg, str(tmp_path / "two"), job.TrainJobConfig(workers=2, cpus_per_worker=0.5))
    two = _check_two_workers(tmp_path / "two", 2)
    assert (tmp_path / "two" / "seed-0" / "predictions-dev.json").is_file()
    assert two["dropped_batches"] == _dropped_by_two_ranks(cfg, epochs=2) > 0


def _dropped_by_two_ranks(cfg: HeadTrainConfig, epochs: int) -> int:
    """The batches two ranks leave over, replayed from the library: each epoch both ranks draw
    their batches from the seed's generator; the epoch ends when the first runs out, and the
    other's remaining batches are dropped."""
    import copy

    from bertvision.distributed import World
    from bertvision.kinds import store_kind

    kind, _, spec = store_kind(cfg.store)
    cfg = cfg.resolved(kind.family)
    data = kind.load(cfg, Path(cfg.store), spec, [])
    rng, dropped = kind.rng(cfg.seeds[0]), 0
    for _ in range(epochs):
        counts = [sum(1 for _ in kind.batches(data, cfg.optim.batch_size, copy.deepcopy(rng), World(r, 2)))
                  for r in range(2)]  # fmt: skip
        rng.integers(2**31)  # the epoch's seed, drawn by each rank
        dropped += sum(counts) - 2 * min(counts)
    return dropped


def test_token_shards_split_by_rank_cover_the_store_once(token_store):  # noqa: F811
    from bertvision import store as st

    store, _ = token_store
    train = store / "train"
    every = [w for shard in st.iter_token_shards(train, shuffle=True, seed=3) for w in shard.ids]
    parts = [[w for shard in st.iter_token_shards(train, shuffle=True, seed=3, part=(k, 2)) for w in shard.ids]
             for k in range(2)]  # fmt: skip
    assert parts[0] and parts[1] and not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(every)
    assert len(st.read_manifest(train)["shards"]) >= 2


def test_world_of_one_changes_nothing_and_batches_must_split():
    import torch

    from bertvision.distributed import World
    from bertvision.errors import ConfigError

    one, rows = World(), torch.arange(7)
    assert one.piece(rows) is rows and one.share({"a": 1}) == {"a": 1} and one.total(3) == 3
    assert list(one.zip_shortest(iter([1, 2]))) == [1, 2]
    assert World(1, 2).piece(rows).tolist() == [4, 5, 6] and World(0, 2).piece(rows).tolist() == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match="multiple of 2"):
        World(0, 2).check_batch(5)
    with pytest.raises(ConfigError):
        World(2, 2)


def test_workers_without_ray_is_refused(sentence_store, tmp_path):
    proc = subprocess.run([*bertvision_cli(), "train", "--store", str(sentence_store), "--workers", "2",
                           "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 1 and "--workers" in proc.stderr and "needs --ray" in proc.stderr
    assert not (tmp_path / "x").exists()


# --- a worker killed mid-run ------------------------------------------------------------------


def _train_workers(mark: str) -> list[int]:
    """Live Ray Train worker processes started under the environment mark ``mark``."""
    from tests import ray_cluster as rc

    return [pid for pid in rc.marked_processes(mark) if b"RayTrainWorker" in rc._read(f"/proc/{pid}/cmdline")]


def _registered_epoch(run: Path) -> int:
    """The epoch of the last checkpoint Ray Train's controller has registered (a checkpoint
    folder on disk counts only once the controller has collected every rank's report of it)."""
    try:
        snapshot = json.loads((run / "checkpoint_manager_snapshot.json").read_text())
        return int(snapshot["latest_checkpoint_result"]["metrics"]["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def test_a_killed_worker_is_replaced_and_training_continues_from_its_checkpoint(sentence_store, tmp_path):
    """`bertvision train --ray --workers 2`; after the second epoch's checkpoint the test kills
    one worker process (SIGKILL). Ray Train replaces the group, every worker resumes from the
    last checkpoint, and the run ends with each epoch once and a loadable head."""
    from tests import ray_cluster as rc

    epochs, out, mark = 10, tmp_path / "killed", f"ray-train-{os.getpid()}-{time.time_ns()}"
    env = {**own_ray_env(), rc.MARK: mark}  # its own local Ray: its workers carry the mark
    proc = subprocess.Popen([*bertvision_cli(), "train", "--ray", "--workers", "2", "--cpus-per-worker", "0.5",
                             "--store", str(sentence_store), "--seeds", "0", "--epochs", str(epochs),
                             "--patience", str(epochs), "--batch-size", "16", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)  # fmt: skip
    killed = None
    try:
        deadline = time.monotonic() + 240
        while killed is None and time.monotonic() < deadline and proc.poll() is None:
            if _registered_epoch(out / "ray-train" / "seed-0") >= 3:
                workers = _train_workers(mark)
                if len(workers) == 2:
                    killed = workers[-1]
                    os.kill(killed, signal.SIGKILL)
            time.sleep(0.2)
        output, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
    assert killed is not None, "the run ended before a worker could be killed"
    assert proc.returncode == 0, output[-3000:]
    metrics = _check_two_workers(out, epochs)
    assert metrics["dropped_batches"] == 0  # in-memory stores: every rank has a piece of every batch
    assert metrics["epochs_run"] == epochs and metrics["resumed_from_epochs"], metrics["resumed_from_epochs"]
    assert all(3 <= e < epochs for e in metrics["resumed_from_epochs"])
    assert not _train_workers(mark)


# --- fine-tuning -------------------------------------------------------------------------------


def _same_checkpoints(a: Path, b: Path, names: list[str]) -> None:
    from safetensors.torch import load_file

    ma, mb = (json.loads((p / "metrics.json").read_text()) for p in (a, b))
    for name in names:
        for key in ("step", "validation", "dev", "train_loss"):
            assert ma[name][key] == mb[name][key], (name, key)
        wa, wb = (load_file(str(p / name / "model.safetensors")) for p in (a, b))
        assert all((wa[k] == wb[k]).all() for k in wa), name


def test_a_resumed_finetune_ends_as_the_uninterrupted_one(tiny_bert_dir, tmp_path):
    """The library loop's state at a save point (what a Ray Train checkpoint holds), saved with
    `torch.save` and read back with weights_only, continues to the same checkpoints and scores."""
    import torch

    from bertvision.config import FinetuneConfig
    from bertvision.distributed import ONE
    from bertvision.finetune import finetune, run_loop

    task = write_toy_task(tmp_path / "task", n_train=120, n_dev=24)
    cfg = FinetuneConfig(task=str(task), encoder=str(tiny_bert_dir), epochs=1.5, save_at=(0.5, 1.5), batch_size=8,
                         lr=1e-3)  # fmt: skip
    whole = finetune(cfg, tmp_path / "whole")
    inputs = json.loads((tmp_path / "whole" / "config.json").read_text())["inputs"]
    resolved = FinetuneConfig(**json.loads((tmp_path / "whole" / "config.json").read_text())["finetune"]
                              | {"windowing": cfg.windowing, "save_at": cfg.save_at})  # fmt: skip
    saved = []

    def keep_first(fraction, meta, state):
        if not saved:
            torch.save(state(), tmp_path / "state.pt")
            saved.append(fraction)

    # the first run is stopped after its first save point: an exception out of on_save
    class Stop(Exception):
        pass

    def stop_after_first(fraction, meta, state):
        keep_first(fraction, meta, state)
        raise Stop

    with pytest.raises(Stop):
        run_loop(resolved, tmp_path / "resumed", inputs, ONE, on_save=stop_after_first)
    assert saved == [0.5]
    resume = torch.load(tmp_path / "state.pt", weights_only=True)
    assert resume["step"] == whole.checkpoints["checkpoint-e0.5"]["step"]
    run_loop(resolved, tmp_path / "resumed", inputs, ONE, resume=resume)
    _same_checkpoints(tmp_path / "whole", tmp_path / "resumed", ["checkpoint-e0.5", "checkpoint-e1.5"])


def test_finetune_one_worker_is_the_library_loop(tiny_bert_dir, local_ray, tmp_path):
    """(Two workers: the span fine-tuning test below.)"""
    import torch

    from bertvision.config import FinetuneConfig
    from bertvision.finetune import finetune
    from ray_jobs import finetune as job
    from ray_jobs.train import TrainJobConfig

    task = write_toy_task(tmp_path / "task", n_train=120, n_dev=24)
    cfg = FinetuneConfig(task=str(task), encoder=str(tiny_bert_dir), epochs=1, save_at=(0.5, 1), batch_size=8,
                         lr=1e-3)  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a 1-CPU worker runs: the same bits
    try:
        finetune(cfg, tmp_path / "lib")
    finally:
        torch.set_num_threads(threads)
    job.run(cfg, str(tmp_path / "one"), TrainJobConfig(workers=1))
    _same_checkpoints(tmp_path / "lib", tmp_path / "one", ["checkpoint-e0.5", "checkpoint-e1"])
    assert not (tmp_path / "one" / "ray-train").exists()  # training states removed once the run is done


def test_span_finetune_on_two_workers(tiny_bert_dir, squad_dir, local_ray, tmp_path):  # noqa: F811
    """SQuAD windows through Ray Train: 2 workers, the same save points and steps as one process,
    the no-answer threshold chosen on validation by rank 0."""
    from bertvision.config import FinetuneConfig, Windowing
    from bertvision.finetune import fraction_step
    from ray_jobs import finetune as job
    from ray_jobs.train import TrainJobConfig

    cfg = FinetuneConfig(task="squad2", encoder=str(tiny_bert_dir), data_dir=str(squad_dir), epochs=1,
                         save_at=(0.5,), max_length=128, windowing=Windowing(doc_stride=48), batch_size=8,
                         lr=1e-3, validation_fraction=0.2)  # fmt: skip
    two = job.run(cfg, str(tmp_path / "two"), TrainJobConfig(workers=2, cpus_per_worker=0.5))
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["finetune"]["ray_workers"] == 2
    assert set(two.checkpoints) == {"checkpoint-e0.5", "checkpoint-e1"}
    for name, meta in two.checkpoints.items():
        assert meta["workers"] == 2 and "threshold" in meta and "dev" in meta
        assert (tmp_path / "two" / name / "predictions-dev.json").is_file()
    # the global batch is split, so a fraction means the steps it means in one process
    assert two.checkpoints["checkpoint-e1"]["step"] == config["total_steps"] == config["steps_per_epoch"]
    assert two.checkpoints["checkpoint-e0.5"]["step"] == fraction_step(0.5, config["steps_per_epoch"])
