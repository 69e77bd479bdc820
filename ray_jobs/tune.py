"""Ray Tune job: a HyperOpt search over AdapterPooler heads on stored states.

    ray job submit --working-dir . -- python -m ray_jobs.tune --stores /mnt/runs/rte/store \\
        --trials 48 --out /mnt/runs/rte/tune
    bertvision tune --stores runs/rte/store --trials 48 --out runs/rte/tune   # in-process Ray

The driver reads every store once (`bertvision.search.load_stores`: train and validation) for the
trials, through the object store. `HyperOptSearch` starts from the default head, draws
``--initial-points`` at random, then models the ended trials; ``--max-concurrent`` trials run at
once, proposed together from the trials ended before them, and the stopping rule
(`bertvision.search.Rungs`) counts only those too: the same search whatever the timing. A trial
(`bertvision.search.run_trial`) whose process dies is retried from its last checkpoint
(``--checkpoint-every``). ``--resume`` finishes a search whose driver was killed from the search's
own record (search.json: every ended trial, told to HyperOpt and the stopping rule), never from
Tune's pickled state: ``--trials`` in all, none run twice.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from pathlib import Path

import ray
import ray.train
import torch
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.hyperopt import HyperOptSearch

from bertvision.config import SearchConfig, TrainJobConfig, TuneJobConfig
from bertvision.distributed import World
from bertvision.errors import ConfigError
from bertvision.io import atomic_write_json
from bertvision.outdir import absolute_inputs
from bertvision.printing import print_leaderboard
from bertvision.runtime import progress
from bertvision.search import (
    RECORD,
    Rungs,
    default_point,
    ended_trials,
    finish_search,
    load_stores,
    new_record,
    plain_params,
    run_trial,
    space,
)
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


def build_tuner(search: SearchConfig, out: Path, job: TuneJobConfig, trainable=_trial) -> tune.Tuner | None:
    """The Tuner of this search (with ``job.resume``: of its trials not yet ended; None when none is left)."""
    stores = load_stores(search)
    kind, data = next(iter(stores.values()))
    ended = ended_trials(out, search) if job.resume else {}
    given = {"search": search.resolved(kind.family), "stores": stores}
    resources = {"cpu": search.cpus_per_trial, "gpu": search.gpus_per_trial}
    if job.workers_per_trial > 1:  # the trial a Ray Train run: its driver takes a sliver, its workers the rest
        trainable, given["workers"], resources = _trial_on_workers, job.workers_per_trial, {"cpu": 0.1}
    if "checkpoint_every" in inspect.signature(trainable).parameters:  # a test's own trainable may not take it
        given["checkpoint_every"] = job.checkpoint_every
    fn = tune.with_resources(tune.with_parameters(trainable, **given), resources)
    record = new_record(out, search, ended)
    if len(ended) >= search.trials:
        return None
    tokens = any(k.model_fields(d).get("token_states") for k, d in stores.values())  # heads pooling tokens: a choice
    first = default_point(search, kind.family, tokens)
    searcher = _Proposals(space(search, data.manifest["num_hidden_states"], tokens), [(t["params"], t["scores"][-1]) for t in ended.values()],
                          metric=METRIC, mode="max", n_initial_points=search.initial_points, random_state_seed=search.seed + len(ended),
                          points_to_evaluate=[first] if all(t["params"] != first for t in ended.values()) else None)  # fmt: skip
    rungs = Rungs(given["search"].epochs, search.grace_period)
    for name, t in ended.items():
        rungs.end(name, t["scores"])
    return tune.Tuner(fn, tune_config=tune.TuneConfig(
        metric=METRIC, mode="max", num_samples=search.trials - len(ended), trial_dirname_creator=_trial_dirname,
        reuse_actors=job.workers_per_trial == 1,  # a Train-run trial leaves its driver unreusable
        search_alg=ConcurrencyLimiter(searcher, max_concurrent=search.max_concurrent, batch=True),
        scheduler=_Stopping(rungs),
    ), run_config=tune.RunConfig(
        name=out.name, storage_path=str(out.parent), failure_config=tune.FailureConfig(max_failures=2),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1), verbose=job.verbose,
        callbacks=[_Record(out, record, search.trials)],
    ))  # fmt: skip


@common.holding("search")
def run(search: SearchConfig, out_dir: str, job: TuneJobConfig | None = None) -> list[dict]:
    """Run (or, with ``job.resume``, finish) the search into ``out_dir``; returns the leaderboard."""
    job = job or TuneJobConfig()
    out = Path(out_dir).expanduser().absolute()
    search = absolute_inputs(search)  # trials run in folders of their own
    if job.resume:  # checked before a Ray starts
        ended_trials(out, search)
    elif (out / RECORD).exists() or tune.Tuner.can_restore(str(out)):
        raise ConfigError(f"{out} holds a search already; add --resume to finish it, or give another --out")

    def fit() -> None:
        if (tuner := build_tuner(search, out, job)) is not None:
            common.tune_fit(tuner, "search", out)

    common.on_ray(job.address, fit, dashboard=job.workers_per_trial > 1, record=out)
    return finish_search(out, set(json.loads((out / RECORD).read_text())["trials"]))


def _trial_dirname(trial) -> str:
    return f"trial-{trial.trial_id}"


class _Proposals(HyperOptSearch):
    """HyperOptSearch told a resumed search's ended trials, (params, score) each, as evaluated points."""

    def __init__(self, space: dict, evaluated: list[tuple[dict, float]], **kw):
        import hyperopt
        from hyperopt.fmin import generate_trial

        super().__init__(space, **kw)
        docs = []
        for tid, (params, score) in zip(self._hpopt_trials.new_trial_ids(len(evaluated)), evaluated, strict=True):
            point = dict(params)
            self._convert_categories_to_indices(point)  # choices as HyperOpt holds them: indices
            docs.append({**generate_trial(tid, point), "state": hyperopt.JOB_STATE_DONE,
                         "result": {"loss": -score, "status": hyperopt.STATUS_OK}})  # fmt: skip
        self._hpopt_trials.insert_trial_docs(docs)
        self._hpopt_trials.refresh()


