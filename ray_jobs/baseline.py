"""The full fine-tuning baseline, tuned as fairly as the heads: Ray Tune trials of `finetune`.

    python -m ray_jobs.baseline --task rte --lrs 2e-5 5e-5 1e-4 --max-epochs 3 --seeds 0 1 2 3 4 \\
        --out /mnt/bertvision/runs/rte/baseline

A grid of learning rates runs as Tune trials (one `bertvision.finetune.finetune` each, with a
checkpoint after every whole epoch); the learning rate and the number of epochs are chosen on
the validation part carved from train (the checkpoints' validation scores, the task's
selection metric), never on dev. Then ``--seeds`` runs at that setting, again as trials, each
scored once on dev at its chosen epoch (and at each whole epoch before it, a row of its own).
With one learning rate no grid runs: the seeds run ``--max-epochs`` with a checkpoint after
each epoch, and the epoch with the best mean validation score over the seeds is chosen.
Without $RAY_ADDRESS it runs on a local Ray of its own. Output::

    grid/lr-<lr>/       fine-tuning runs of the grid (validation only; none with one rate)
    seed-<k>/           the seeds' runs at the chosen setting (with dev scores; checkpoint-e1 is
                        the 1-epoch fine-tuning a store can be extracted from)
    baseline.json       the grid's validation scores, the choice, and dev mean / std over seeds
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from ray import tune

from bertvision.config import FinetuneConfig, add_arguments, from_arguments
from bertvision.errors import BertVisionError, ConfigError, RunError
from bertvision.finetune import finetune
from bertvision.io import atomic_write_json
from bertvision.kinds import KINDS
from bertvision.tasks import get_task
from ray_jobs.local import JobRay, absolute_inputs


@dataclass(frozen=True)
class BaselineGrid:
    """The grid of the fine-tuning baseline and its seeds."""

    lrs: tuple[float, ...] = (2e-5, 5e-5, 1e-4)
    """Learning rates tried (one trial each), chosen on validation."""
    max_epochs: int = 3
    """Longest run of the grid; 1 .. max_epochs whole epochs are compared on validation."""
    grid_train_examples: int | None = None
    """The grid fine-tunes on a fixed seeded subset of this many training examples (a large
    train split's shortcut; the seeds then train on --train-examples, default all)."""
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    """Seeds run at the chosen setting; dev mean and standard deviation over them."""
    cpus_per_trial: float = 1.0
    """CPUs each fine-tuning trial asks Ray for (and its torch threads)."""
    gpus_per_trial: float = 0.0
    """GPUs each fine-tuning trial asks Ray for."""
    address: str | None = None
    """Ray cluster to attach to (default: $RAY_ADDRESS, else a local Ray of this job's own)."""

    def __post_init__(self):
        if not self.lrs or not self.seeds:
            raise ConfigError("--lrs and --seeds: give at least one each")
        if self.max_epochs < 1:
            raise ConfigError("--max-epochs must be positive")
        if self.grid_train_examples is not None and self.grid_train_examples < 1:
            raise ConfigError("--grid-train-examples must be positive")


def _trials(points: list[dict], base: FinetuneConfig, kind: str, out: Path, grid: BaselineGrid, name: str,
            job_ray: JobRay) -> None:  # fmt: skip
    """One Tune trial per point (a grid search over the points): `finetune` of ``base`` with the
    point's fields, into ``out/<point's folder>``. A point whose run finished with the same
    config (an interrupted baseline run again) is kept, not rerun; Ray is started only for a
    point left to run."""
    points = [pt for pt in points
              if not _finished(out / pt["folder"], replace(base, **{k: v for k, v in pt.items() if k != "folder"}).resolved(kind))]  # fmt: skip
    if not points:
        return
    job_ray.need()
    fn = tune.with_resources(
        tune.with_parameters(_point_trial, base=base, kind=kind, out=str(out), threads=max(1, int(grid.cpus_per_trial))),
        {"cpu": grid.cpus_per_trial, "gpu": grid.gpus_per_trial},
    )  # fmt: skip
    results = tune.Tuner(fn, param_space={"point": tune.grid_search(points)},
                         run_config=tune.RunConfig(name=name, storage_path=str(out / ".tune"), verbose=0)).fit()  # fmt: skip
    errors = [r.error for r in results if r.error]
    if errors:
        raise RunError(f"{len(errors)} fine-tuning trial(s) failed: {errors[0]}")


def _point_trial(config: dict, base: FinetuneConfig, kind: str, out: str, threads: int) -> None:
    import torch

    from bertvision.runtime import use_progress

    torch.set_num_threads(threads)
    use_progress(_ray_bar)  # the fine-tuning steps' bar, drawn by the driver
    point = dict(config["point"])
    folder = point.pop("folder")
    result = finetune(replace(base, **point), Path(out) / folder)
    select = KINDS[kind].selection
    for meta in sorted(result.checkpoints.values(), key=lambda m: m["fraction"]):
        tune.report({"epochs": meta["fraction"], "score": select(meta["validation"])})


def _ray_bar(total: int, desc: str):
    from ray.experimental import tqdm_ray

    return tqdm_ray.tqdm(total=total, desc=desc)


def run(base: FinetuneConfig, out_dir: str, grid: BaselineGrid = BaselineGrid()) -> dict:
    """Choose the learning rate and epochs on validation from the grid, then run the seeds;
    returns (and writes) baseline.json."""
    out = Path(out_dir).expanduser().absolute()
    base = absolute_inputs(base)  # trials run in folders of their own
    kind = get_task(base.task, base.data_dir).spec.kind  # read once, here
    with JobRay(grid.address) as job_ray:  # a rerun with every run finished starts no Ray
        fractions = tuple(float(e) for e in range(1, grid.max_epochs))
        search = replace(base, epochs=float(grid.max_epochs), save_at=fractions, score_dev=False,
                         train_examples=grid.grid_train_examples or base.train_examples)
        t0 = time.perf_counter()
        table = []
        select = KINDS[kind].selection  # the heads' metric
        if one_rate(grid):  # nothing for a grid to choose but epochs: the seeds' own validation scores do
            every = tuple(float(e) for e in range(1, grid.max_epochs))
            seeds = replace(base, lr=grid.lrs[0], epochs=float(grid.max_epochs), score_dev=True, save_at=every)
            _trials([{"seed": s, "folder": f"seed-{s}"} for s in grid.seeds], seeds, kind, out, grid, "seeds", job_ray)
            per_seed = [_read_metrics(out / f"seed-{s}") for s in grid.seeds]
            for name, meta in per_seed[0].items():
                scores = [select(ms[name]["validation"]) for ms in per_seed]
                table.append({"lr": grid.lrs[0], "epochs": meta["fraction"], "score": float(np.mean(scores)),
                              "seed_scores": scores})  # fmt: skip
            best = max(table, key=lambda r: r["score"])
            if grid.max_epochs == 1:
                best = {**best, "score": None}  # one rate, one epoch: nothing was chosen
        else:
            _trials([{"lr": lr, "folder": f"grid/lr-{lr:g}"} for lr in grid.lrs], search, kind, out, grid, "grid",
                    job_ray)  # fmt: skip
            for lr in grid.lrs:
                metrics = _read_metrics(out / f"grid/lr-{lr:g}")
                for meta in metrics.values():
                    table.append({"lr": lr, "epochs": meta["fraction"], "validation": meta["validation"],
                                  "score": select(meta["validation"])})  # fmt: skip
            best = max(table, key=lambda r: r["score"])
        grid_seconds = time.perf_counter() - t0
        # every whole epoch before the chosen one is kept too: its 1-epoch checkpoint is the brief
        # fine-tuning that stores are extracted from, and it is scored on dev as a row of its own
        t0 = time.perf_counter()
        if not one_rate(grid):
            chosen = replace(base, lr=best["lr"], epochs=best["epochs"], score_dev=True,
                             save_at=tuple(float(e) for e in range(1, int(best["epochs"]))))
            _trials([{"seed": s, "folder": f"seed-{s}"} for s in grid.seeds], chosen, kind, out, grid, "seeds", job_ray)
        seeds_seconds = time.perf_counter() - t0
    metrics = {s: _read_metrics(out / f"seed-{s}") for s in grid.seeds}
    runs = {s: next(m for m in ms.values() if m["fraction"] == best["epochs"]) for s, ms in metrics.items()}
    dev = [k for k in next(iter(runs.values())) if k.startswith(("dev", "test")) and not k.endswith("_seconds")]
    by_epoch = {f"{m['fraction']:g}": {split: _mean_std([ms[name] for ms in metrics.values()], split)
                                       for split in ("validation", *dev)}
                for name, m in metrics[grid.seeds[0]].items()}  # fmt: skip
    summary = {
        "grid": table, "chosen": {"lr": best["lr"], "epochs": best["epochs"], "validation_score": best["score"]},
        "grid_train_examples": grid.grid_train_examples or base.train_examples, "train_examples": base.train_examples,
        "seeds": list(grid.seeds), "runs": {str(s): {k: m[k] for k in ("validation", *dev)} for s, m in runs.items()},
        **{split: _mean_std(list(runs.values()), split) for split in dev},
        "by_epoch": by_epoch,
        "train_seconds": float(sum(m["train_seconds"] for m in runs.values())),
        "wall_seconds": {"grid": round(grid_seconds, 1), "seeds": round(seeds_seconds, 1)},
    }  # fmt: skip
    atomic_write_json(out / "baseline.json", summary)
    return summary


def one_rate(grid: BaselineGrid) -> bool:
    """One learning rate (and no grid subset): no grid runs; the seeds run --max-epochs with a
    checkpoint after every epoch, and the epoch with the best mean validation score over the
    seeds is chosen (the grid would choose it from one seed's run)."""
    return len(grid.lrs) == 1 and grid.grid_train_examples is None


def _finished(folder: Path, cfg: FinetuneConfig) -> bool:
    """Whether ``folder`` holds a finished fine-tuning run of ``cfg``."""
    import json
    from dataclasses import asdict

    if not (folder / "metrics.json").is_file():
        return False
    return json.loads((folder / "config.json").read_text()).get("finetune") == json.loads(json.dumps(asdict(cfg)))


def _mean_std(runs: list[dict], split: str) -> dict:
    """{metric: {"mean", "std"}} of one split over runs (sample standard deviation)."""
    return {name: {"mean": float(np.mean([m[split][name] for m in runs])),
                   "std": float(np.std([m[split][name] for m in runs], ddof=1)) if len(runs) > 1 else 0.0}
            for name in runs[0][split]}  # fmt: skip


def _read_metrics(folder: Path) -> dict:
    import json

    return json.loads((folder / "metrics.json").read_text())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.baseline", description=__doc__.split("\n\n")[2])
    add_arguments(p, FinetuneConfig, required=("task",), skip=("epochs", "save_at", "lr", "seed", "score_dev"))
    p.add_argument("--out", required=True, help="baseline folder")
    add_arguments(p, BaselineGrid)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = run(from_arguments(FinetuneConfig, args), args.out, from_arguments(BaselineGrid, args))
    except BertVisionError as e:
        print(f"ray_jobs.baseline: error: {e}", file=sys.stderr)
        return e.exit_code
    c = summary["chosen"]
    if c["validation_score"] is None:
        print(f"one setting, nothing chosen: lr {c['lr']:g}, {c['epochs']:g} epoch(s)")
    else:
        print(f"chosen on validation: lr {c['lr']:g}, {c['epochs']:g} epoch(s) (score {c['validation_score']:.4f})")
    for split in [k for k in summary if k.startswith(("dev", "test"))]:
        for name, v in summary[split].items():
            print(f"{split:>14} {name}: {v['mean']:.4f} ± {v['std']:.4f} over {len(summary['seeds'])} seed(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
