"""Ray Train job: encoder fine-tuning by several workers at once (DDP), surviving a lost worker.

    bertvision finetune --task rte --epochs 3 --save-at 1 2 3 --ray --workers 2 --out runs/rte/ft
    ray job submit --working-dir . -- python -m ray_jobs.finetune --task rte --save-at 0.3 1 \\
        --workers 4 --gpus-per-worker 1 --out /mnt/runs/rte/ft

The fine-tuning is the library's (`bertvision.finetune`): the driver reads and checks every
split, reuses a finished run, then runs one `TorchTrainer` (Ray Train V2) whose workers each run
`bertvision.finetune.run_loop` with their `bertvision.distributed.World`: each takes its piece
of every global batch (``--batch-size`` stays the global batch, so steps, the schedule and a
checkpoint "after 0.3 epochs" mean what they mean in one process); rank 0 validates, saves
the ``checkpoint-e<f>`` folders and scores the eval splits once at the end. Sentence and span
tasks alike.

Fault tolerance: at every ``--save-at`` point rank 0 also reports the whole training state
(weights, optimizer, schedule, random generators, the position in the epoch) as a Ray Train
checkpoint under ``OUT/ray-train/finetune/``; with ``--max-failures N`` a dead worker is
replaced and every worker continues from the last such point, ending as the uninterrupted run
would. Add save points (``--save-at 0.25 0.5 0.75 1``) for finer recovery. A driver that died
starts the run over. One worker computes what the single-process loop computes.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from bertvision.config import FinetuneConfig, TrainJobConfig
from bertvision.outdir import absolute_inputs
from bertvision.printing import print_finetune_result
from ray_jobs import common


def _worker(config: dict) -> None:
    import ray.train
    import torch

    from bertvision.distributed import World
    from bertvision.finetune import run_loop

    torch.set_num_threads(config["threads"])
    world = World.current()
    cfg: FinetuneConfig = config["cfg"]
    if config["gpus"] and cfg.device is None:
        cfg = replace(cfg, device="cuda")  # the GPU Ray gave this worker
    resume, where = common.resumed(ray.train)
    if resume is not None:
        print(f"finetune, rank {world.rank}: resuming after step {resume['step']} from {where}", flush=True)

    def on_save(fraction: float, meta: dict | None, state) -> None:
        metrics = {"fraction": fraction, **({"validation": meta["validation"]} if meta else {})}
        common.report(ray.train, metrics, state if world.main else None)

    run_loop(cfg, Path(config["out"]), config["inputs"], world, resume, on_save, config["settings"])


def run(cfg: FinetuneConfig, out_dir: str, job: TrainJobConfig | None = None):
    """Fine-tune through Ray Train into ``out_dir``; returns the `FinetuneResult`."""
    from bertvision.finetune import finetune

    job = job or TrainJobConfig()
    out = Path(out_dir).expanduser().absolute()
    cfg = absolute_inputs(cfg)
    if not (out / "metrics.json").is_file():
        shutil.rmtree(out / "ray-train", ignore_errors=True)  # a dead driver's run starts over
    settings = {"ray_workers": job.workers}

    def runner(cfg: FinetuneConfig, out: Path, inputs: dict) -> dict:
        config = {"cfg": cfg, "out": str(out), "inputs": inputs, "settings": settings}
        metrics = common.fit(common.trainer(job, _worker, config, out / "ray-train", "finetune", keep=1), "fine-tuning",
                             out / "metrics.json")  # fmt: skip
        shutil.rmtree(out / "ray-train", ignore_errors=True)  # the training states: the checkpoints remain
        return metrics

    return common.on_ray(job.address, lambda: finetune(cfg, out, runner=runner, settings=settings),
                         dashboard=True)  # Ray Train's state queries


def main(argv: list[str] | None = None) -> int:
    return common.main(argv, FinetuneConfig, TrainJobConfig, run, print_finetune_result, __doc__, "ray_jobs.finetune")


if __name__ == "__main__":
    raise SystemExit(main())
