"""The method end to end, stage by stage, resumable: `bertvision run` and `ray_jobs/pipeline.py`.

    bertvision run --task mrpc --out runs/mrpc                # an in-process Ray
    ray job submit --working-dir . -- python -m ray_jobs.pipeline --task mrpc --out /mnt/runs/mrpc

Stages, in order, each into a folder of the run (``RUN``)::

    majority/        the majority class (regression: the training mean) scored on the eval split(s)
    finetune/        the full fine-tuning baseline: the --lrs grid and 1..--max-epochs chosen on
                     validation, then --seeds runs scored on dev (`ray_jobs/baseline.py`); each
                     seed keeps its 1-epoch checkpoint
    store/<sel>/     every layer's states from seed <first>'s 1-epoch checkpoint, one store per
                     --selections (train and the eval splits)
    tune/            the Ray Tune + HyperOpt search over heads on those stores (validation only)
    heads/           the best trial's configuration trained again with every seed, dev scored once
    ensemble/        the best --top-k trials and the fine-tuned encoder, weights on validation
    efficiency-<f>/  with --fractions: fine-tuning and the best head on that share of the
                     training part (its own 1-epoch checkpoint and store)
    report.html      `bertvision report RUN` (rewritten at the end of every run)

``RUN/stages/<stage>.json`` records what each stage was run with: its settings and the keys of
the stages it reads (so its key changes when theirs do), whether it finished, its wall time and
a short result. A rerun skips a finished stage whose key is unchanged, resumes an unfinished
one (the stages' own resumption: finished fine-tuning runs and heads are reused, complete store
shards kept, a search resumed), and redoes, from scratch, a stage whose settings changed and
every stage after it that reads it, saying which settings changed. The task's data is part of
the fine-tuning stage's settings (content fingerprints): new data redoes everything.

Ray is needed for the fine-tuning grid and the search; the caller hands those in as runners
(`Runners`), so this module imports no Ray. Extraction runs in this process unless a runner is
given (`ray_jobs/pipeline.py` gives the Ray Data job).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

from bertvision.config import (
    FAMILY,
    EmbedConfig,
    EnsembleConfig,
    FinetuneConfig,
    HeadTrainConfig,
    SearchConfig,
    _positive,
    check_choices,
    from_dict,
)
from bertvision.errors import ConfigError
from bertvision.io import atomic_write_json

STAGES_DIR = "stages"
REPORT_FILE = "report.html"
PIPELINE_FILE = "pipeline.json"
STAGE_VERSION = 1  # bump when a stage's outputs change meaning: every run's stages are redone


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
    """Share of train held out for every selection (fine-tuning epochs, trials, ensemble weights)."""
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
        _positive(self, ("max_epochs", "train_examples", "max_length", "trials", "initial_points",
                         "max_concurrent", "head_epochs", "top_k", "cpus_per_trial"))  # fmt: skip
        for f in self.fractions:
            if not 0 < f < 1:
                raise ConfigError(f"--fractions: each share must lie in (0, 1) (the whole is the main run), not {f}")
        if len(set(self.fractions)) != len(self.fractions):
            raise ConfigError("--fractions: a share is given twice")
        if self.gpus_per_trial < 0:
            raise ConfigError(f"--gpus-per-trial must be >= 0, not {self.gpus_per_trial}")


@dataclass(frozen=True)
class Runners:
    """The stages that run on Ray, handed in by the caller (`ray_jobs/pipeline.py`):

    * ``finetune_grid(base: FinetuneConfig, out: str, lrs, max_epochs, seeds) -> dict``: the
      fine-tuning baseline (`ray_jobs.baseline.run`), returning its baseline.json;
    * ``tune(search: SearchConfig, out: str, resume: bool) -> list[dict]``: the search
      (`ray_jobs.tune.run`), returning its leaderboard;
    * ``embed(cfg: EmbedConfig, out: str) -> dict``: extraction (default: `bertvision.embed.embed`
      in this process).
    """

    finetune_grid: Callable | None = None
    tune: Callable | None = None
    embed: Callable | None = None


def stage_key(name: str, settings: dict, upstream: dict[str, str]) -> str:
    """sha256 (16 hex digits) of a stage's name, settings and the keys of the stages it reads."""
    text = json.dumps({"stage": name, "settings": settings, "after": upstream, "version": STAGE_VERSION},
                      sort_keys=True, default=str)  # fmt: skip
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class Stages:
    """The stage records of one run folder (``RUN/stages/<name>.json``) and the rule that
    decides, per stage, reuse, resume or redo (see the module doc)."""

    def __init__(self, run_dir: Path, log: Callable[[str], None] = print):
        self.run_dir, self.log = run_dir, log
        self.keys: dict[str, str] = {}
        self.done: list[str] = []

    def record_file(self, name: str) -> Path:
        return self.run_dir / STAGES_DIR / f"{name}.json"

    def read(self, name: str) -> dict | None:
        path = self.record_file(name)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not a stage record ({e}); delete it to redo the stage") from None

    def run(self, name: str, settings: dict, after: tuple[str, ...], fn: Callable[[Path], dict],
            folder: str | None = None) -> dict:  # fmt: skip
        """Stage ``name``: reused, resumed or (re)done into ``RUN/<folder or name>`` by
        ``fn(folder) -> result`` (small, JSON); returns the result."""
        settings = json.loads(json.dumps(settings, default=str))
        upstream = {a: self.keys[a] for a in after}
        key = stage_key(name, settings, upstream)
        self.keys[name] = key
        out = self.run_dir / (folder or name)
        old = self.read(name)
        if old is not None and old.get("key") == key and old.get("done"):
            self.log(f"{name}: finished earlier with these settings; reused ({out})")
            return old["result"]
        if old is not None and old.get("key") != key:
            changed = sorted(k for k in set(old.get("settings", {})) | set(settings)
                             if old.get("settings", {}).get(k) != settings.get(k))  # fmt: skip
            moved = sorted(a for a in set(old.get("after", {})) | set(upstream) if old.get("after", {}).get(a) != upstream.get(a))
            why = []
            if changed:
                why.append("settings changed: " + ", ".join(changed))
            if moved:
                why.append("redone before it: " + ", ".join(moved))
            self.log(f"{name}: {'; '.join(why) or 'its code changed'}; redoing it from scratch")
            if out.exists():
                shutil.rmtree(out)
        elif old is None and out.exists() and any(out.iterdir()):
            raise ConfigError(f"{out} holds files that no stage record of this run describes; "
                              "delete the folder, or give another --out")  # fmt: skip
        elif old is not None:
            self.log(f"{name}: resuming an unfinished run")
        else:
            self.log(f"{name}: running")
        record = {"stage": name, "key": key, "settings": settings, "after": upstream, "done": False,
                  "started": time.time(), "folder": str(out.relative_to(self.run_dir))}  # fmt: skip
        atomic_write_json(self.record_file(name), record)
        t0 = time.perf_counter()
        result = fn(out)
        record.update(done=True, wall_seconds=round(time.perf_counter() - t0, 1), result=result)
        atomic_write_json(self.record_file(name), record)
        self.done.append(name)
        return result


