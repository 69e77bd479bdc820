"""A whole run's settings (`PipelineConfig`, the baseline's `BaselineGrid`) and the Ray jobs' own
(how a job runs, not what it computes), here so that their flags are derived like every other's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bertvision.config.fields import check_choices, positive
from bertvision.config.stages import FinetuneConfig
from bertvision.errors import ConfigError


@dataclass(frozen=True)
class PipelineConfig:
    """One run of the method: fine-tuning baseline, stores, search, heads, ensemble, report."""

    task: str
    """Task name or user task config file."""
    encoder: str | None = None
    """Hugging Face id or folder (default: the bundled all-MiniLM-L6-v2, offline)."""
    data_dir: str | None = None
    """Local data folder (default: $BERTVISION_DATA, else the Hugging Face Hub)."""
    lrs: tuple[float, ...] = (1e-4,)
    """Fine-tuning learning rates; the baseline chooses one (and its epochs) on validation."""
    max_epochs: int = 1
    """Fine-tuning runs 1 .. this many whole epochs, compared on validation; the stores always
    come from a 1-epoch checkpoint (brief fine-tuning)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds of the fine-tuning baseline and of the heads (mean and spread over them); the
    first seed's checkpoint is the one embedded."""
    train_examples: int | None = None
    """Sentence tasks: fine-tune and train heads on a fixed subset of this many examples of the
    training part (default: all)."""
    max_length: int | None = None
    """Tokens per example (span tasks: per window)."""
    selections: tuple[Literal["cls", "mean", "tokens"], ...] = ("cls",)
    """Stores made and searched over (sentence tasks; span tasks always store tokens)."""
    trials: int = 24
    """Search trials in all; the first is the default head configuration."""
    initial_points: int = 8
    """Search trials drawn at random before HyperOpt's TPE models the finished ones."""
    max_concurrent: int = 2
    """Search trials running at once."""
    head_epochs: int | None = None
    """Maximum epochs per head (search trials and the seeds' heads; default: the task family's)."""
    top_k: int = 5
    """The best trials that join the ensemble (with the fine-tuned encoder)."""
    fractions: tuple[float, ...] = ()
    """Data efficiency: also fine-tune and train the best head on these shares (0 < f < 1) of the
    training part, each with its own 1-epoch checkpoint and store (e.g. 0.1 0.25 0.5)."""
    validation_fraction: float = FinetuneConfig.validation_fraction
    """Share of train held out for every selection (fine-tuning epochs, trials, ensemble weights);
    each part needs at least 4 examples, 2 per label."""
    validation_seed: int = FinetuneConfig.validation_seed
    """Seed of that carve."""
    cpus_per_trial: float = 1.0
    """CPUs each fine-tuning run and search trial asks Ray for (and its torch threads)."""
    gpus_per_trial: float = 0.0
    """GPUs each fine-tuning run and search trial asks Ray for."""
    device: str | None = None
    """cpu, cuda, cuda:N for work in this process: heads, ensemble, extraction without Ray
    (default: cuda when available)."""

    def __post_init__(self):
        check_choices(self)
        if not self.lrs or not self.seeds or not self.selections:
            raise ConfigError("--lrs, --seeds and --selections: give at least one each")
        if len(set(self.seeds)) != len(self.seeds) or len(set(self.selections)) != len(self.selections):
            raise ConfigError("--seeds and --selections: a value is given twice")
        positive(self, ("max_epochs", "train_examples", "max_length", "trials", "initial_points",
                        "max_concurrent", "head_epochs", "top_k", "cpus_per_trial"))  # fmt: skip
        for f in self.fractions:
            if not 0 < f < 1:
                raise ConfigError(f"--fractions: each share must lie in (0, 1) (the whole is the main run), not {f}")
        if len(set(self.fractions)) != len(self.fractions):
            raise ConfigError("--fractions: a share is given twice")
        if self.gpus_per_trial < 0:
            raise ConfigError(f"--gpus-per-trial must be >= 0, not {self.gpus_per_trial}")


@dataclass(frozen=True)
class BaselineGrid:
    """The grid of the fine-tuning baseline and its seeds (`bertvision.baseline`)."""

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
        positive(self, ("max_epochs", "grid_train_examples"))


@dataclass(frozen=True)
class RayJobConfig:
    """The extraction job's own settings (`ray_jobs.embed`, 'bertvision embed --ray'): the actor
    pool, the cluster, and where a relative --out goes."""

    actors: int | None = None
    """Actor pool size (default: one per GPU, or one per 2 CPUs)."""
    gpus_per_actor: float | None = None
    """GPUs per actor (default: 1 where the cluster has GPUs; 0 forces CPU actors)."""
    address: str | None = None
    """Ray address (default: $RAY_ADDRESS, the job's cluster, else a local Ray)."""
    storage_root: str | None = None
    """Absolute folder that a relative --out is resolved against, e.g. /mnt/bertvision/runs."""

    def __post_init__(self):
        positive(self, ("actors",))
        if self.gpus_per_actor is not None and not self.gpus_per_actor >= 0:
            raise ConfigError("--gpus-per-actor must be 0 or more")


