"""Ray Tune job: a HyperOpt search over AdapterPooler heads on stored states.

    ray job submit --working-dir . -- python -m ray_jobs.tune --stores /mnt/runs/rte/store \\
        --trials 48 --out /mnt/runs/rte/tune
    bertvision tune --stores runs/rte/store --trials 48 --out runs/rte/tune   # in-process Ray

The driver reads every store once (train and the validation part only: `bertvision.search.
load_stores`) and hands them to the trials through the object store (`tune.with_parameters`:
one copy per node, shared by its trials; no trial reads Parquet). `HyperOptSearch` (TPE) starts
from the default head configuration, draws ``--initial-points`` at random, then models the
finished trials; a `ConcurrencyLimiter` keeps ``--max-concurrent`` trials running so that TPE
learns from results. `ASHAScheduler` stops trials whose per-epoch validation score trails.
Each trial is `bertvision.search.run_trial`: it reports after every epoch, with a checkpoint of
its whole training state every ``--checkpoint-every`` epochs (default: every epoch; trial.json
records each trial's node and timing), so a trial whose process dies is retried from its last
checkpoint (`FailureConfig`), and ``--resume`` after the driver was killed finishes the search through
`Tuner.restore` (the searcher's state included): the total stays ``--trials`` and finished
trials do not run again.

Output (``--out``, shared storage on a cluster): one folder per trial (trial.json, the best
weights as head.safetensors + head_config.json, tb/), Tune's own experiment state, and
leaderboard.json. ``bertvision tune show OUT`` prints the leaderboard from disk.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import tune

from bertvision.config import SearchConfig, add_arguments, from_arguments
from bertvision.errors import BertVisionError, ConfigError
from bertvision.io import atomic_write_json
from bertvision.search import (
    ORPHANS,
    TRIAL_FILE,
    default_point,
    format_leaderboard,
    leaderboard,
    load_stores,
    run_trial,
    space,
)
from ray_jobs.local import absolute_inputs, on_ray

METRIC = "score"
CHECKPOINT_EVERY = 1
"""Default --checkpoint-every: a trial checkpoints its training state every this many epochs."""


@dataclass(frozen=True)
class TuneJobConfig:
    """How the search job runs (not what it searches)."""

    address: str | None = None
    """Ray cluster to attach to (default: $RAY_ADDRESS, else a local Ray of this job's own)."""
    resume: bool = False
    """Finish the search already in --out (after the driver was killed) instead of refusing it."""
    checkpoint_every: int = CHECKPOINT_EVERY
    """A trial checkpoints its training state every this many epochs (a retried trial reruns
    at most this many less one)."""

    workers_per_trial: int = 1
    """Ray Train workers per trial: above 1 each trial is a Ray Train run of its own (DDP; the
    trial's --cpus-per-trial and --gpus-per-trial split evenly between its workers)."""

    verbose: int = 1
    """Tune's own console output: 0 none (the trials' progress bar only), 1 status tables, 2
    every result too."""

    def __post_init__(self):
        if self.verbose not in (0, 1, 2):
            raise ConfigError(f"--verbose must be 0, 1 or 2, not {self.verbose}")
        if self.checkpoint_every < 1:
            raise ConfigError(f"--checkpoint-every must be positive, not {self.checkpoint_every}")
        if self.workers_per_trial < 1:
            raise ConfigError(f"--workers-per-trial must be positive, not {self.workers_per_trial}")


def _trial(params: dict, search: SearchConfig, stores: dict, checkpoint_every: int = CHECKPOINT_EVERY) -> None:
    """Tune's trainable: one `run_trial`, resumed from the trial's last checkpoint if any; it
    reports every epoch and checkpoints every ``checkpoint_every``."""
    entered = time.time()
    import logging

    import torch

    torch.set_num_threads(max(1, int(search.cpus_per_trial)))
    # Ray logs "Checkpoint successfully created" at INFO for every epoch of every trial.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    # The trial's folder in the storage path (local or shared storage): its files go there
    # directly (get_trial_dir() is a node-local staging folder that reused actors do not sync).
    folder = Path(tune.get_context().get_storage().trial_fs_path)
    checkpoint = tune.get_checkpoint()
    resume = None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = torch.load(Path(d) / "state.pt", weights_only=True)

    def report(metrics: dict, state) -> None:
        if metrics["epoch"] % checkpoint_every:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(state(), Path(d) / "state.pt")
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    run_trial(search, params, stores, folder, report, resume,
              extra={"entered": entered, "node": ray.get_runtime_context().get_node_id()})


def _trial_on_workers(params: dict, search: SearchConfig, stores: dict, checkpoint_every: int = CHECKPOINT_EVERY,
                      workers: int = 2) -> None:  # fmt: skip
    """Tune's trainable when a trial has several workers: a small driver that runs the trial as
    a Ray Train run (`TorchTrainer`, V2) under the trial's folder and forwards its reports to
    Tune (`TuneReportCallback`). A worker that dies is replaced and the run continues from its
    last checkpoint (Train's own `FailureConfig`); a retried trial finds the same run (same
    name and storage path) and resumes it too."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    folder = Path(tune.get_context().get_storage().trial_fs_path)
    gpu = search.gpus_per_trial > 0
    per_worker = {"CPU": search.cpus_per_trial / workers, **({"GPU": search.gpus_per_trial / workers} if gpu else {})}
    trainer = TorchTrainer(
        _trial_worker,
        train_loop_config={"params": params, "search": search, "stores": stores, "folder": str(folder),
                           "checkpoint_every": checkpoint_every, "entered": time.time()},
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu, resources_per_worker=per_worker),
        run_config=RunConfig(name="ray-train", storage_path=str(folder), callbacks=[TuneReportCallback()],
                             failure_config=FailureConfig(max_failures=2),
                             checkpoint_config=CheckpointConfig(num_to_keep=1)),
    )  # fmt: skip
    trainer.fit()


def _trial_worker(config: dict) -> None:
    """One worker of a multi-worker trial: `run_trial` with this worker's `World` (rank 0 writes
    the trial's files), resumed from the Train run's last checkpoint if any."""
    import ray.train
    import torch

    from bertvision.distributed import World

    search: SearchConfig = config["search"]
    world = World.current()
    torch.set_num_threads(max(1, int(search.cpus_per_trial / world.size)))
    every = config["checkpoint_every"]
    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = torch.load(Path(d) / "state.pt", weights_only=True)

    def report(metrics: dict, state) -> None:
        if not world.main or metrics["epoch"] % every:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(state(), Path(d) / "state.pt")
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

    run_trial(search, config["params"], config["stores"], Path(config["folder"]), report, resume,
              extra={"entered": config["entered"], "node": ray.get_runtime_context().get_node_id(),
                     "workers": world.size}, world=world)  # fmt: skip


def build_tuner(search: SearchConfig, out: Path, job: TuneJobConfig, trainable=_trial) -> tune.Tuner:
    """The Tuner of this search (restored from ``out`` with ``job.resume``)."""
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.hyperopt import HyperOptSearch

    stores = load_stores(search)
    kind, data = next(iter(stores.values()))
    resolved = search.resolved(kind.family)
    given = {"search": resolved, "stores": stores}
    resources = {"cpu": search.cpus_per_trial, "gpu": search.gpus_per_trial}
    if job.workers_per_trial > 1:  # the trial a Ray Train run: its driver takes a sliver, its workers the rest
        trainable, given["workers"], resources = _trial_on_workers, job.workers_per_trial, {"cpu": 0.1}
    if "checkpoint_every" in inspect.signature(trainable).parameters:  # `_trial`; a test's own may not take it
        given["checkpoint_every"] = job.checkpoint_every
    fn = tune.with_resources(tune.with_parameters(trainable, **given), resources)
    if job.resume:
        if not tune.Tuner.can_restore(str(out)):
            raise ConfigError(f"--resume: no search to resume in {out}")
        return tune.Tuner.restore(str(out), trainable=fn, resume_errored=True)
    if (out / "tuner.pkl").exists():
        raise ConfigError(f"{out} holds a search already; add --resume to finish it, or give another --out")
    tokens = any(d.manifest.get("token_layout") == "sentences" for _, d in stores.values())  # pooling to choose
    searcher = HyperOptSearch(space(search, data.manifest["num_hidden_states"], tokens), metric=METRIC, mode="max",
                              points_to_evaluate=[default_point(search, kind.family, tokens)],
                              n_initial_points=search.initial_points, random_state_seed=search.seed)  # fmt: skip
    return tune.Tuner(
        fn,
        tune_config=tune.TuneConfig(
            metric=METRIC, mode="max", num_samples=search.trials,
            reuse_actors=job.workers_per_trial == 1,  # a Train-run trial leaves its driver unreusable
            trial_dirname_creator=_trial_dirname,
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=search.max_concurrent),
            scheduler=ASHAScheduler(time_attr="epoch", max_t=resolved.epochs, grace_period=search.grace_period),
        ),
        run_config=tune.RunConfig(
            name=out.name, storage_path=str(out.parent),
            failure_config=tune.FailureConfig(max_failures=2),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1), verbose=job.verbose,
            callbacks=[TrialProgress(search.trials)],
        ),
    )  # fmt: skip


def run(search: SearchConfig, out_dir: str, job: TuneJobConfig = TuneJobConfig()) -> list[dict]:
    """Run (or, with ``job.resume``, finish) the search into ``out_dir``; returns the leaderboard."""
    out = Path(out_dir).expanduser().absolute()
    search = absolute_inputs(search)  # trials run in folders of their own
    results = on_ray(job.address, lambda: build_tuner(search, out, job).fit(), dashboard=job.workers_per_trial > 1)
    set_aside_orphans(out, {Path(r.path).name for r in results})
    board = leaderboard(out)
    atomic_write_json(out / "leaderboard.json", board)
    return board


def set_aside_orphans(out: Path, known: set[str]) -> list[Path]:
    """Move the trial folders of ``out`` that the search's results do not hold into
    ``out/orphaned/``; returns their new paths. A search killed after starting a trial but
    before Tune next saved its experiment state leaves such a folder: the resumed search does
    not know it and runs a trial of its own in its place (HyperOpt, restored, proposes the same
    point again), so on the leaderboard it would be a trial too many, half-trained, and
    perhaps a point twice."""
    moved = []
    for record in sorted(out.glob(f"*/{TRIAL_FILE}")):
        trial = record.parent
        if trial.name not in known:
            target = out / ORPHANS / trial.name
            target.parent.mkdir(exist_ok=True)
            trial.rename(target)
            moved.append(target)
    if moved:
        print(f"{len(moved)} trial folder(s) that a killed search started after Tune last saved its state "
              f"(the resumed search ran trials of its own in their place) moved to {out / ORPHANS}",
              flush=True)  # fmt: skip
    return moved


class TrialProgress(tune.Callback):
    """A progress bar over the search's trials on the driver: one step per trial that ends
    (finished, stopped early by ASHA, or failed for good); silent off a terminal."""

    def __init__(self, total: int):
        self.total, self.bar = total, None

    def setup(self, **info) -> None:
        from bertvision.runtime import progress

        self.bar = progress(self.total, "trials")

    def _step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._step()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._step()

    def on_experiment_end(self, trials, **info) -> None:
        if self.bar is not None:
            self.bar.close()


def _trial_dirname(trial) -> str:
    return f"trial-{trial.trial_id}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ray_jobs.tune",
        description="Search AdapterPooler head hyperparameters on stored states with Ray Tune "
        "(HyperOpt TPE, ASHA stopping); trials select on the validation part only. Same options "
        "as 'bertvision tune'.",
    )
    add_arguments(p, SearchConfig, required=("stores",))
    p.add_argument("--out", required=True, help="search folder (absolute, on shared storage for a cluster)")
    add_arguments(p, TuneJobConfig)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        search, job = from_arguments(SearchConfig, args), from_arguments(TuneJobConfig, args)
        if not Path(args.out).is_absolute() and (job.address or os.environ.get("RAY_ADDRESS")):
            raise ConfigError(f"--out {args.out} is relative: a Ray job runs in a temporary copy of the working "
                              "directory; give an absolute path on shared storage")  # fmt: skip
        print(format_leaderboard(run(search, args.out, job), search.top_k))
    except BertVisionError as e:
        print(f"ray_jobs.tune: error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
