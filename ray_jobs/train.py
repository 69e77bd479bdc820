"""Ray Train job: AdapterPooler heads trained by several workers at once, with a checkpoint every
epoch that outlives a lost worker.

    bertvision train --store runs/squad/store --ray --workers 2 --out runs/squad/heads   # in-process Ray
    ray job submit --working-dir . -- python -m ray_jobs.train --store /mnt/runs/squad/store \\
        --workers 4 --gpus-per-worker 1 --out /mnt/runs/squad/heads

The head training is the library's: `bertvision.train.train_heads` checks the output folder,
reuses a finished run and writes config.json and summary.json; each seed is one `TorchTrainer`
(Ray Train V2) whose workers run `bertvision.train.train_seed` with their `World` (DDP over gloo
on CPU, NCCL on GPU): each takes its piece of every global batch (on a token store, its own
shards, one at a time), rank 0 scores validation and shares the scores, then writes ``seed-<k>``
as the library does, adding "workers", "resumed_from_epochs" and "dropped_batches".

Checkpoints: after every epoch rank 0 reports the whole training state under
``OUT/ray-train/seed-<k>/``; with ``--max-failures N`` a worker that dies is replaced up to N
times and every worker continues from the last checkpoint, ending as the uninterrupted run
would. Running the same command again after the driver died resumes each seed from there. One
worker computes what the library loop computes; several land within the seed-to-seed spread of
one worker, not on it (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from bertvision.config import HeadTrainConfig, TrainJobConfig
from bertvision.outdir import absolute_inputs
from bertvision.printing import print_train_summary
from ray_jobs import common


def _worker(config: dict) -> None:
    """One Ray Train worker: `train_seed` with this worker's `World`, resumed from the run's last
    checkpoint if any; rank 0 checkpoints every epoch."""
    import numpy as np
    import ray.train
    import torch

    from bertvision.distributed import World
    from bertvision.kinds import store_kind
    from bertvision.runtime import peak_rss_mb
    from bertvision.train import train_seed

    cfg: HeadTrainConfig = config["cfg"]
    torch.set_num_threads(config["threads"])
    world = World.current()
    if config["gpus"] and cfg.device is None:
        cfg = replace(cfg, device="cuda")  # the GPU Ray gave this worker
    kind, _, spec = store_kind(cfg.store)
    cfg = cfg.resolved(kind.family)
    data = kind.load(cfg, Path(cfg.store), spec, config["evals"] if world.main else [])  # others: train + validation
    saved, where = common.resumed(ray.train)
    resume, resumed = (saved["fit"], [*saved["resumed"], len(saved["fit"]["history"])]) if saved else (None, [])
    if saved:
        print(f"head seed {cfg.seeds[0]}, rank {world.rank}: resuming after epoch {resumed[-1]} from {where}", flush=True)
    elif world.main:
        print(f"head seed {cfg.seeds[0]}: {world.size} worker(s), no checkpoint to resume from", flush=True)
    dropped = [int(resume.get("dropped", 0)) if resume else 0]

    def report(r: dict) -> None:
        dropped[0] += r["dropped"]
        metrics = {"epoch": r["epoch"], "score": r["score"], "best_epoch": r["best_epoch"],
                   "loss": float(np.mean(r["losses"])) if r["losses"] else float("nan"),
                   "seconds": r["seconds"], "dropped": r["dropped"]}  # fmt: skip
        state = (lambda: {"fit": {**r["state"](), "dropped": dropped[0]}, "resumed": resumed}) if world.main else None
        common.report(ray.train, metrics, state)

    def extra(fit) -> dict:
        return {"workers": world.size, "resumed_from_epochs": resumed, "dropped_batches": dropped[0],
                "train_rows": data.train_rows, "peak_rss_mb_per_worker": world.gather(peak_rss_mb())}  # fmt: skip

    train_seed(cfg, data, kind, Path(config["out"]), world, resume, report, extra)


def _seed(job: TrainJobConfig):
    """`train_heads`' runner: one TorchTrainer for one seed; returns seed-<k>/metrics.json."""

    def run_seed(cfg: HeadTrainConfig, out: Path, eval_names: list[str]) -> dict:
        seed = cfg.seeds[0]
        run = common.trainer(job, _worker, {"cfg": cfg, "out": str(out), "evals": eval_names}, out / "ray-train",
                             f"seed-{seed}", keep=2)  # fmt: skip
        return common.fit(run, f"head seed {seed}", out / f"seed-{seed}" / "metrics.json")

    return run_seed


def run(cfg: HeadTrainConfig, out_dir: str, job: TrainJobConfig | None = None) -> dict:
    """Train ``cfg.seeds`` heads into ``out_dir`` through Ray Train; returns the summary (as
    `bertvision.train.train_heads`)."""
    job = job or TrainJobConfig()
    from bertvision.train import train_heads

    out = Path(out_dir).expanduser().absolute()
    cfg = absolute_inputs(cfg)  # workers run in folders of their own
    if not (out / "config.json").is_file():
        shutil.rmtree(out / "ray-train", ignore_errors=True)  # no run here to resume
    return common.on_ray(job.address, lambda: train_heads(cfg, out, runner=_seed(job), settings={"ray_workers": job.workers}),
                         dashboard=True)  # Ray Train's state queries


def main(argv: list[str] | None = None) -> int:
    return common.main(argv, HeadTrainConfig, TrainJobConfig, run, print_train_summary, __doc__, "ray_jobs.train")


if __name__ == "__main__":
    raise SystemExit(main())