@dataclass(frozen=True)
class PredictConfig:
    """What 'bertvision predict --ray' (`ray_jobs.predict`) applies, to what."""

    run: str
    """A folder written by 'bertvision run'."""
    input: str | None = None
    """Rows to predict: a .parquet, .csv, .tsv or .jsonl file, or a folder of them (read in name order)."""
    split: str | None = None
    """Or a split of the run's task (e.g. test)."""
    model: Literal["ensemble", "head", "encoder"] | None = None
    """What to apply (default: ensemble where the run made one, else head)."""
    seed: int | None = None
    """With --model head: that seed's head alone."""
    device: str | None = None
    """cpu, cuda, cuda:N (default: cuda where the actor has a GPU)."""

    def __post_init__(self):
        check_choices(self)
        if (self.input is None) == (self.split is None):
            raise ConfigError("give one of --input FILE and --split NAME")


@dataclass(frozen=True)
class PredictJobConfig(RayJobConfig):
    """The prediction job's settings: `RayJobConfig`'s and the size of its resumable pieces."""

    piece_rows: int | None = None
    """Rows per output part (default: the run's store's shard rows), rounded up to a multiple of them
    so that rows are batched as 'bertvision predict' batches them."""

    def __post_init__(self):
        super().__post_init__()
        positive(self, ("piece_rows",))


@dataclass(frozen=True)
class TrainJobConfig:
    """How a Ray Train job (head training, fine-tuning) runs, not what it trains."""

    address: str | None = None
    """Ray cluster to attach to (default: $RAY_ADDRESS, else a local Ray of this job's own)."""
    workers: int = 1
    """Ray Train workers training one model together (DDP)."""
    cpus_per_worker: float = 1.0
    """CPUs each worker asks Ray for (and its torch threads, at least 1)."""
    gpus_per_worker: float = 0.0
    """GPUs each worker asks Ray for (NCCL when positive, gloo otherwise)."""
    max_failures: int = 2
    """Times a run whose worker died restarts from its last Ray Train checkpoint before it fails."""

    def __post_init__(self):
        if self.workers < 1:
            raise ConfigError(f"--workers must be positive, not {self.workers}")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            raise ConfigError("--cpus-per-worker must be positive and --gpus-per-worker not negative")
        if self.max_failures < 0:
            raise ConfigError(f"--max-failures must not be negative, not {self.max_failures}")


@dataclass(frozen=True)
class TuneJobConfig:
    """How the search job runs (`ray_jobs.tune`; not what it searches)."""

    address: str | None = None
    """Ray cluster to attach to (default: $RAY_ADDRESS, else a local Ray of this job's own)."""
    resume: bool = False
    """Finish the search already in --out (after the driver was killed) from its search.json:
    --trials in all, its ended trials kept; other changed settings are refused."""
    checkpoint_every: int = 1
    """A trial checkpoints its training state every this many epochs (a retried trial reruns
    at most this many less one)."""
    workers_per_trial: int = 1
    """Ray Train workers per trial: above 1 each trial is a Ray Train run of its own (DDP; the
    trial's --cpus-per-trial and --gpus-per-trial split evenly between its workers)."""
    verbose: int = 1
    """Tune's own console output: 0 none (the trials' progress bar only), 1 status tables, 2
    every result too."""

    def __post_init__(self):
        if self.verbose not in (0, 1, 2):
            raise ConfigError(f"--verbose must be 0, 1 or 2, not {self.verbose}")
        positive(self, ("checkpoint_every", "workers_per_trial"))


@dataclass(frozen=True)
class PipelineJobConfig:
    """Where and how the pipeline's Ray work runs (`ray_jobs.pipeline`; not what it computes)."""

    address: str | None = None
    """Ray cluster to attach to (default: $RAY_ADDRESS, else a local Ray of this job's own)."""
    embed_with: Literal["auto", "ray", "local"] = "auto"
    """Extraction: the Ray Data job (ray), this process's loop (local), or auto: Ray Data on a
    cluster of several nodes or with GPUs, else the local loop (faster on one CPU machine:
    docs/BENCHMARKS.md)."""
    verbose: bool = False
    """Show Ray's own output on the console as it comes (Tune's tables, the workers' logs, each
    trial's progress); it always goes to OUT/logs/<stage>.log."""

    def __post_init__(self):
        check_choices(self)
