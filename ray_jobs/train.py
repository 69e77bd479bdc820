"""Ray Train job: AdapterPooler heads trained by several workers at once, with a checkpoint every
epoch that outlives a lost worker.

    bertvision train --store runs/squad/store --ray --workers 2 --out runs/squad/heads   # in-process Ray
    ray job submit --working-dir . -- python -m ray_jobs.train --store /mnt/runs/squad/store \\
        --workers 4 --gpus-per-worker 1 --out /mnt/runs/squad/heads

The head training is the library's: `bertvision.train.train_heads` checks the output folder,
reuses a finished run and writes config.json and summary.json; for each seed it calls `_seed`
here, which runs one `TorchTrainer` (Ray Train V2). Every worker runs
`bertvision.train.fit_head` with its `bertvision.distributed.World` (DDP over gloo on CPU,
NCCL on GPU): each takes its piece of every global batch (the global ``--batch-size`` is the
single process's), and on a token store it reads only its own shards, one at a time, so memory
stays bounded by a shard. Rank 0 scores validation and shares the scores, so the epoch selected
is the one a single process selects; rank 0 then scores the eval splits once and writes
``seed-<k>`` exactly as the library does (weights, head_config.json, metrics.json, tb/), adding
"workers", "resumed_from_epochs" and "dropped_batches" to metrics.json.

Checkpoints: after every epoch rank 0 reports the whole training state (weights, optimizer,
schedule, random generators, history, best epoch so far; `torch.save`, read back with
``weights_only=True``) under ``OUT/ray-train/seed-<k>/``. With ``--max-failures N`` a worker that
dies (a killed process, a lost node) is replaced up to N times and every worker continues from
the last checkpoint; the run ends as the uninterrupted run would. Running the same command again
after the driver itself died resumes each seed from its last checkpoint there.

One worker computes what the library loop computes (no DDP wrapper for one rank; the same
batches in the same order). Several workers see the same global batches split up, so they land
within the seed-to-seed spread of one worker, not on it (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from bertvision.config import HeadTrainConfig, add_arguments, from_arguments
from bertvision.errors import BertVisionError, ConfigError, RunError
from ray_jobs.local import absolute_inputs, on_ray

STATE = "state.pt"


@dataclass(frozen=True)
class TrainJobConfig:
    """How a Ray Train job runs (not what it trains): head training here, fine-tuning in
    `ray_jobs.finetune`."""

    address: str | None = None
    """Ray cluster to attach to (default: $RAY_ADDRESS, else a local Ray of this job's own)."""
    workers: int = 1
    """Ray Train workers training one model together (DDP)."""
    cpus_per_worker: float = 1.0
    """CPUs each worker asks Ray for (and its torch threads, at least 1)."""
    gpus_per_worker: float = 0.0
    """GPUs each worker asks Ray for (NCCL when positive, gloo otherwise)."""
    max_failures: int = 2
    """Times a run whose worker died is restarted from its last Ray Train checkpoint before it
    fails."""

    def __post_init__(self):
        if self.workers < 1:
            raise ConfigError(f"--workers must be positive, not {self.workers}")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            raise ConfigError("--cpus-per-worker must be positive and --gpus-per-worker not negative")
        if self.max_failures < 0:
            raise ConfigError(f"--max-failures must not be negative, not {self.max_failures}")


def _worker(config: dict) -> None:
    """One Ray Train worker: `fit_head` with this worker's `World`, resumed from the run's last
    checkpoint if any; rank 0 checkpoints every epoch and, at the end, writes ``seed-<k>``."""
    import numpy as np
    import ray.train
    import torch
    from torch.utils.tensorboard import SummaryWriter

    from bertvision.distributed import World
    from bertvision.kinds import store_kind
    from bertvision.runtime import peak_rss_mb
    from bertvision.train import finish_seed, fit_head, in_seed_folder, log_epoch

    cfg: HeadTrainConfig = config["cfg"]
    out, seed = Path(config["out"]), cfg.seeds[0]
    torch.set_num_threads(config["threads"])
    world = World.current()
    if config["gpus"] and cfg.device is None:
        cfg = replace(cfg, device="cuda")  # the GPU Ray gave this worker
    root = Path(cfg.store)
    kind, _, spec = store_kind(root)
    cfg = cfg.resolved(kind.family)
    data = kind.load(cfg, root, spec, config["evals"] if world.main else [])  # others: train + validation

    resume, resumed = None, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            saved = torch.load(Path(d) / STATE, weights_only=True)
        resume, resumed = saved["fit"], [*saved["resumed"], len(saved["fit"]["history"])]
        print(f"head seed {seed}, rank {world.rank}: resuming after epoch {resumed[-1]} from {checkpoint.path}", flush=True)
    elif world.main:
        print(f"head seed {seed}: {world.size} worker(s), no checkpoint to resume from", flush=True)
    dropped = [int(resume.get("dropped", 0)) if resume else 0]
    tb_dir = out / f".seed-{seed}.tb"
    tb = SummaryWriter(str(tb_dir)) if world.main else None

    def report(r: dict) -> None:
        dropped[0] += r["dropped"]
        if tb is not None:
            log_epoch(tb, kind, r)
            tb.flush()
        metrics = {"epoch": r["epoch"], "score": r["score"], "best_epoch": r["best_epoch"],
                   "loss": float(np.mean(r["losses"])) if r["losses"] else float("nan"),
                   "seconds": r["seconds"], "dropped": r["dropped"]}  # fmt: skip
        if not world.main:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save({"fit": {**r["state"](), "dropped": dropped[0]}, "resumed": resumed}, Path(d) / STATE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

    fit = fit_head(cfg, data, kind, on_epoch=report, resume=resume, world=world)
    peaks = world.gather(peak_rss_mb())  # every worker's peak resident memory
    if not world.main:
        return
    extra = {"workers": world.size, "resumed_from_epochs": resumed, "dropped_batches": dropped[0],
             "train_rows": data.train_rows, "peak_rss_mb_per_worker": peaks}  # fmt: skip

    def write(folder: Path) -> dict:
        result = finish_seed(cfg, data, kind, fit, folder, tb, extra)
        shutil.move(str(tb_dir), str(folder / "tb"))
        return result

    in_seed_folder(out, seed, write)


def trainer(job: TrainJobConfig, loop, config: dict, storage: Path, name: str, keep: int):
    """The `TorchTrainer` (Ray Train V2) of ``job``'s workers running ``loop(config)``: gloo or
    NCCL, the CPUs / GPUs per worker, `FailureConfig(job.max_failures)`, ``keep`` checkpoints
    under ``storage/name``. Shared by the head and the fine-tuning jobs."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    gpu = job.gpus_per_worker > 0
    return TorchTrainer(
        loop,
        train_loop_config={**config, "threads": max(1, int(job.cpus_per_worker)), "gpus": gpu},
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=job.workers, use_gpu=gpu,
                                     resources_per_worker={"CPU": job.cpus_per_worker,
                                                           **({"GPU": job.gpus_per_worker} if gpu else {})}),
        run_config=RunConfig(name=name, storage_path=str(storage),
                             failure_config=FailureConfig(max_failures=job.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=keep)),
    )  # fmt: skip


def fit(run, what: str, written: Path) -> dict:
    """``run.fit()``, the library's own error unwrapped from Ray's; then ``written`` (the
    metrics file the run must leave), read."""
    import json

    try:
        run.fit()
    except Exception as e:  # Ray's TrainingFailedError wraps the worker's own error
        cause = _bertvision_cause(e)
        if cause is not None:
            raise cause from None
        raise RunError(f"Ray Train run of {what} failed: {e}") from e
    if not written.is_file():
        raise RunError(f"Ray Train run of {what} ended without writing {written}")
    return json.loads(written.read_text())


def check_out(out: str, job: TrainJobConfig) -> None:
    """A submitted job must write to an absolute path (on shared storage)."""
    if not Path(out).is_absolute() and (job.address or os.environ.get("RAY_ADDRESS")):
        raise ConfigError(f"--out {out} is relative: a Ray job runs in a temporary copy of the working "
                          "directory; give an absolute path on shared storage")  # fmt: skip


def _seed(job: TrainJobConfig):
    """`train_heads`' runner: one TorchTrainer for one seed; returns seed-<k>/metrics.json."""

    def run_seed(cfg: HeadTrainConfig, out: Path, eval_names: list[str]) -> dict:
        seed = cfg.seeds[0]
        run = trainer(job, _worker, {"cfg": cfg, "out": str(out), "evals": eval_names}, out / "ray-train",
                      f"seed-{seed}", keep=2)  # fmt: skip
        return fit(run, f"head seed {seed}", out / f"seed-{seed}" / "metrics.json")

    return run_seed


def _bertvision_cause(error: BaseException) -> BertVisionError | None:
    """The library's own error (bad input, a diverged loss) inside Ray's wrapping, if any."""
    seen = set()
    stack = [error]
    while stack:
        e = stack.pop()
        if id(e) in seen or e is None:
            continue
        seen.add(id(e))
        if isinstance(e, BertVisionError):
            return e
        stack += [e.__cause__, e.__context__, *getattr(e, "worker_failures", {}).values(),
                  *([e.error] if isinstance(getattr(e, "error", None), BaseException) else [])]  # fmt: skip
    return None


def run(cfg: HeadTrainConfig, out_dir: str, job: TrainJobConfig = TrainJobConfig()) -> dict:
    """Train ``cfg.seeds`` heads into ``out_dir`` through Ray Train; returns the summary (as
    `bertvision.train.train_heads`)."""
    from bertvision.train import train_heads

    out = Path(out_dir).expanduser().absolute()
    cfg = absolute_inputs(cfg)  # workers run in folders of their own
    if not (out / "config.json").is_file():
        shutil.rmtree(out / "ray-train", ignore_errors=True)  # no run here to resume
    return on_ray(job.address, lambda: train_heads(cfg, out, runner=_seed(job), settings={"ray_workers": job.workers}),
                  dashboard=True)  # Ray Train's state queries


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ray_jobs.train",
        description="Train AdapterPooler heads on a store with Ray Train: --workers workers per head "
        "(DDP; each reads its own part of a token store), a checkpoint every epoch, a dead worker "
        "replaced and training continued from the last checkpoint. Same options and output as "
        "'bertvision train'.",
    )
    add_arguments(p, HeadTrainConfig, required=("store",))
    p.add_argument("--out", required=True, help="output folder (absolute, on shared storage for a cluster)")
    add_arguments(p, TrainJobConfig)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg, job = from_arguments(HeadTrainConfig, args), from_arguments(TrainJobConfig, args)
        check_out(args.out, job)
        summary = run(cfg, args.out, job)
    except BertVisionError as e:
        print(f"ray_jobs.train: error: {e}", file=sys.stderr)
        return e.exit_code
    from bertvision.cli import print_train_summary

    print_train_summary(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
