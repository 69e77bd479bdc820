"""Ray job: the whole method for one task, resumable stage by stage (`bertvision.pipeline`).

    ray job submit --working-dir . -- python -m ray_jobs.pipeline --task mrpc \\
        --out /mnt/bertvision/runs/mrpc
    bertvision run --task mrpc --out runs/mrpc          # the same job on an in-process Ray

One Ray for the whole run (the cluster's, or a local one started by the first stage that needs it,
so a rerun with every stage finished starts none): the fine-tuning
baseline's runs as Tune trials (`ray_jobs.baseline`), the search as a Tune experiment with
HyperOpt (`ray_jobs.tune`), extraction as the Ray Data job (`ray_jobs.embed`) where it pays,
heads and the ensemble in this process. A rerun finds finished stages and skips them; see
`bertvision.pipeline` for what a changed setting redoes. The console holds each stage's lines and
bar; Ray's own output (Tune's tables, the workers' logs, Ray's start and teardown) goes to
RUN/logs/<stage>.log, and on the console too with --verbose.
"""

from __future__ import annotations

import os
from pathlib import Path

import ray

from bertvision.config import PipelineConfig, PipelineJobConfig
from bertvision.outdir import absolute_inputs
from bertvision.pipeline import LOGS_DIR, Runners, run_pipeline
from bertvision.printing import print_run
from bertvision.runtime import RunOutput
from ray_jobs import baseline, common, embed, tune


def _ray_data(job: PipelineJobConfig, job_ray: common.JobRay, log=print) -> bool:
    """Whether extraction runs as the Ray Data job: asked for, or (auto) on a cluster of several
    nodes or with GPUs; the local loop is faster on one CPU machine (docs/BENCHMARKS.md). A local
    Ray would be this machine alone: its GPUs are torch's, and no Ray starts to count them."""
    if job.embed_with != "auto":
        return job.embed_with == "ray"
    if job.address or os.environ.get("RAY_ADDRESS"):
        job_ray.need()
        nodes, gpus = len([n for n in ray.nodes() if n.get("Alive")]), ray.cluster_resources().get("GPU", 0)
    else:
        import torch

        nodes, gpus = 1, torch.cuda.device_count()
    use = nodes > 1 or gpus > 0
    log(f"extraction: {'the Ray Data job' if use else 'the local loop'} ({nodes} node(s), {gpus:g} GPU(s))")
    return use


@common.holding("pipeline run")
def run(cfg: PipelineConfig, out_dir: str, job: PipelineJobConfig | None = None) -> dict:
    """The pipeline into ``out_dir`` on one Ray (started here unless attached)."""
    job = job or PipelineJobConfig()
    cfg = absolute_inputs(cfg)  # trials run in folders of their own
    out = Path(out_dir).expanduser().absolute()
    # Trials checkpoint every epoch, so Tune's experiment-state snapshots come often; its warning
    # about them would repeat dozens of times in a search of short trials.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # The output first in, last out: Ray's teardown (its workers' last words) goes to the log too
    with RunOutput(out / LOGS_DIR, show=job.verbose) as output, common.JobRay(job.address, record=out) as job_ray:

        def on_ray(fn):
            def run_on_ray(*args):
                job_ray.need()
                return fn(*args)

            return run_on_ray

        extract = on_ray(embed.run) if _ray_data(job, job_ray, output.say) else None  # None: this process's loop
        runners = Runners(finetune_grid=on_ray(baseline.run), tune=on_ray(tune.run), embed=extract)
        return run_pipeline(cfg, str(out), runners, output=output)


def main(argv: list[str] | None = None) -> int:
    return common.main(argv, PipelineConfig, PipelineJobConfig, run, print_run, __doc__, "ray_jobs.pipeline")


if __name__ == "__main__":
    raise SystemExit(main())
