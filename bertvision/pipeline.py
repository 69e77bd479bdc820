"""The method end to end, stage by stage, resumable: `bertvision run` and `ray_jobs/pipeline.py`.

Each stage (majority, finetune, store-<sel>, tune, heads, ensemble, efficiency-<f>; then the report)
writes a folder of the run, its config the run's `PipelineConfig` taken over by `derive`. `Stages`
records each in ``RUN/stages/<stage>.json`` and reuses, resumes or redoes it (and every stage that
reads it) as its settings say. The Ray stages are handed in (`Runners`): no Ray imported here."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np

from bertvision.config import (
    BaselineGrid,
    EmbedConfig,
    EnsembleConfig,
    FinetuneConfig,
    HeadTrainConfig,
    PipelineConfig,
    SearchConfig,
    TuneJobConfig,
    derive,
    family,
    from_dict,
)
from bertvision.errors import ConfigError
from bertvision.io import atomic_write_json
from bertvision.runtime import RunOutput

STAGES_DIR = "stages"
LOGS_DIR = "logs"  # RUN/logs/<stage>.log: what a stage printed besides its lines (Ray's output), `RunOutput`
PIPELINE_FILE = "pipeline.json"
STAGE_VERSION = 1  # bump when a stage's outputs change meaning: every run's stages are redone
SUBSET = ("train_examples", "validation_fraction", "validation_seed")  # EmbedConfig's training-subset fields
FIRST = "finetune/seed-{}/checkpoint-e1"  # the checkpoint a run's stores embed: its first seed's, after 1 epoch

__all__ = ["PipelineConfig", "Runners", "Stages", "run_pipeline", "store_splits"]


@dataclass(frozen=True)
class Runners:
    """The stages run on Ray, handed in by `ray_jobs/pipeline.py`: ``finetune_grid(base, out, grid)``,
    ``tune(search, out, job)`` and ``embed(cfg, out)`` (default: `bertvision.embed.embed` here)."""

    finetune_grid: Callable | None = None
    tune: Callable | None = None
    embed: Callable | None = None


def stage_key(name: str, settings: dict, upstream: dict[str, str]) -> str:
    """sha256 (16 hex digits) of a stage's name, settings and the keys of the stages it reads."""
    text = json.dumps({"stage": name, "settings": settings, "after": upstream, "version": STAGE_VERSION},
                      sort_keys=True, default=str)  # fmt: skip
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class Stages:
    """The stage records of one run folder and the rule that reuses, resumes or redoes a stage.
    ``options``: the run's options changed since its last run, name -> (old, new): a changed
    setting with those values is named by the option (``--top-k``), another by its path.
    ``output``: the run's `RunOutput` (its lines, and each stage's other output in its log)."""

    def __init__(self, run_dir: Path, log: Callable[[str], None] = print, options: dict | None = None,
                 output: RunOutput | None = None):  # fmt: skip
        self.run_dir, self.options, self.output = run_dir, options or {}, output
        self.log = output.say if output else log
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
        """Stage ``name``, reused, resumed or (re)done by ``fn(RUN/<folder or name>) -> result``."""
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
            was, now, was_after = _flat(old.get("settings", {})), _flat(settings), old.get("after", {})
            changed = dict.fromkeys(self._changed(k, was.get(k, UNSET), now.get(k, UNSET)) for k in sorted({*was, *now})
                                    if was.get(k, UNSET) != now.get(k, UNSET))  # fmt: skip
            redone = sorted(a for a in {*was_after, *upstream} if was_after.get(a) != upstream.get(a))
            why = [", ".join(changed)] if changed else []
            why += [f"redone before it: {', '.join(redone)}"] if redone else []
            self.log(f"{name}: {'; '.join(why) or 'its code changed'}; redoing it from scratch")
            if out.exists():
                shutil.rmtree(out)
        elif old is None and out.exists() and any(out.iterdir()):
            raise ConfigError(f"{out} holds files that no stage record of this run describes; "
                              "delete the folder, or give another --out")  # fmt: skip
        else:
            self.log(f"{name}: {'running' if old is None else 'resuming an unfinished run'}")
        record = {"stage": name, "key": key, "settings": settings, "after": upstream, "done": False,
                  "started": time.time(), "folder": str(out.relative_to(self.run_dir))}  # fmt: skip
        atomic_write_json(self.record_file(name), record)
        t0 = time.perf_counter()
        log_file = self.output.to(name) if self.output else None
        try:
            result = fn(out)
        except Exception:
            if self.output:  # the whole traceback in the log; the error's one line follows this one
                self.output.write(traceback.format_exc())
                self.output.to(None)
            seen = f"; see {log_file}" if log_file and log_file.is_file() else ""
            self.log(f"{name}: failed after {_took(time.perf_counter() - t0)}{seen}")
            raise
        if self.output:
            self.output.to(None)
        record.update(done=True, wall_seconds=round(time.perf_counter() - t0, 1), result=result)
        atomic_write_json(self.record_file(name), record)
        said = SAID.get(name.split("-")[0])
        self.log(f"{name}: done in {_took(record['wall_seconds'])}" + (f"; {said(result)}" if said and result else ""))
        self.done.append(name)
        return result

    def _changed(self, path: str, old, new) -> str:
        """"--trials changed 24 -> 30" where the run's option changed so, else the setting's path."""
        option = path.rsplit(".", 1)[-1]
        name = f"--{option.replace('_', '-')}" if self.options.get(option) == (old, new) else path
        return f"{name} changed {_shown(old)} -> {_shown(new)}"