def _task(cfg: PipelineConfig):
    from bertvision.tasks import get_task

    return get_task(cfg.task, cfg.data_dir)


def data_fingerprint(task) -> dict[str, str]:
    """Content fingerprints of every split of ``task`` found (`bertvision.fingerprint`)."""
    from bertvision.fingerprint import splits_fingerprint

    return splits_fingerprint({s: task.load(s) for s in task.spec.splits if task.exists(s)})


def labelled_evals(task) -> list[str]:
    """The task's eval splits found locally that carry labels (test splits often do not)."""
    names = []
    for s in task.spec.eval_splits:
        if task.exists(s):
            data = task.load(s)
            if getattr(data, "labels", None) is not None or task.spec.kind == "span":
                names.append(s)
    return names


def store_splits(spec, evals) -> tuple[str, ...]:
    """The splits a store of the main run holds: train (the validation part is carved from it),
    the labelled eval splits, and a span task's own validation split where it has one (the
    article split of SQuAD dev: fine-tuning and span heads select on that split, not on a carve)."""
    own = ("validation",) if spec.kind == "span" and "validation" in spec.splits and "validation" not in evals else ()
    return ("train", *own, *evals)


def base_finetune(cfg: PipelineConfig, train_examples: int | None = None) -> FinetuneConfig:
    return FinetuneConfig(task=cfg.task, encoder=cfg.encoder, data_dir=cfg.data_dir, max_length=cfg.max_length,
                          validation_fraction=cfg.validation_fraction, validation_seed=cfg.validation_seed,
                          train_examples=train_examples if train_examples is not None else cfg.train_examples,
                          device=None if cfg.gpus_per_trial else "cpu")  # fmt: skip


