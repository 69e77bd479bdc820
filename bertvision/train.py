"""Training AdapterPooler heads on stored hidden states: one loop for every head kind (the
store's manifest says which: `bertvision.kinds`). Selection reads only the validation part carved
from train as fine-tuning carved it; dev and test are scored once, with the selected epoch.
Output: config.json, seed-<k>/ (head.safetensors, head_config.json, metrics.json, tb/, span heads'
predictions-<split>.json), summary.json (mean and standard deviation over seeds)."""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bertvision import store as st
from bertvision.config import HeadArchitecture, HeadTrainConfig
from bertvision.distributed import ONE, World
from bertvision.errors import ConfigError, DataError, decode_error, json_error
from bertvision.fingerprint import store_fingerprint
from bertvision.heads import HeadData, same_source
from bertvision.io import atomic_folder, atomic_write_bytes, atomic_write_json
from bertvision.kinds import head_kind, store_kind
from bertvision.metrics import mean_std
from bertvision.models.adapter_pooler import AdapterPoolerConfig
from bertvision.outdir import check_out_dir, claim, previous_run
from bertvision.runtime import (
    adamw,
    check_finite_state,
    check_loss,
    linear_schedule,
    peak_rss_mb,
    pick_device,
    set_seed,
    stepped,
)

HEAD_WEIGHTS, HEAD_CONFIG = "head.safetensors", "head_config.json"


@dataclass
class FitResult:
    """One trained head: the selected epoch's weights (loaded into ``model``) and the history."""

    model: object
    """The head (`AdapterPooler` or `SpanAdapterPooler`) with the selected epoch's weights."""
    config: AdapterPoolerConfig
    state: dict
    best_epoch: int
    history: list[dict]
    """Per epoch: {"epoch", validation metrics...}."""
    epoch_seconds: list[float]

    @property
    def chosen(self) -> dict:
        """The selected epoch's validation scores."""
        return self.history[self.best_epoch - 1]