UNSET = object()  # a setting one of two records lacks


def _took(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"


def _score(scores: dict) -> str:
    """The first eval split's first metric in a stage's result ({split: {metric: value or mean and
    std}}, beside the validation scores, the chosen setting or the ensemble's weights)."""
    split = next((k for k, v in scores.items() if isinstance(v, dict) and v and k not in ("validation", "chosen", "weights")), None)
    if split is None:
        return "no eval split scored"
    metric, v = next(iter(scores[split].items()))
    v = v if isinstance(v, dict) else {"mean": v}
    return f"{split} {metric} " + (f"{v['mean']:.4f}" if v["mean"] is not None else "undefined: a constant prediction has no correlation") + (
        f" ± {v['std']:.4f}" if "std" in v else "")  # fmt: skip


SAID = {
    "majority": lambda r: f"{r['rule']}: {_score(r['scores'])}",
    "finetune": lambda r: f"lr {r['chosen']['lr']:g}, {r['chosen']['epochs']:g} epoch(s): {_score(r)}",
    "store": lambda r: ", ".join(f"{split} {s['rows']} rows" for split, s in r.items()),
    "tune": lambda r: f"{r['trials']} trials, the best ({r['trial']}) {r['score']:.4f} on validation",
    "heads": lambda r: f"{_score(r)} over {len(r['seeds'])} seed(s)",
    "ensemble": lambda r: "; ".join(f"{m} {_score(e)}" for m, e in r["ensembles"].items()) if "ensembles" in r
                          else f"{r['chosen']} {_score(r['chosen_scores'])}",
    "efficiency": lambda r: f"{r['examples']} examples: fine-tuning {_score(r['finetune'])}, heads {_score(r['heads'])}",
}  # fmt: skip
"""A stage (its name up to the first '-') -> its result in the line that ends it."""


def _shown(value) -> str:
    return "unset" if value is UNSET else json.dumps(value)


def _flat(settings: dict, prefix: str = "") -> dict:
    """Nested settings as one level: {"ensemble.top_k": 5, ...}."""
    out = {}
    for k, v in settings.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def store_splits(spec, evals) -> tuple[str, ...]:
    """The splits a store of the main run holds: train (the validation part is carved from it),
    the labelled eval splits, and a task's own validation split where it selects on it."""
    own = family(spec.kind).own_validation and "validation" in spec.splits and "validation" not in evals
    return ("train", *(("validation",) if own else ()), *evals)


def run_pipeline(cfg: PipelineConfig, out_dir: str | Path, runners: Runners,
                 log: Callable[[str], None] = print, output: RunOutput | None = None) -> dict:  # fmt: skip
    """Run (or resume) every stage of ``cfg`` into ``out_dir`` and write the report; returns
    pipeline.json's content (the config, the stages' keys, the report's path). ``output``: the
    run's console (its lines instead of ``log``; each stage's other output in RUN/logs/)."""
    from bertvision.fingerprint import splits_fingerprint
    from bertvision.outdir import claim
    from bertvision.tasks import get_task

    if runners.finetune_grid is None or runners.tune is None:
        raise ConfigError("the pipeline's fine-tuning grid and search run on Ray: use 'bertvision run' or "
                          "python -m ray_jobs.pipeline")  # fmt: skip
    out = Path(out_dir).expanduser().absolute()
    task = get_task(cfg.task, cfg.data_dir)
    if not family(task.spec.kind).subsets and (cfg.train_examples is not None or cfg.fractions):
        raise ConfigError(f"--{'train-examples' if cfg.train_examples is not None else 'fractions'}: sentence tasks "
                          "only (span fine-tuning and heads take no training subset)")  # fmt: skip
    # Every split read and checked, and the validation part carved, before the folder is touched
    fingerprint = splits_fingerprint({s: task.load(s) for s in task.spec.splits if task.exists(s)})
    evals = [s for s in task.spec.eval_splits if task.exists(s) and task.load(s).labelled]  # test splits often have none
    floor = FLOORS[task.spec.kind](task, evals, cfg)
    with claim(out, "pipeline run"):
        now = json.loads(json.dumps(asdict(cfg)))
        options = {k: (v, now[k]) for k, v in _last_config(out).items() if k in now and v != now[k]}
        started = {"config": asdict(cfg), "task": task.spec.to_dict(), "status": "running", "started": time.time()}
        atomic_write_json(out / PIPELINE_FILE, started)
        try:
            stages = Stages(out, log, options, output)
            return _run_stages(cfg, out, runners, task, stages, stages.log,
                               evals=evals, fingerprint=fingerprint, floor=floor)  # fmt: skip
        except BaseException as e:  # the run can be resumed: say where it stopped (unless the disk is full)
            with contextlib.suppress(OSError):  # the error to report is the first
                atomic_write_json(out / PIPELINE_FILE, {**started, "status": "stopped", "error": f"{type(e).__name__}: {e}"})
            raise


def _last_config(out: Path) -> dict:
    """The options of the last run in ``out`` (pipeline.json), as JSON; {} where there was none."""
    try:
        return json.loads((out / PIPELINE_FILE).read_text(encoding="utf-8")).get("config", {})
    except (OSError, ValueError):
        return {}


def _run_stages(cfg: PipelineConfig, out: Path, runners: Runners, task, stages: Stages, log: Callable[[str], None], *,
                evals: list[str], fingerprint: dict, floor: dict) -> dict:  # fmt: skip
    from bertvision.ensemble import ensemble
    from bertvision.report import write_report
    from bertvision.store import read_manifest
    from bertvision.train import train_heads

    spec, t_run, fam = task.spec, time.perf_counter(), family(task.spec.kind)
    stages.run("majority", {"task": cfg.task, "data": fingerprint, "evals": evals,
                            "validation": [cfg.validation_fraction, cfg.validation_seed],
                            "train_examples": cfg.train_examples},
               (), lambda d: floor)  # fmt: skip

    on_ray = None if cfg.gpus_per_trial else "cpu"  # the device of the runs on Ray: their own GPU, or none
    base, grid = derive(FinetuneConfig, cfg, device=on_ray), derive(BaselineGrid, cfg)
    ft = stages.run("finetune", {"base": asdict(base), "data": fingerprint, "lrs": grid.lrs, "max_epochs": grid.max_epochs,
                                 "seeds": grid.seeds, "cpus": grid.cpus_per_trial, "gpus": grid.gpus_per_trial},
                    (), lambda d: _finetune_stage(runners, base, grid, d))  # fmt: skip

    embedding = derive(EmbedConfig, cfg, checkpoint=str(out / FIRST.format(cfg.seeds[0])), splits=store_splits(spec, evals))
    selections = fam.selections or cfg.selections
    for sel in selections:
        ecfg = replace(embedding, selection=sel)
        # without the training-subset fields when no subset is asked for: older runs keep their keys
        embedded = {k: v for k, v in asdict(ecfg).items() if ecfg.train_examples is not None or k not in SUBSET}
        stages.run(f"store-{sel}", {"embed": embedded}, ("finetune",),
                   partial(_embed_stage, runners, ecfg), folder=f"store/{sel}")  # fmt: skip
    stores = [str(out / "store" / sel) for sel in selections]

    search = derive(SearchConfig, cfg, stores=tuple(stores), epochs=cfg.head_epochs, seed=cfg.seeds[0], device=on_ray)
    searched = {k: v for k, v in asdict(search).items() if k != "top_k"}  # the ensemble's, not the search's
    best = stages.run("tune", {"search": searched}, tuple(f"store-{s}" for s in selections),
                      lambda d: _tune_stage(runners, search, d))  # fmt: skip

    head_cfg = replace(from_dict(HeadTrainConfig, best["config"]), seeds=tuple(cfg.seeds), device=cfg.device)
    stages.run("heads", {"train": asdict(head_cfg)}, ("tune",), lambda d: _summary(train_heads(head_cfg, d)))

    encoder_member = bool(read_manifest(Path(stores[0]) / "train").get("encoder_logits"))
    if cfg.top_k + encoder_member >= 2:
        # (EnsembleConfig's encoder is a member, the run's a model: set here, never taken over)
        ens = derive(EnsembleConfig, cfg, store=stores[0] if fam.ensemble_store else None, from_tune=str(out / "tune"),
                     encoder=encoder_member)  # fmt: skip
        stages.run("ensemble", {"ensemble": asdict(ens)}, ("tune",),
                   lambda d: ENSEMBLE_RESULT[fam.name](ensemble(ens, d)))  # fmt: skip

    train_rows = json.loads((out / "heads" / "config.json").read_text())["train_rows"]
    for f in sorted(cfg.fractions):
        n = max(2, round(f * train_rows))
        fbase = replace(base, train_examples=n)
        fgrid = replace(grid, lrs=(ft["chosen"]["lr"],), max_epochs=max(1, int(ft["chosen"]["epochs"])))
        fembed = replace(embedding, splits=("train", *evals), selection=best["selection"], train_examples=n)
        fhead = replace(head_cfg, train_examples=n)
        settings = {"fraction": f, "examples": n, "base": asdict(fbase), "lrs": fgrid.lrs, "max_epochs": fgrid.max_epochs,
                    "seeds": cfg.seeds, "head": asdict(replace(fhead, store="")), "selection": best["selection"],
                    "cpus": cfg.cpus_per_trial, "gpus": cfg.gpus_per_trial}  # fmt: skip
        stages.run(f"efficiency-{f:g}", settings, ("finetune", "tune"),
                   partial(_efficiency_stage, runners, f, fbase, fgrid, fembed, fhead))  # fmt: skip

    log("report: writing")
    report = write_report(out)
    summary = {"config": asdict(cfg), "task": spec.to_dict(), "status": "done", "keys": stages.keys,
               "ran": stages.done, "report": str(report), "wall_seconds": round(time.perf_counter() - t_run, 1)}  # fmt: skip
    atomic_write_json(out / PIPELINE_FILE, summary)
    return summary


# ---------------------------------------------------------------------------------------------
# The stages


def _constant(task, evals: list[str], value, rule: str) -> dict:
    """Always ``value``, scored on each eval split with the task's metrics (an undefined one None)."""
    from bertvision.metrics import compute_metrics

    out = {}
    for s in evals:
        gold = np.asarray(task.load(s).labels)
        scores = compute_metrics(task.spec.metrics, np.full(len(gold), value), gold)
        out[s] = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in scores.items()}
    return {"rule": rule, "scores": out}


