"""The full fine-tuning baseline, tuned as fairly as the heads: a grid of learning rates (a
checkpoint every whole epoch) chooses the rate and the epochs on the validation part, never on dev;
then ``--seeds`` runs at that setting, each scored once on dev (and at each whole epoch before the
chosen one). The caller runs the fine-tuning (`ray_jobs/baseline.py`: Tune trials). Output:
grid/lr-<lr>/, seed-<k>/ (checkpoint-e1: what the stores embed), baseline.json."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from bertvision.config import BaselineGrid, FinetuneConfig
from bertvision.io import atomic_write_json
from bertvision.metrics import mean_std
from bertvision.runtime import progress


def one_rate(grid: BaselineGrid) -> bool:
    """One learning rate (and no grid subset): no grid runs; the seeds' mean validation score
    picks the epoch (a grid would pick it from one seed's run)."""
    return len(grid.lrs) == 1 and grid.grid_train_examples is None


def run_baseline(base: FinetuneConfig, out_dir: str | Path, grid: BaselineGrid, run_points: Callable) -> dict:
    """Choose the rate and epochs on the grid, then run the seeds; writes and returns baseline.json.
    ``run_points(points, cfg, out, name, done)`` fine-tunes each point not yet finished (same
    config), calling ``done()`` as each ends (a step of the runs' bar)."""
    from bertvision.kinds import KINDS
    from bertvision.tasks import get_task

    out = Path(out_dir).expanduser().absolute()
    kind = get_task(base.task, base.data_dir).spec.kind  # read once, here
    select = KINDS[kind].selection  # the heads' metric
    bar = progress(len(grid.seeds) + (0 if one_rate(grid) else len(grid.lrs)), "fine-tuning", unit="run")

    def run(cfg: FinetuneConfig, name: str, points: list[dict]) -> None:
        todo = [pt for pt in points if not _finished(
            out / pt["folder"], replace(cfg, **{k: v for k, v in pt.items() if k != "folder"}).resolved(kind))]  # fmt: skip
        bar.update(len(points) - len(todo))
        if todo:
            run_points(todo, cfg, out, name, lambda: bar.update(1))

    seeds = [{"seed": s, "folder": f"seed-{s}"} for s in grid.seeds]
    t0, table = time.perf_counter(), []
    every = tuple(float(e) for e in range(1, grid.max_epochs))  # a checkpoint after each whole epoch
    if one_rate(grid):  # nothing for a grid to choose but epochs: the seeds' own validation scores do
        run(replace(base, lr=grid.lrs[0], epochs=float(grid.max_epochs), score_dev=True, save_at=every), "seeds", seeds)
        per_seed = [_metrics(out / f"seed-{s}") for s in grid.seeds]
        for name, meta in per_seed[0].items():
            scores = [select(ms[name]["validation"]) for ms in per_seed]
            table.append({"lr": grid.lrs[0], "epochs": meta["fraction"], "score": float(np.mean(scores)),
                          "seed_scores": scores})  # fmt: skip
    else:
        search = replace(base, epochs=float(grid.max_epochs), save_at=every, score_dev=False,
                         train_examples=grid.grid_train_examples or base.train_examples)  # fmt: skip
        run(search, "grid", [{"lr": lr, "folder": f"grid/lr-{lr:g}"} for lr in grid.lrs])
        for lr in grid.lrs:
            for meta in _metrics(out / f"grid/lr-{lr:g}").values():
                table.append({"lr": lr, "epochs": meta["fraction"], "validation": meta["validation"],
                              "score": select(meta["validation"])})  # fmt: skip
    best = max(table, key=lambda r: r["score"])
    if one_rate(grid) and grid.max_epochs == 1:
        best = {**best, "score": None}  # one rate, one epoch: nothing was chosen
    grid_seconds = time.perf_counter() - t0
    # every whole epoch before the chosen one is kept too: its 1-epoch checkpoint is the brief
    # fine-tuning that stores are extracted from, and it is scored on dev as a row of its own
    t0 = time.perf_counter()
    if not one_rate(grid):
        run(replace(base, lr=best["lr"], epochs=best["epochs"], score_dev=True,
                    save_at=tuple(float(e) for e in range(1, int(best["epochs"])))), "seeds", seeds)  # fmt: skip
    seeds_seconds = time.perf_counter() - t0
    bar.close()
    return _summary(out, grid, base, table, best, grid_seconds, seeds_seconds)


def _summary(out: Path, grid: BaselineGrid, base: FinetuneConfig, table: list[dict], best: dict,
             grid_seconds: float, seeds_seconds: float) -> dict:  # fmt: skip
    metrics = {s: _metrics(out / f"seed-{s}") for s in grid.seeds}
    runs = {s: next(m for m in ms.values() if m["fraction"] == best["epochs"]) for s, ms in metrics.items()}
    # the eval splits scored: every part of a checkpoint's metrics but validation (dev, test, heldout...)
    dev = [k for k, v in next(iter(runs.values())).items() if isinstance(v, dict) and k != "validation"]

    def over_seeds(metas: list[dict], split: str) -> dict:
        return {name: mean_std([m[split][name] for m in metas]) for name in metas[0][split]}

    summary = {
        "grid": table, "chosen": {"lr": best["lr"], "epochs": best["epochs"], "validation_score": best["score"]},
        "grid_train_examples": grid.grid_train_examples or base.train_examples, "train_examples": base.train_examples,
        "seeds": list(grid.seeds), "evals": dev, "runs": {str(s): {k: m[k] for k in ("validation", *dev)} for s, m in runs.items()},
        **{split: over_seeds(list(runs.values()), split) for split in dev},
        "by_epoch": {f"{m['fraction']:g}": {split: over_seeds([ms[name] for ms in metrics.values()], split)
                                            for split in ("validation", *dev)}
                     for name, m in metrics[grid.seeds[0]].items()},
        "train_seconds": float(sum(m["train_seconds"] for m in runs.values())),
        "wall_seconds": {"grid": round(grid_seconds, 1), "seeds": round(seeds_seconds, 1)},
    }  # fmt: skip
    atomic_write_json(out / "baseline.json", summary)
    return summary


def _finished(folder: Path, cfg: FinetuneConfig) -> bool:
    """Whether ``folder`` holds a finished fine-tuning run of ``cfg``."""
    if not (folder / "metrics.json").is_file():
        return False
    return json.loads((folder / "config.json").read_text()).get("finetune") == json.loads(json.dumps(asdict(cfg)))


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())
