"""Head searches over stored states, the library side: the search space, one trial (a `fit_head`
reporting its validation score every epoch; dev and test never loaded), the stopping rule, the
search's own record (all a resume reads), the leaderboard. Ray Tune drives them
(`ray_jobs/tune.py`); nothing here imports Ray."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import cache
from pathlib import Path

from bertvision.config import HeadArchitecture, HeadTrainConfig, Optimisation, SearchConfig, derive
from bertvision.distributed import ONE, World
from bertvision.errors import ConfigError, DataError
from bertvision.io import atomic_write_json
from bertvision.kinds import store_kind
from bertvision.train import fit_head, head_meta, log_epoch, save_head

TRIAL_FILE = "trial.json"
RECORD = "search.json"  # the search's settings and every trial it ended: all a resume reads (never Tune's pickles)
ORPHANS = "orphaned"  # trial folders a resumed search does not know, set aside
# Settings a resumed search may change; any other change is a different search.
RESUME_MAY_CHANGE = ("trials", "max_concurrent", "cpus_per_trial", "gpus_per_trial", "device", "top_k")
REDUCTION = 4  # ASHA's: a rung keeps the top quarter

# The space (hyperopt): what HyperOpt may choose, and the values tried.
ADAPTER_SIZES = (16, 32, 64, 128, 256)
BATCH_SIZES = (16, 32, 64, 128)
LR_RANGE = (1e-4, 1e-2)
WEIGHT_DECAY_RANGE = (1e-4, 1e-1)
DROPOUT_RANGE = (0.0, 0.5)
POOLINGS = ("mean", "attention", "flatten")  # token stores only
HEAD_PARAMS = ("adapter_size", "shared", "combine", "residual", "first_layer", "dropout")
OPTIM_PARAMS = ("lr", "weight_decay", "batch_size")


def space(search: SearchConfig, num_hidden_states: int, token_stores: bool = False) -> dict:
    """The hyperopt search space: the store, every head and optimisation choice, and with a
    sentence token store among them the pooling (without one: the same points as before)."""
    from hyperopt import hp

    pooling = {"pooling": hp.choice("pooling", list(POOLINGS))} if token_stores else {}
    return {
        "store": hp.choice("store", list(search.stores)),
        "adapter_size": hp.choice("adapter_size", list(ADAPTER_SIZES)),
        "shared": hp.choice("shared", [True, False]),
        "combine": hp.choice("combine", ["flatten", "scalar_mix"]),
        "residual": hp.choice("residual", [True, False]),
        "first_layer": hp.choice("first_layer", list(range(num_hidden_states))),
        "dropout": hp.uniform("dropout", *DROPOUT_RANGE),
        "lr": hp.loguniform("lr", *map(math.log, LR_RANGE)),
        "weight_decay": hp.loguniform("weight_decay", *map(math.log, WEIGHT_DECAY_RANGE)),
        "batch_size": hp.choice("batch_size", list(BATCH_SIZES)),
        **pooling,
    }


def default_point(search: SearchConfig, family: str, token_stores: bool = False) -> dict:
    """The default head configuration: the search's first point, so it can only improve on it."""
    head, optim = HeadArchitecture(), Optimisation().resolved(family)
    return {"store": search.stores[0], **{f: getattr(head, f) for f in HEAD_PARAMS},
            **{f: getattr(optim, f) for f in OPTIM_PARAMS}, **({"pooling": head.pooling} if token_stores else {})}


def trial_config(search: SearchConfig, params: dict) -> HeadTrainConfig:
    """The `HeadTrainConfig` of one trial: the search's settings, the proposed hyperparameters."""
    plain = plain_params(params)
    head = HeadArchitecture(**{f: plain[f] for f in (*HEAD_PARAMS, "pooling") if f in plain})
    optim = derive(Optimisation, search, **{f: plain[f] for f in OPTIM_PARAMS})
    return derive(HeadTrainConfig, search, store=params["store"], seeds=(search.seed,), head=head, optim=optim)


def plain_params(params: dict) -> dict:
    """numpy scalars (hyperopt's) as Python values, so configs and records stay JSON-able."""
    return {k: v.item() if hasattr(v, "item") else v for k, v in params.items()}