def _training_labels(task, cfg: PipelineConfig, stratify: bool) -> np.ndarray:
    """The labels of the training part (the validation carve and --train-examples applied)."""
    from bertvision.tasks.base import carve_validation, training_subset

    train = task.load("train")
    labels = np.asarray(train.labels)
    part, _ = carve_validation(labels if stratify else None, len(labels), cfg.validation_fraction, cfg.validation_seed,
                               source=train.source)  # fmt: skip
    return labels[training_subset(part, cfg.train_examples, cfg.validation_seed)]


def _majority_class(task, evals: list[str], cfg: PipelineConfig) -> dict:
    names = task.spec.labels
    value = int(np.bincount(_training_labels(task, cfg, True), minlength=len(names)).argmax())
    return _constant(task, evals, value, f"always {names[value]!r} (the training part's most frequent label)")


def _no_answer(task, evals: list[str], cfg: PipelineConfig) -> dict:
    from bertvision.metrics.squad_v2 import squad_v2_scores

    out = {}
    for s in evals:
        gold = task.load(s).gold()
        scores = squad_v2_scores(gold, dict.fromkeys(gold, ""))
        out[s] = {"exact": scores["exact"], "f1": scores["f1"]}
    return {"rule": "always no answer", "scores": out}


FLOORS = {"classification": _majority_class, "span": _no_answer,
          "regression": lambda task, evals, cfg: _constant(task, evals, float(_training_labels(task, cfg, False).mean()),
                                                           "always the training part's mean score")}  # fmt: skip