class _Stopping(FIFOScheduler):
    """`Rungs` as Tune's scheduler: trials stopped early at a weak score, the same whatever the timing."""

    def __init__(self, rungs: Rungs):
        super().__init__()
        self.rungs = rungs

    def on_trial_add(self, tune_controller, trial) -> None:
        self.rungs.start(_trial_dirname(trial))

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        keep = self.rungs.keep(_trial_dirname(trial), result["epoch"], result[METRIC])
        return TrialScheduler.CONTINUE if keep else TrialScheduler.STOP

    def on_trial_complete(self, tune_controller, trial, result=None) -> None:
        self.rungs.end(_trial_dirname(trial))

    on_trial_remove = on_trial_error = lambda self, tune_controller, trial: self.rungs.end(_trial_dirname(trial))


class _Record(tune.Callback):
    """The driver's record of the search (search.json: each ended trial's params, status and scores,
    rewritten whole as each ends) and its bar over the trials (a step per trial ended, with the
    best validation score so far)."""

    def __init__(self, out: Path, record: dict, total: int):
        self.out, self.record, self.total, self.bar, self.scores = out, record, total, None, {}

    def setup(self, **info) -> None:
        self.bar = progress(self.total, "trials", initial=len(self.record["trials"]), unit="trial")
        self._show_best()

    def _show_best(self) -> None:
        best = max((s for t in self.record["trials"].values() for s in t["scores"]), default=None)
        if best is not None:
            self.bar.set_postfix_str(f"best {best:.4f}")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.scores.setdefault(trial.trial_id, {})[result["epoch"]] = result[METRIC]

    def _ended(self, trial, status: str) -> None:
        scores = self.scores.pop(trial.trial_id, {})
        self.record["trials"][_trial_dirname(trial)] = {
            "params": plain_params(trial.config),
            "status": status, "scores": [scores[e] for e in sorted(scores)]}  # fmt: skip
        atomic_write_json(self.out / RECORD, self.record)
        if self.bar is not None:
            self._show_best()
            self.bar.update(1)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._ended(trial, "done")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._ended(trial, "error")

    def on_experiment_end(self, trials, **info) -> None:
        if self.bar is not None:
            self.bar.close()


def main(argv: list[str] | None = None) -> int:
    return common.main(argv, SearchConfig, TuneJobConfig, run, print_leaderboard, __doc__, "ray_jobs.tune")


if __name__ == "__main__":
    raise SystemExit(main())