def load_stores(search: SearchConfig) -> dict[str, tuple]:
    """Store folder -> (kind, HeadData), each read once (every shard checked), train and
    validation only; all stores of one search must share the task, kind and depth."""
    loaded, first = {}, None
    for store in search.stores:
        kind, manifest, spec = store_kind(store)
        if first is None:
            first = (spec["name"], kind.name, manifest["num_hidden_states"])
        elif (spec["name"], kind.name, manifest["num_hidden_states"]) != first:
            raise ConfigError(f"store {store}: task {spec['name']} ({kind.name}, {manifest['num_hidden_states']} hidden "
                              f"states), but {search.stores[0]} holds {first[0]} ({first[1]}, {first[2]}); one search "
                              "compares stores of one task and encoder depth")  # fmt: skip
        loaded[store] = (kind, kind.load(derive(HeadTrainConfig, search, store=store), Path(store), spec, []))  # no eval parts: dev is not a search's
    return loaded


def run_trial(search: SearchConfig, params: dict, stores: dict[str, tuple], folder: Path,
              report: Callable[[dict, Callable[[], dict]], None], resume: dict | None = None,
              extra: dict | None = None, world: World = ONE) -> dict:  # fmt: skip
    """One trial: `fit_head` with ``params``; after every epoch trial.json and the best weights so
    far written into ``folder`` (by rank 0), then ``report(metrics, state)``; returns trial.json's
    content. ``extra``: Ray's "entered" (default now) and "node". trial.json's ``timing`` (this
    attempt's): ``first_step`` is the first report's time less its training seconds (epoch 1's
    validation counts as start-up), ``wall_seconds`` runs from ``entered`` to the last report."""
    from torch.utils.tensorboard import SummaryWriter

    extra = dict(extra or {})
    entered = float(extra.pop("entered", None) or time.time())
    cfg = trial_config(search, params)
    kind, data = stores[cfg.store]
    cfg = cfg.resolved(kind.family)
    if world.main:
        folder.mkdir(parents=True, exist_ok=True)
    tb = SummaryWriter(str(folder / "tb")) if world.main else None
    record = {"params": plain_params(params), "config": asdict(cfg), "kind": kind.name,
              "history": [], "epochs_run": 0, "best_epoch": None, "score": None, "node": extra.pop("node", None),
              "timing": {"entered": entered, "first_step": None, "to_first_step_s": None, "train_seconds": 0.0,
                         "wall_seconds": None, "epochs": 0}, **extra}  # fmt: skip
    timing = record["timing"]

    def on_epoch(r: dict) -> None:
        now = time.time()
        if timing["first_step"] is None:
            timing["first_step"] = now - r["seconds"]
            timing["to_first_step_s"] = timing["first_step"] - entered
        timing["train_seconds"] += r["seconds"]
        timing["wall_seconds"], timing["epochs"] = now - entered, timing["epochs"] + 1
        state = cache(r["state"])  # one snapshot for the best weights and the checkpoint
        record["history"].append({"epoch": r["epoch"], "score": r["score"], **r["validation"]})
        record["epochs_run"] = r["epoch"]
        new_best = r["best_epoch"] == r["epoch"]  # a new best: its weights are the trial's so far
        if new_best:
            record["best_epoch"], record["score"] = r["epoch"], r["score"]
        if world.main:
            log_epoch(tb, kind, r)
            tb.flush()
            if new_best:
                save_head(folder, state()["best_state"], head_meta(r["config"], data, kind, r["validation"], cfg))
            atomic_write_json(folder / TRIAL_FILE, record)
        metrics = {"epoch": r["epoch"], "score": r["score"], "best_score": record["score"],
                   **{f"validation_{k}": v for k, v in kind.logged(r["validation"]).items()}}  # fmt: skip
        report(metrics, state)

    if resume is not None:
        scores = [(h["epoch"], {k: v for k, v in h.items() if k != "epoch"}) for h in resume["history"]]
        history = [{"epoch": epoch, "score": kind.selection(s), **s} for epoch, s in scores]
        record.update(epochs_run=len(history), history=history, best_epoch=resume["best_epoch"],
                      score=history[resume["best_epoch"] - 1]["score"] if resume["best_epoch"] else None)  # fmt: skip
    # Under Tune the last report may end the trial (ASHA, or the last epoch): everything a
    # trial leaves is written in on_epoch, before each report.
    fit_head(cfg, data, kind, on_epoch=on_epoch, resume=resume, world=world)
    if tb is not None:
        tb.close()
    return record