def run_pipeline(cfg: PipelineConfig, out_dir: str | Path, runners: Runners,
                 log: Callable[[str], None] = print) -> dict:  # fmt: skip
    """Run (or resume) every stage of ``cfg`` into ``out_dir`` and write the report; returns
    pipeline.json's content (the config, the stages' keys, the report's path)."""
    from bertvision.outdir import claim

    if runners.finetune_grid is None or runners.tune is None:
        raise ConfigError("the pipeline's fine-tuning grid and search run on Ray: use 'bertvision run' or "
                          "python -m ray_jobs.pipeline")  # fmt: skip
    out = Path(out_dir).expanduser().absolute()
    task = _task(cfg)
    spec = task.spec
    family = FAMILY[spec.kind]
    if family == "span" and cfg.train_examples is not None:
        raise ConfigError("--train-examples: sentence tasks only")
    if family == "span" and cfg.fractions:
        raise ConfigError("--fractions: sentence tasks only (span heads take no training subset)")
    selections = ("tokens",) if family == "span" else cfg.selections
    evals = labelled_evals(task)
    with claim(out, "pipeline run"):
        started = {"config": asdict(cfg), "task": spec.to_dict(), "status": "running", "started": time.time()}
        atomic_write_json(out / PIPELINE_FILE, started)
        try:
            return _run_stages(cfg, out, runners, task, evals, selections, family, log)
        except BaseException as e:  # the run can be resumed: say where it stopped
            atomic_write_json(out / PIPELINE_FILE, {**started, "status": "stopped", "error": f"{type(e).__name__}: {e}"})
            raise


def _run_stages(cfg: PipelineConfig, out: Path, runners: Runners, task, evals: list[str], selections, family: str,
                log: Callable[[str], None]) -> dict:  # fmt: skip
    spec = task.spec
    t_run = time.perf_counter()
    stages = Stages(out, log)
    fingerprint = data_fingerprint(task)
    stages.run("majority", {"task": cfg.task, "data": fingerprint, "evals": evals,
                            "validation": [cfg.validation_fraction, cfg.validation_seed],
                            "train_examples": cfg.train_examples},
               (), lambda d: majority_scores(task, evals, cfg))  # fmt: skip

    base = base_finetune(cfg)
    ft = stages.run("finetune", {"base": asdict(base), "data": fingerprint, "lrs": cfg.lrs,
                                 "max_epochs": cfg.max_epochs, "seeds": cfg.seeds,
                                 "cpus": cfg.cpus_per_trial, "gpus": cfg.gpus_per_trial},
                    (), lambda d: _finetune_stage(runners, base, d, cfg, cfg.lrs, cfg.max_epochs))  # fmt: skip
    checkpoint = out / "finetune" / f"seed-{cfg.seeds[0]}" / "checkpoint-e1"

    stores = []
    for sel in selections:
        ecfg = EmbedConfig(task=cfg.task, checkpoint=str(checkpoint), splits=store_splits(spec, evals), data_dir=cfg.data_dir,
                           selection=sel, max_length=cfg.max_length, device=cfg.device, train_examples=cfg.train_examples,
                           validation_fraction=cfg.validation_fraction, validation_seed=cfg.validation_seed)  # fmt: skip
        stages.run(f"store-{sel}", {"embed": embed_settings(ecfg)}, ("finetune",),
                   lambda d, ecfg=ecfg: _embed_stage(runners, ecfg, d), folder=f"store/{sel}")  # fmt: skip
        stores.append(str(out / "store" / sel))

    search = SearchConfig(stores=tuple(stores), trials=cfg.trials, initial_points=cfg.initial_points,
                          max_concurrent=cfg.max_concurrent, cpus_per_trial=cfg.cpus_per_trial,
                          gpus_per_trial=cfg.gpus_per_trial, epochs=cfg.head_epochs, seed=cfg.seeds[0],
                          top_k=cfg.top_k, validation_fraction=cfg.validation_fraction,
                          validation_seed=cfg.validation_seed, data_dir=cfg.data_dir,
                          device=None if cfg.gpus_per_trial else "cpu")  # fmt: skip
    store_stages = tuple(f"store-{s}" for s in selections)
    searched = {k: v for k, v in asdict(search).items() if k != "top_k"}  # the ensemble's, not the search's
    best = stages.run("tune", {"search": searched}, store_stages,
                      lambda d: _tune_stage(runners, search, d))  # fmt: skip

    head_cfg = best_head_config(best["config"], cfg)
    stages.run("heads", {"train": asdict(head_cfg)}, ("tune",), lambda d: _heads_stage(head_cfg, d))

    encoder_member = _has_encoder_logits(stores[0])
    if cfg.top_k + encoder_member >= 2:
        ens = EnsembleConfig(store=stores[0] if family == "span" else None, from_tune=str(out / "tune"),
                             top_k=cfg.top_k, encoder=encoder_member, validation_fraction=cfg.validation_fraction,
                             validation_seed=cfg.validation_seed, data_dir=cfg.data_dir, device=cfg.device)  # fmt: skip
        stages.run("ensemble", {"ensemble": asdict(ens)}, ("tune",), lambda d: _ensemble_stage(ens, d))

    train_rows = json.loads((out / "heads" / "config.json").read_text())["train_rows"]
    for f in sorted(cfg.fractions):
        n = max(2, round(f * train_rows))
        fbase = base_finetune(cfg, train_examples=n)
        chosen = ft["chosen"]
        lrs, epochs = (chosen["lr"],), max(1, int(chosen["epochs"]))
        settings = {"fraction": f, "examples": n, "base": asdict(fbase), "lrs": lrs, "max_epochs": epochs,
                    "seeds": cfg.seeds, "head": asdict(replace(head_cfg, store="", train_examples=n)),
                    "selection": best["selection"], "cpus": cfg.cpus_per_trial, "gpus": cfg.gpus_per_trial}  # fmt: skip
        stages.run(f"efficiency-{f:g}", settings, ("finetune", "tune"),
                   lambda d, fbase=fbase, n=n, f=f, lrs=lrs, epochs=epochs: _efficiency_stage(
                       runners, cfg, fbase, n, f, lrs, epochs, head_cfg, best["selection"], evals, d))  # fmt: skip

    log("report: writing")
    from bertvision.report import write_report

    report = write_report(out)
    summary = {"config": asdict(cfg), "task": spec.to_dict(), "status": "done", "keys": stages.keys,
               "ran": stages.done, "report": str(report), "wall_seconds": round(time.perf_counter() - t_run, 1)}  # fmt: skip
    atomic_write_json(out / PIPELINE_FILE, summary)
    return summary