"""Task kind -> the majority stage: the training part's majority class, mean score or no answer."""


def _finetune_stage(runners: Runners, base: FinetuneConfig, grid: BaselineGrid, out: Path) -> dict:
    summary = runners.finetune_grid(base, str(out), grid)
    return {"chosen": summary["chosen"], **{k: summary[k] for k in summary["evals"]},
            "train_seconds": summary["train_seconds"]}  # fmt: skip


def _embed_stage(runners: Runners, ecfg: EmbedConfig, out: Path) -> dict:
    from bertvision.embed import embed
    from bertvision.store import store_bytes

    manifests = (runners.embed or embed)(ecfg, str(out))
    # the Ray job's seconds are the whole job's (every split at once): a split's are the local loop's
    return {split: {"rows": m["rows"], "bytes": store_bytes(out / split),
                    "seconds": None if runners.embed else (m["this_run"] or {}).get("seconds")}
            for split, m in manifests.items()}  # fmt: skip


def _tune_stage(runners: Runners, search: SearchConfig, out: Path) -> dict:
    from bertvision.search import RECORD

    board = runners.tune(search, str(out), TuneJobConfig(resume=(out / RECORD).exists(), verbose=0))
    top = board[0]
    return {"trials": len(board), "score": top["score"], "trial": Path(top["trial"]).name, "params": top["params"],
            "config": top["config"], "selection": Path(top["params"]["store"]).name,
            "train_seconds": float(sum(r.get("timing", {}).get("train_seconds") or 0 for r in board))}  # fmt: skip


