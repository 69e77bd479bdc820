"""The full fine-tuning baseline's runs as Ray Tune trials (`bertvision.baseline` chooses).

    python -m ray_jobs.baseline --task rte --lrs 2e-5 5e-5 1e-4 --max-epochs 3 --seeds 0 1 2 3 4 \\
        --out /mnt/bertvision/runs/rte/baseline

The library decides which fine-tuning runs there are (the learning-rate grid, then the seeds at
the setting chosen on validation) and what they mean (baseline.json); here each batch of runs is
a grid search of Tune trials, one `bertvision.finetune.finetune` each. Without $RAY_ADDRESS it
runs on a local Ray of its own, started only when a run is left to do.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

from ray import tune

from bertvision.baseline import run_baseline
from bertvision.config import BaselineGrid, FinetuneConfig
from bertvision.outdir import absolute_inputs
from bertvision.printing import print_baseline
from ray_jobs import common


def _trials(points: list[dict], base: FinetuneConfig, out: Path, name: str, done, grid: BaselineGrid,
            job_ray: common.JobRay) -> None:  # fmt: skip
    """One Tune trial per point (a grid search over the points): `finetune` of ``base`` with the
    point's fields, into ``out/<point's folder>``; ``done()`` as each ends."""
    job_ray.need()
    # each trial's steps drawn by this driver, where it is a terminal (not under `bertvision run`'s log)
    fn = tune.with_resources(tune.with_parameters(_point_trial, base=base, out=str(out), threads=max(1, int(grid.cpus_per_trial)),
                                                  bars=sys.stderr.isatty()),
                             {"cpu": grid.cpus_per_trial, "gpu": grid.gpus_per_trial})  # fmt: skip
    tuner = tune.Tuner(fn, param_space={"point": tune.grid_search(points)},
                       run_config=tune.RunConfig(name=name, storage_path=str(out / ".tune"), verbose=0,
                                                 callbacks=[_Ended(done)]))  # fmt: skip
    common.tune_fit(tuner, "fine-tuning", out, every=True)


class _Ended(tune.Callback):
    """``done()`` as each trial ends: a step of this driver's bar, left out of Tune's saved state."""

    def __init__(self, done):
        self.done = done

    def __getstate__(self) -> dict:
        return {"done": None}

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        if self.done is not None:
            self.done()


def _point_trial(config: dict, base: FinetuneConfig, out: str, threads: int, bars: bool) -> None:
    import torch

    from bertvision.finetune import finetune
    from bertvision.runtime import use_progress

    torch.set_num_threads(threads)
    if bars:
        use_progress(_ray_bar)  # the fine-tuning steps' bar, drawn by the driver
    point = dict(config["point"])
    folder = point.pop("folder")
    result = finetune(replace(base, **point), Path(out) / folder)
    for meta in sorted(result.checkpoints.values(), key=lambda m: m["fraction"]):
        tune.report({"epochs": meta["fraction"]})


def _ray_bar(total: int, desc: str, unit: str):
    from ray.experimental import tqdm_ray

    return tqdm_ray.tqdm(total=total, desc=desc, unit=unit)


def run(base: FinetuneConfig, out_dir: str, grid: BaselineGrid | None = None) -> dict:
    """`bertvision.baseline.run_baseline` with its runs as Tune trials; returns baseline.json."""
    grid = grid or BaselineGrid()
    base = absolute_inputs(base)  # trials run in folders of their own
    with common.JobRay(grid.address) as job_ray:  # a rerun with every run finished starts no Ray
        return run_baseline(base, out_dir, grid, partial(_trials, grid=grid, job_ray=job_ray))


def main(argv: list[str] | None = None) -> int:
    return common.main(argv, FinetuneConfig, BaselineGrid, run, print_baseline, __doc__, "ray_jobs.baseline",
                       skip=("epochs", "save_at", "lr", "seed", "score_dev"))  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