# ---------------------------------------------------------------------------------------------
# The stages


def majority_scores(task, evals: list[str], cfg: PipelineConfig) -> dict:
    """Always predicting the training part's majority class (regression: its mean score; span
    tasks: no answer) on each eval split, with the task's metrics."""
    import numpy as np

    from bertvision.metrics import compute_metrics
    from bertvision.tasks.base import carve_validation, training_subset

    spec = task.spec
    if spec.kind == "span":
        from bertvision.metrics.squad_v2 import squad_v2_scores

        out = {}
        for s in evals:
            gold = task.load(s).gold()
            scores = squad_v2_scores(gold, dict.fromkeys(gold, ""))
            out[s] = {"exact": scores["exact"], "f1": scores["f1"]}
        return {"rule": "always no answer", "scores": out}
    train = task.load("train")
    labels = np.asarray(train.labels)
    part, _ = carve_validation(labels if spec.kind == "classification" else None, len(labels),
                               cfg.validation_fraction, cfg.validation_seed)  # fmt: skip
    part = training_subset(part, cfg.train_examples, cfg.validation_seed)
    out = {}
    if spec.kind == "classification":
        counts = np.bincount(labels[part], minlength=len(spec.labels))
        value, rule = int(counts.argmax()), f"always {spec.labels[int(counts.argmax())]!r} (the training part's most frequent label)"
    else:
        value, rule = float(labels[part].mean()), "always the training part's mean score"
    for s in evals:
        gold = np.asarray(task.load(s).labels)
        preds = np.full(len(gold), value, dtype=np.int64 if spec.kind == "classification" else np.float64)
        out[s] = {k: (None if isinstance(v, float) and math.isnan(v) else v)
                  for k, v in compute_metrics(spec.metrics, preds, gold).items()}  # fmt: skip
    return {"rule": rule, "scores": out}