def _summary(summary: dict) -> dict:
    """A head run's summary less its runs (they stay in its summary.json)."""
    return {k: v for k, v in summary.items() if k != "runs"}


ENSEMBLE_RESULT = {
    "sentence": lambda r: {"kind": r["kind"], "chosen": r["chosen"], "weights": r["weights"],
                           "chosen_scores": r["ensembles"][r["chosen"]]},
    "span": lambda r: {"kind": "span", "ensembles": r["ensembles"]},
}  # fmt: skip
"""Task family -> what the ensemble stage records of an ensemble's result."""


def _efficiency_stage(runners: Runners, fraction: float, fbase: FinetuneConfig, fgrid: BaselineGrid,
                      fembed: EmbedConfig, fhead: HeadTrainConfig, out: Path) -> dict:  # fmt: skip
    """Fine-tuning (the main run's rate, epochs up to its) and the best head configuration on
    ``fembed.train_examples`` examples, the head on this stage's own checkpoint: none saw more."""
    from bertvision.train import train_heads

    ft = _finetune_stage(runners, fbase, fgrid, out / "finetune")
    _embed_stage(runners, replace(fembed, checkpoint=str(out / FIRST.format(fgrid.seeds[0]))), out / "store")
    heads = train_heads(replace(fhead, store=str(out / "store")), out / "heads")
    return {"fraction": fraction, "examples": fembed.train_examples, "finetune": ft, "heads": _summary(heads)}