class Rungs:
    """ASHA's stopping rule (one bracket: at epochs grace·4^k a trial stops when its score is below
    the top quarter of those recorded there), counting only trials that had ended when it started:
    ASHA counts every trial recorded so far, so with concurrent trials its stops hang on timing."""

    def __init__(self, max_t: int, grace: int):
        rungs = int(math.log(max_t / grace) / math.log(REDUCTION) + 1)  # as ASHA counts them
        self.at: dict[int, dict[str, float]] = {grace * REDUCTION**k: {} for k in range(rungs)}
        self.ended: set[str] = set()
        self.peers: dict[str, frozenset] = {}

    def start(self, name: str) -> None:
        self.peers[name] = frozenset(self.ended)

    def end(self, name: str, scores: list[float] = ()) -> None:
        """``name`` ended; ``scores`` (one per epoch): a resumed search's replay of an ended trial."""
        for epoch, recorded in self.at.items():
            if epoch <= len(scores):
                recorded[name] = scores[epoch - 1]
        self.ended.add(name)

    def keep(self, name: str, epoch: int, score: float) -> bool:
        """Whether ``name`` goes on after ``score`` at ``epoch`` (recorded at a rung)."""
        import numpy as np

        recorded = self.at.get(epoch)
        if recorded is None or name in recorded:
            return True
        peers = [s for t, s in recorded.items() if t in self.peers.get(name, ())]
        recorded[name] = score
        return not peers or score >= np.nanpercentile(peers, 100 * (1 - 1 / REDUCTION))


def new_record(out: Path, search: SearchConfig, ended: dict[str, dict]) -> dict:
    """The search's record (``ended``: trial folder -> params, status, scores per epoch), written."""
    record = {"search": asdict(search), "trials": ended}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / RECORD, record)
    return record


def ended_trials(out: Path, search: SearchConfig) -> dict[str, dict]:
    """The trials a killed search in ``out`` ended, for its resume: its record read (refused when
    unreadable, or when a setting other than ``RESUME_MAY_CHANGE`` differs from ``search``'s)."""
    path = out / RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        was, trials = record["search"], record["trials"]
        ended = {name: t for name, t in trials.items() if t["status"] == "done" and t["params"] and t["scores"]}
    except FileNotFoundError:
        raise ConfigError(f"--resume: no {RECORD} in {out}, so nothing to resume (a search of an older BERTVision, "
                          "or none): start the search in another folder") from None  # fmt: skip
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise DataError(path, f"unreadable search record ({type(e).__name__}: {e}); the search cannot be resumed: "
                              f"move {out} aside and start it again") from None  # fmt: skip
    now = json.loads(json.dumps(asdict(search)))  # as the record holds it (tuples as lists)
    changed = [f"--{k.replace('_', '-')} {was.get(k)!r} -> {now[k]!r}" for k in now
               if k not in RESUME_MAY_CHANGE and was.get(k) != now[k]]  # fmt: skip
    if changed:
        raise ConfigError(f"--resume: the search in {out} ran with other settings ({'; '.join(changed)}): resume "
                          "it with its own, or start a new search in another folder")  # fmt: skip
    return ended


def finish_search(out: Path, known: set[str]) -> list[dict]:
    """After a search: trial folders its results do not hold (``known``: a killed search's, rerun in
    their place) moved to ``ORPHANS``, then the leaderboard written and returned."""
    orphans = [record.parent for record in sorted(out.glob(f"*/{TRIAL_FILE}")) if record.parent.name not in known]
    for trial in orphans:
        (out / ORPHANS).mkdir(exist_ok=True)
        trial.rename(out / ORPHANS / trial.name)
    if orphans:
        print(f"{len(orphans)} trial folder(s) that a killed search had not ended (the resumed search ran "
              f"trials of its own in their place) moved to {out / ORPHANS}", flush=True)  # fmt: skip
    board = leaderboard(out)
    atomic_write_json(out / "leaderboard.json", board)
    return board


def leaderboard(folder: str | Path) -> list[dict]:
    """Every trial of a search folder (a sub-folder with a trial.json), best score first."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "no such search folder")
    rows = []
    for path in sorted(folder.glob(f"*/{TRIAL_FILE}")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(path, f"not a trial record ({e})") from None
        if record.get("score") is not None:
            rows.append({"trial": str(path.parent), **record})
    if not rows:
        raise DataError(folder, f"no finished epoch of any trial here (no {TRIAL_FILE} with a score)")
    return sorted(rows, key=lambda r: -r["score"])
