"""Ray job: the whole method for one task, resumable stage by stage (`bertvision.pipeline`).

    ray job submit --working-dir . -- python -m ray_jobs.pipeline --task mrpc \\
        --out /mnt/bertvision/runs/mrpc
    bertvision run --task mrpc --out runs/mrpc          # the same job on an in-process Ray

One Ray for the whole run (the cluster's, or a local one started once): the fine-tuning
baseline's runs as Tune trials (`ray_jobs.baseline`), the search as a Tune experiment with
HyperOpt (`ray_jobs.tune`), extraction as the Ray Data job (`ray_jobs.embed`) where it pays,
heads and the ensemble in this process. A rerun finds finished stages and skips them; see
`bertvision.pipeline` for what a changed setting redoes.
"""

from __future__ import annotations

import os
from pathlib import Path

import ray

from bertvision.config import PipelineConfig, PipelineJobConfig
from bertvision.outdir import absolute_inputs
from bertvision.pipeline import Runners, run_pipeline
from bertvision.printing import print_run
from ray_jobs import baseline, common, embed, tune


def _ray_data(job: PipelineJobConfig, log=print) -> bool:
    """Whether extraction runs as the Ray Data job: asked for, or (auto) on a cluster of several
    nodes or with GPUs; the local loop is faster on one CPU machine (docs/BENCHMARKS.md)."""
    if job.embed_with != "auto":
        return job.embed_with == "ray"
    nodes, gpus = [n for n in ray.nodes() if n.get("Alive")], ray.cluster_resources().get("GPU", 0)
    use = len(nodes) > 1 or gpus > 0
    log(f"extraction: {'the Ray Data job' if use else 'the local loop'} ({len(nodes)} node(s), {gpus:g} GPU(s))")
    return use


def run(cfg: PipelineConfig, out_dir: str, job: PipelineJobConfig | None = None) -> dict:
    """The pipeline into ``out_dir`` on one Ray (started here unless attached)."""
    job = job or PipelineJobConfig()
    cfg = absolute_inputs(cfg)  # trials run in folders of their own
    # Trials checkpoint every epoch, so Tune's experiment-state snapshots come often; its warning
    # about them would repeat dozens of times in a search of short trials.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    with common.JobRay(job.address) as job_ray:
        job_ray.need()
        runners = Runners(finetune_grid=baseline.run, tune=tune.run, embed=embed.run if _ray_data(job) else None)
        return run_pipeline(cfg, str(Path(out_dir).expanduser().absolute()), runners)


def main(argv: list[str] | None = None) -> int:
    return common.main(argv, PipelineConfig, PipelineJobConfig, run, print_run, __doc__, "ray_jobs.pipeline")


if __name__ == "__main__":
    raise SystemExit(main())
