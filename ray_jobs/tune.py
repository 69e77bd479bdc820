"""Ray Tune job: a HyperOpt search over AdapterPooler heads on stored states.

    ray job submit --working-dir . -- python -m ray_jobs.tune --stores /mnt/runs/rte/store \\
        --trials 48 --out /mnt/runs/rte/tune
    bertvision tune --stores runs/rte/store --trials 48 --out runs/rte/tune   # in-process Ray

The driver reads every store once (`bertvision.search.load_stores`: train and validation) for the
trials, through the object store. `HyperOptSearch` starts from the default head, draws
``--initial-points`` at random, then models the finished trials (``--max-concurrent`` at once);
`ASHAScheduler` stops weak trials. A trial (`bertvision.search.run_trial`) whose process dies is
retried from its last checkpoint (``--checkpoint-every``); ``--resume`` finishes a search whose
driver was killed (`Tuner.restore`): ``--trials`` in all, none run twice.
"""

from __future__ import annotations

import inspect
import logging
import time
from pathlib import Path

import ray
import ray.train
import torch
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.hyperopt import HyperOptSearch

from bertvision.config import SearchConfig, TrainJobConfig, TuneJobConfig
from bertvision.distributed import World
from bertvision.errors import ConfigError
from bertvision.outdir import absolute_inputs
from bertvision.printing import print_leaderboard
from bertvision.runtime import progress
from bertvision.search import default_point, finish_search, load_stores, run_trial, space
from ray_jobs import common

METRIC = "score"


def _trial(params: dict, search: SearchConfig, stores: dict, checkpoint_every: int = TuneJobConfig.checkpoint_every) -> None:
    """Tune's trainable: one `run_trial` in this process."""
    # Ray logs "Checkpoint successfully created" at INFO for every epoch of every trial.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    _run({"params": params, "search": search, "stores": stores, "every": checkpoint_every, "entered": time.time(),
          "folder": tune.get_context().get_storage().trial_fs_path, "threads": max(1, int(search.cpus_per_trial))}, tune)  # fmt: skip


def _trial_on_workers(params: dict, search: SearchConfig, stores: dict, checkpoint_every: int = 1, workers: int = 2) -> None:
    """Tune's trainable for a trial of several workers: a small driver running it as a Ray Train run
    in the trial's folder, reports forwarded to Tune; a retried trial resumes the same run."""
    folder = tune.get_context().get_storage().trial_fs_path
    job = TrainJobConfig(workers=workers, cpus_per_worker=search.cpus_per_trial / workers,
                         gpus_per_worker=search.gpus_per_trial / workers)  # fmt: skip
    config = {"params": params, "search": search, "stores": stores, "folder": folder, "every": checkpoint_every,
              "entered": time.time()}  # fmt: skip
    common.trainer(job, _trial_worker, config, Path(folder), "ray-train", keep=1, callbacks=[TuneReportCallback()]).fit()


def _trial_worker(config: dict) -> None:
    _run(config, ray.train)


def _run(config: dict, api) -> None:
    """`run_trial` on this process's `World` (rank 0 writes) from the last checkpoint, reporting to ``api``
    (Tune; Ray Train in a worker) into the trial's storage folder (get_trial_dir() is node-local)."""
    world = World.current()
    torch.set_num_threads(config["threads"])
    resume, _ = common.resumed(api)

    def report(metrics: dict, state) -> None:
        common.report(api, metrics, state if world.main and not metrics["epoch"] % config["every"] else None)

    extra = {"entered": config["entered"], "node": ray.get_runtime_context().get_node_id(), **({"workers": world.size} if world.size > 1 else {})}
    run_trial(config["search"], config["params"], config["stores"], Path(config["folder"]), report, resume, extra, world)


def build_tuner(search: SearchConfig, out: Path, job: TuneJobConfig, trainable=_trial) -> tune.Tuner:
    """The Tuner of this search (restored from ``out`` with ``job.resume``; `run` checks the folder)."""
    stores = load_stores(search)
    kind, data = next(iter(stores.values()))
    given = {"search": search.resolved(kind.family), "stores": stores}
    resources = {"cpu": search.cpus_per_trial, "gpu": search.gpus_per_trial}
    if job.workers_per_trial > 1:  # the trial a Ray Train run: its driver takes a sliver, its workers the rest
        trainable, given["workers"], resources = _trial_on_workers, job.workers_per_trial, {"cpu": 0.1}
    if "checkpoint_every" in inspect.signature(trainable).parameters:  # a test's own trainable may not take it
        given["checkpoint_every"] = job.checkpoint_every
    fn = tune.with_resources(tune.with_parameters(trainable, **given), resources)
    if job.resume:
        return tune.Tuner.restore(str(out), trainable=fn, resume_errored=True)
    tokens = any(k.model_fields(d).get("token_states") for k, d in stores.values())  # heads pooling tokens: a choice
    searcher = HyperOptSearch(space(search, data.manifest["num_hidden_states"], tokens), metric=METRIC, mode="max", n_initial_points=search.initial_points,
                              points_to_evaluate=[default_point(search, kind.family, tokens)], random_state_seed=search.seed)  # fmt: skip
    return tune.Tuner(fn, tune_config=tune.TuneConfig(
        metric=METRIC, mode="max", num_samples=search.trials, trial_dirname_creator=_trial_dirname,
        reuse_actors=job.workers_per_trial == 1,  # a Train-run trial leaves its driver unreusable
        search_alg=ConcurrencyLimiter(searcher, max_concurrent=search.max_concurrent),
        scheduler=ASHAScheduler(time_attr="epoch", max_t=given["search"].epochs, grace_period=search.grace_period),
    ), run_config=tune.RunConfig(
        name=out.name, storage_path=str(out.parent), failure_config=tune.FailureConfig(max_failures=2),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1), verbose=job.verbose, callbacks=[TrialProgress(search.trials)],
    ))  # fmt: skip


@common.holding("search")
def run(search: SearchConfig, out_dir: str, job: TuneJobConfig | None = None) -> list[dict]:
    """Run (or, with ``job.resume``, finish) the search into ``out_dir``; returns the leaderboard."""
    job = job or TuneJobConfig()
    out = Path(out_dir).expanduser().absolute()
    if job.resume != tune.Tuner.can_restore(str(out)):  # checked before a Ray starts
        raise ConfigError(f"--resume: no search to resume in {out}" if job.resume else
                          f"{out} holds a search already; add --resume to finish it, or give another --out")  # fmt: skip
    search = absolute_inputs(search)  # trials run in folders of their own
    results = common.on_ray(job.address, lambda: build_tuner(search, out, job).fit(), dashboard=job.workers_per_trial > 1, record=out)
    return finish_search(out, {Path(r.path).name for r in results})


def _trial_dirname(trial) -> str:
    return f"trial-{trial.trial_id}"


class TrialProgress(tune.Callback):
    """The driver's bar over the trials: a step per trial ended (done, stopped, failed for good)."""

    def __init__(self, total: int):
        self.total, self.bar = total, None

    def setup(self, **info) -> None:
        self.bar = progress(self.total, "trials")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        if self.bar is not None:
            self.bar.update(1)

    on_trial_error = on_trial_complete

    def on_experiment_end(self, trials, **info) -> None:
        if self.bar is not None:
            self.bar.close()


def main(argv: list[str] | None = None) -> int:
    return common.main(argv, SearchConfig, TuneJobConfig, run, print_leaderboard, __doc__, "ray_jobs.tune")


if __name__ == "__main__":
    raise SystemExit(main())