def _finetune_stage(runners: Runners, base: FinetuneConfig, out: Path, cfg: PipelineConfig, lrs, max_epochs) -> dict:
    summary = runners.finetune_grid(base, str(out), tuple(lrs), int(max_epochs), tuple(cfg.seeds))
    return {"chosen": summary["chosen"], **{k: v for k, v in summary.items() if k.startswith(("dev", "test"))},
            "train_seconds": summary["train_seconds"]}  # fmt: skip


def embed_settings(ecfg: EmbedConfig) -> dict:
    """A store stage's settings: the EmbedConfig, without the training-subset fields when no
    subset is asked for (so runs from before those fields existed keep their keys)."""
    settings = asdict(ecfg)
    if ecfg.train_examples is None:
        for k in ("train_examples", "validation_fraction", "validation_seed"):
            settings.pop(k)
    return settings


def _embed_stage(runners: Runners, ecfg: EmbedConfig, out: Path) -> dict:
    from bertvision.store import store_bytes

    embed = runners.embed
    if embed is None:
        from bertvision.embed import embed
    manifests = embed(ecfg, str(out))
    return {split: {"rows": m["rows"], "bytes": store_bytes(out / split),
                    "seconds": (m.get("this_run") or {}).get("seconds")} for split, m in manifests.items()}  # fmt: skip


def _tune_stage(runners: Runners, search: SearchConfig, out: Path) -> dict:
    board = runners.tune(search, str(out), (out / "tuner.pkl").exists())
    top = board[0]
    return {"trials": len(board), "score": top["score"], "trial": Path(top["trial"]).name, "params": top["params"],
            "config": top["config"], "selection": Path(top["params"]["store"]).name,
            "train_seconds": float(sum(r.get("timing", {}).get("train_seconds") or 0 for r in board))}  # fmt: skip


def best_head_config(config: dict, cfg: PipelineConfig) -> HeadTrainConfig:
    """The best trial's `HeadTrainConfig` (trial.json's "config") with the run's seeds."""
    head = from_dict(HeadTrainConfig, config)
    return replace(head, seeds=tuple(cfg.seeds), device=cfg.device)


def _heads_stage(head_cfg: HeadTrainConfig, out: Path) -> dict:
    from bertvision.train import train_heads

    s = train_heads(head_cfg, out)
    return {k: v for k, v in s.items() if k not in ("runs",)}


def _ensemble_stage(ens: EnsembleConfig, out: Path) -> dict:
    from bertvision.ensemble import ensemble

    r = ensemble(ens, out)
    if r["kind"] == "span":
        return {"kind": "span", "ensembles": r["ensembles"]}
    return {"kind": r["kind"], "chosen": r["chosen"], "weights": r["weights"], "chosen_scores": r["ensembles"][r["chosen"]]}


def _has_encoder_logits(store: str) -> bool:
    from bertvision.store import read_manifest

    return bool(read_manifest(Path(store) / "train").get("encoder_logits"))


def _efficiency_stage(runners: Runners, cfg: PipelineConfig, fbase: FinetuneConfig, n: int, fraction: float,
                      lrs, epochs: int, head_cfg: HeadTrainConfig, selection: str, evals: list[str], out: Path) -> dict:  # fmt: skip
    """Fine-tuning (at the main run's chosen rate, epochs chosen on validation up to the main
    run's) and the best head configuration, both on ``n`` training examples: the head on the
    states of this run's own 1-epoch checkpoint, so no stage saw more than ``n`` examples. The
    store holds only the validation part and those ``n`` (`EmbedConfig.train_examples`)."""
    from bertvision.train import train_heads

    ft = _finetune_stage(runners, fbase, out / "finetune", cfg, lrs, epochs)
    ecfg = EmbedConfig(task=cfg.task, checkpoint=str(out / "finetune" / f"seed-{cfg.seeds[0]}" / "checkpoint-e1"),
                       splits=("train", *evals), data_dir=cfg.data_dir, selection=selection,
                       max_length=cfg.max_length, device=cfg.device, train_examples=n,
                       validation_fraction=cfg.validation_fraction, validation_seed=cfg.validation_seed)  # fmt: skip
    _embed_stage(runners, ecfg, out / "store")
    heads = train_heads(replace(head_cfg, store=str(out / "store"), train_examples=n), out / "heads")
    return {"fraction": fraction, "examples": n, "finetune": ft,
            "heads": {k: v for k, v in heads.items() if k not in ("runs",)}}
