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

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import ray

from bertvision.config import add_arguments, from_arguments
from bertvision.errors import BertVisionError, ConfigError
from bertvision.pipeline import PipelineConfig, Runners, run_pipeline
from ray_jobs import baseline, embed, tune
from ray_jobs.local import JobRay, absolute_inputs


@dataclass(frozen=True)
class PipelineJobConfig:
    """Where and how the pipeline's Ray work runs (not what it computes)."""

    address: str | None = None
    """Ray cluster to attach to (default: $RAY_ADDRESS, else a local Ray of this job's own)."""
    embed_with: Literal["auto", "ray", "local"] = "auto"
    """Extraction: the Ray Data job (ray), this process's loop (local), or auto: Ray Data on a
    cluster of several nodes or with GPUs, the local loop on one CPU machine (where it is
    faster: docs/BENCHMARKS.md)."""


def runners(cfg: PipelineConfig, job: PipelineJobConfig, log=print) -> Runners:
    """The pipeline's Ray stages, on the Ray this process has started or attached to."""

    def finetune_grid(base, out, lrs, max_epochs, seeds):
        grid = baseline.BaselineGrid(lrs=lrs, max_epochs=max_epochs, seeds=seeds, cpus_per_trial=cfg.cpus_per_trial,
                                     gpus_per_trial=cfg.gpus_per_trial)  # fmt: skip
        return baseline.run(base, out, grid)

    def search(scfg, out, resume):
        return tune.run(scfg, out, tune.TuneJobConfig(resume=resume, verbose=0))  # the trials' bar instead

    use_ray = job.embed_with == "ray"
    if job.embed_with == "auto":
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        use_ray = len(nodes) > 1 or ray.cluster_resources().get("GPU", 0) > 0
        log(f"extraction: {'the Ray Data job' if use_ray else 'the local loop'} "
            f"({len(nodes)} node(s), {ray.cluster_resources().get('GPU', 0):g} GPU(s))")  # fmt: skip
    return Runners(finetune_grid=finetune_grid, tune=search, embed=embed.run if use_ray else None)


def run(cfg: PipelineConfig, out_dir: str, job: PipelineJobConfig = PipelineJobConfig()) -> dict:
    """The pipeline into ``out_dir`` on one Ray (started here unless attached)."""
    cfg = absolute_inputs(cfg)  # trials run in folders of their own
    # Trials checkpoint every epoch, so Tune's experiment-state snapshots come often; its warning
    # about them would repeat dozens of times in a search of short trials.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    out = str(Path(out_dir).expanduser().absolute())
    with JobRay(job.address) as job_ray:
        job_ray.need()
        return run_pipeline(cfg, out, runners(cfg, job))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ray_jobs.pipeline",
        description="The method for one task, end to end and resumable: majority class, full fine-tuning "
        "baseline, stores, HyperOpt search over heads, the best head over seeds, the ensemble, the report. "
        "Same options as 'bertvision run'.",
    )
    add_arguments(p, PipelineConfig, required=("task",))
    p.add_argument("--out", required=True, help="run folder (absolute, on shared storage for a cluster)")
    add_arguments(p, PipelineJobConfig)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg, job = from_arguments(PipelineConfig, args), from_arguments(PipelineJobConfig, args)
        if not Path(args.out).is_absolute() and (job.address or os.environ.get("RAY_ADDRESS")):
            raise ConfigError(f"--out {args.out} is relative: a Ray job runs in a temporary copy of the working "
                              "directory; give an absolute path on shared storage")  # fmt: skip
        summary = run(cfg, args.out, job)
    except BertVisionError as e:
        print(f"ray_jobs.pipeline: error: {e}", file=sys.stderr)
        return e.exit_code
    from bertvision.report import headline

    print(headline(Path(summary["report"]).parent))
    print(f"report: {summary['report']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