def fit_head(cfg: HeadTrainConfig, data: HeadData, kind, on_epoch: Callable[[dict], None] | None = None,
             resume: dict | None = None, world: World = ONE) -> FitResult:  # fmt: skip
    """Train one head (``cfg.seeds`` holds one seed) on ``data.train`` (AdamW, warmup and linear
    decay), select the epoch on ``data.parts["validation"]`` (early stopping); reads nothing else.
    ``on_epoch`` gets each epoch's report (below); its ``state()`` is the whole training state
    (`torch.save`-able), and ``resume=state`` continues to the end the uninterrupted run reaches.
    ``world``: this rank of several (DDP); rank 0 scores validation and shares it, so all select
    the same epoch; "dropped" counts the batches left over (all ranks) when the first ran out."""
    import torch
    from tqdm.auto import tqdm

    if len(cfg.seeds) != 1:
        raise ConfigError(f"fit_head trains one head; give one seed (cfg.for_seed(k)), not {cfg.seeds}")
    cfg = cfg.resolved(kind.family)
    seed, opt = cfg.seeds[0], cfg.optim
    world.check_batch(opt.batch_size)
    set_seed(seed)
    device = pick_device(cfg.device)
    m = data.manifest
    config = AdapterPoolerConfig(**asdict(cfg.head), num_hidden_states=m["num_hidden_states"], hidden_size=m["hidden_size"],
                                 num_outputs=kind.num_outputs(data.spec), task_kind=kind.name,
                                 **kind.model_fields(data))  # fmt: skip
    model = kind.module(config).to(device)
    trained = world.wrap(model, device)  # DDP for several ranks; the model itself for one
    total = kind.steps_per_epoch(data, opt.batch_size, world) * opt.epochs
    optimizer = adamw(model, opt.lr, opt.weight_decay)  # no decay on biases, as fine-tuning
    scheduler = linear_schedule(optimizer, round(opt.warmup * total), total)
    rng = kind.rng(seed)
    history, epoch_seconds, best, best_state, best_epoch, since_best, step = [], [], -math.inf, None, 0, 0, 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        kind.set_rng_state(rng, resume["rng"])
        torch.set_rng_state(resume["torch_rng"])
        history, best, best_state = list(resume["history"]), resume["best"], resume["best_state"]
        best_epoch, since_best, step = resume["best_epoch"], resume["since_best"], resume["step"]
        epoch_seconds = list(resume["epoch_seconds"])

    def state() -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": kind.rng_state(rng), "torch_rng": torch.get_rng_state(), "history": list(history), "best": best,
                "best_state": best_state, "best_epoch": best_epoch, "since_best": since_best, "step": step,
                "epoch_seconds": list(epoch_seconds)}  # fmt: skip

    start = len(history) if since_best < opt.patience else opt.epochs  # a resumed run may be done
    for epoch in tqdm(range(start, opt.epochs), desc=f"head seed {seed}", leave=False, disable=None):
        model.train()
        t0, losses, dropped = time.perf_counter(), [], [0]
        batches = kind.batches(data, opt.batch_size, rng, world)
        for batch in batches if world.size == 1 else world.zip_shortest(batches, dropped):
            loss = kind.loss(trained, model, batch, device)
            value = check_loss(loss, step + 1, opt.lr, f"head training (seed {seed}, epoch {epoch + 1})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step < total:
                scheduler.step()
            step += 1
            losses.append(value)
        epoch_seconds.append(time.perf_counter() - t0)
        dropped[0] = world.total(dropped[0])
        scores = kind.score(model, data.parts["validation"], data, cfg, device)[0] if world.main else None
        scores = world.share(scores)  # rank 0's scores on every rank: one selection for all
        history.append({"epoch": epoch + 1, **scores})
        score = kind.selection(scores)
        improved = best_state is None or score > best  # NaN scores (constant outputs) count as worst
        if improved:
            best, best_epoch, since_best = score, epoch + 1, 0
            best_state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        else:
            since_best += 1
        if on_epoch is not None:
            on_epoch({"epoch": epoch + 1, "step": step, "losses": losses, "lr": scheduler.get_last_lr()[0],
                      "validation": scores, "score": score, "best_epoch": best_epoch,
                      "seconds": epoch_seconds[-1], "config": config.to_dict(), "state": state,
                      "dropped": dropped[0]})  # fmt: skip
        if not improved and since_best >= opt.patience:
            break
    check_finite_state(best_state, f"head (seed {seed})")
    model.load_state_dict(best_state)
    return FitResult(model.eval(), config, best_state, best_epoch, history, epoch_seconds)


def train_heads(cfg: HeadTrainConfig, out_dir: str | Path, runner: Callable | None = None,
                settings: dict | None = None) -> dict:  # fmt: skip
    """Train one head per seed (`train_seed`); returns (and writes) the summary. ``runner(seed_cfg,
    out_dir, evals)`` trains a seed elsewhere (Ray Train), so this process never reads the shards;
    ``settings``: what else a finished run must match to be reused (e.g. the number of workers)."""
    out_dir = check_out_dir(out_dir)
    pick_device(cfg.device)  # a bad --device fails before the store is read
    root = Path(cfg.store)
    kind, manifest, spec = store_kind(root)
    cfg = cfg.resolved(kind.family)
    states = manifest["num_hidden_states"]
    if cfg.head.first_layer >= states:  # refused before the folder is touched
        raise ConfigError(f"--first-layer {cfg.head.first_layer}: {root} holds {states} hidden states, 0 to {states - 1}")
    eval_names = list(cfg.eval_splits or (s for s in spec["eval_splits"] if (root / s).is_dir()))
    # Fingerprints from the manifests (cheap): a finished run on the same stores is reused
    # without reading them; every shard read later is checked (sha256, finite).
    used = dict.fromkeys(["train", "validation", *eval_names])  # STORE/validation: spans' own part
    inputs = {name: store_fingerprint(root / name) for name in used if st.has_manifest(root / name)}
    compared = {**asdict(cfg), **(settings or {})}
    with claim(out_dir, "head training"):
        if previous_run(out_dir, compared, "train", inputs, SEED_GLOBS, upgrade=_upgrade_config) is not None:
            return json.loads((out_dir / "summary.json").read_text())

        def write_config(train_rows: int | None, m: dict) -> None:
            store = {k: m.get(k) for k in ("encoder", "checkpoint", "task", "num_hidden_states", "hidden_size",
                                           "selection", "max_length", "rows")}  # fmt: skip
            about = {"train": compared, "kind": kind.name, "inputs": inputs, "train_rows": train_rows, "store": store}
            atomic_write_json(out_dir / "config.json", about)

        if runner is not None:
            write_config(None, manifest)
            runs = [runner(cfg.for_seed(seed), out_dir, eval_names) for seed in stepped(cfg.seeds, "heads", "seed")]
            write_config(runs[0].get("train_rows"), manifest)
            return _write_summary(out_dir, runs, [n for n in eval_names if n in runs[0]], kind.name)
        data = kind.load(cfg, root, spec, eval_names)
        write_config(data.train_rows, data.manifest)
        runs = [train_seed(cfg.for_seed(seed), data, kind, out_dir) for seed in stepped(cfg.seeds, "heads", "seed")]
        return _write_summary(out_dir, runs, data.evals, kind.name)


def _upgrade_config(stored: dict) -> dict:
    """A run's stored config from before ``init``, ``pooling``, ``positions`` or ``train_examples``
    existed, with them at their defaults (what that code did), so its finished runs are reused."""
    stored = {"train_examples": None, **stored}
    if isinstance(stored.get("head"), dict):
        return {**stored, "head": {**asdict(HeadArchitecture()), **stored["head"]}}
    return stored


def train_seed(cfg: HeadTrainConfig, data: HeadData, kind, out_dir: Path, world: World = ONE,
               resume: dict | None = None, report: Callable | None = None, extra: Callable | None = None) -> dict | None:  # fmt: skip
    """One head seed, here or as a rank of a Ray Train run: `fit_head` (each epoch to TensorBoard,
    then ``report``), then on rank 0 the eval splits scored once and ``seed-<k>`` written whole
    with the head, its metrics (and ``extra(fit)``, called on every rank) and events (in
    ``.seed-<k>.tb`` while training, where a resumed worker appends). None on other ranks."""
    from torch.utils.tensorboard import SummaryWriter

    seed = cfg.seeds[0]
    events = out_dir / f".seed-{seed}.tb"
    tb = SummaryWriter(str(events)) if world.main else None

    def on_epoch(r: dict) -> None:
        if tb is not None:
            log_epoch(tb, kind, r)
            tb.flush()
        if report is not None:
            report(r)

    try:
        fit = fit_head(cfg, data, kind, on_epoch=on_epoch, resume=resume, world=world)
        more = extra(fit) if extra is not None else {}
        if not world.main:
            return None
        device, chosen = pick_device(cfg.device), fit.chosen
        result = {
            "seed": seed, "best_epoch": fit.best_epoch, "epochs_run": len(fit.history),
            "validation_history": fit.history, "validation": chosen,
            **({"threshold": chosen["threshold"]} if "threshold" in chosen else {}),
            "epoch_seconds": float(np.mean(fit.epoch_seconds)), "train_seconds": float(np.sum(fit.epoch_seconds)),
            "parameters": fit.model.num_parameters(), "peak_rss_mb": peak_rss_mb(), **more,
        }  # fmt: skip
        with atomic_folder(out_dir / f"seed-{seed}", f"writing head seed {seed} under {out_dir}") as folder:
            for name in data.evals:  # the held-out splits, once, with the selected epoch (and threshold)
                t0 = time.perf_counter()
                scores, preds = kind.score(fit.model, data.parts[name], data, cfg, device, chosen.get("threshold"))
                result[name], result[f"{name}_seconds"] = scores, round(time.perf_counter() - t0, 2)
                if preds is not None:
                    atomic_write_json(folder / f"predictions-{name}.json", preds.predictions(chosen["threshold"]))
                for metric, value in kind.logged(scores).items():
                    tb.add_scalar(f"{name}/{metric}", value, fit.best_epoch)
            tb.close()
            save_head(folder, fit.state, head_meta(fit.config.to_dict(), data, kind, chosen, cfg))
            atomic_write_json(folder / "metrics.json", result)
            shutil.move(str(events), str(folder / "tb"))
        return result
    except BaseException:
        if report is None:  # nothing resumes from these events
            shutil.rmtree(events, ignore_errors=True)
        raise


def log_epoch(tb, kind, report: dict) -> None:
    """One `fit_head` epoch report as TensorBoard scalars (losses, learning rate, validation)."""
    first = report["step"] - len(report["losses"])
    for i, value in enumerate(report["losses"]):
        tb.add_scalar("train/loss", value, first + i + 1)
    tb.add_scalar("train/lr", report["lr"], report["step"])
    for name, value in kind.logged(report["validation"]).items():
        tb.add_scalar(f"validation/{name}", value, report["epoch"])


def head_meta(pooler: dict, data: HeadData, kind, chosen: dict, cfg: HeadTrainConfig) -> dict:
    """head_config.json of a head trained on ``data`` (spans: with the validation threshold)."""
    return {"adapter_pooler": pooler, "task": data.spec, "encoder": data.manifest["encoder"],
            "checkpoint": data.manifest.get("checkpoint"), **kind.config_extras(data, chosen), "train": asdict(cfg)}  # fmt: skip


# What a head run writes besides config.json, metrics.json and summary.json (a killed run's are
# removed before it starts over).
SEED_GLOBS = ("seed-*", ".seed-*.tmp", ".seed-*.tb")  # 2nd: `io.atomic_folder`'s temporary name; 3rd: a seed's TensorBoard events in training


def _write_summary(out_dir: Path, runs: list[dict], evals: list[str], kind: str) -> dict:
    summary = {**summarize(runs, ["validation", *evals]), "kind": kind}
    atomic_write_json(out_dir / "summary.json", summary)
    atomic_write_json(out_dir / "metrics.json", {r["seed"]: {k: r[k] for k in ("validation", *evals) if k in r} for r in runs})
    return summary


def summarize(runs: list[dict], splits: list[str]) -> dict:
    """Mean and sample standard deviation over seeds of every metric of every split."""
    out = {"seeds": [r["seed"] for r in runs], "runs": runs}
    for split in splits:
        metrics = [r[split] for r in runs if split in r]
        if metrics:
            out[split] = {name: mean_std([m[name] for m in metrics]) for name in metrics[0] if name != "epoch"}
    out["epoch_seconds"] = float(np.mean([r["epoch_seconds"] for r in runs]))
    out["train_seconds"] = float(np.sum([r["train_seconds"] for r in runs]))
    return out


def save_head(folder: Path, state: dict, meta: dict) -> None:
    """A trained head's weights and ``head_config.json`` (the weights through bytes: safetensors'
    own file writer makes its files 0600, ignoring the umask)."""
    import safetensors.torch

    atomic_write_bytes(folder / HEAD_WEIGHTS, safetensors.torch.save(state))
    atomic_write_json(folder / HEAD_CONFIG, meta)


def read_head_config(path: str | Path) -> dict:
    """The ``head_config.json`` of a ``seed-<k>`` folder written by 'bertvision train'."""
    cfg_file = Path(path) / HEAD_CONFIG
    if not cfg_file.is_file():
        raise DataError(cfg_file, "head config not found; pass a seed-<k> folder written by 'bertvision train'")
    try:
        meta = json.loads(cfg_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise json_error(cfg_file, e, what="malformed JSON") from e
    except UnicodeDecodeError as e:
        raise decode_error(cfg_file, e) from e
    if not isinstance(meta, dict) or not isinstance(meta.get("adapter_pooler"), dict):
        raise DataError(cfg_file, "no 'adapter_pooler' object: not a head config written by 'bertvision train'")
    return meta


def load_head(path: str | Path, *, family: str | None = None):
    """A trained head of any kind (its module chosen by the config) and its config dict, from a
    ``seed-<k>`` folder; with ``family``, a head of another family is refused. The config's sizes
    are checked against the weights file's tensor shapes (its header) before the head is built."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_head_config(path)
    kind = head_kind(meta)
    if family not in (None, kind.family):
        raise ConfigError(f"{path}: a {kind.family} head, but a {family} head is needed here")
    config, weights = AdapterPoolerConfig.from_dict(meta["adapter_pooler"]), path / HEAD_WEIGHTS
    try:
        with safe_open(str(weights), framework="pt") as f:
            stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # a missing or truncated weights file
        raise DataError(weights, f"cannot load head weights: {e}") from e
    with torch.device("meta"):  # the config's shapes, nothing allocated
        shapes = {k: tuple(v.shape) for k, v in kind.module(config).state_dict().items()}
    wrong = [f"{k} {shapes.get(k, 'absent')} by the config, {stored.get(k, 'absent')} in the weights"
             for k in sorted(shapes.keys() | stored.keys()) if shapes.get(k) != stored.get(k)]  # fmt: skip
    if wrong:
        raise DataError(path / HEAD_CONFIG, f"does not fit {HEAD_WEIGHTS} (edited?): {'; '.join(wrong)}")  # fmt: skip
    model = kind.module(config)
    try:
        model.load_state_dict(load_file(str(weights)))
    except Exception as e:  # changed since, or tensors of another dtype
        raise DataError(weights, f"cannot load head weights: {e}") from e
    return model.eval(), meta


def evaluate_head(head_dir: str | Path, store_dir: str | Path, data_dir: str | None = None) -> dict:
    """Score a saved head on one store split of the head's encoder, checkpoint and shape (span
    heads: with the threshold chosen at training)."""
    model, meta = load_head(head_dir)
    split = st.load_split(store_dir)
    st.check_compatible(split, **same_source({**meta["adapter_pooler"], **meta}))
    kind = head_kind(meta)
    if st.layout_of(split.manifest).name != kind.layout:
        raise ConfigError(f"{store_dir}: not a {kind.store} store; a head on {kind.reads} states needs one")
    return kind.evaluate(model, meta, split, Path(store_dir), data_dir)
