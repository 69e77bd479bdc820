"""Training AdapterPooler heads on stored hidden states, one seed or several.

    bertvision train --store runs/rte/emb/e0.3 --seeds 0 1 2 --out runs/rte/heads/e0.3

reads ``STORE/train`` (and ``STORE/<dev split>``), carves the validation part from train with
the same seeded function fine-tuning used (so the encoder never saw it), trains with AdamW,
warmup and linear decay, keeps the epoch with the best validation task score (the mean of the
task's metrics; early stopping after ``patience`` epochs without improvement), and only then
scores the dev split, once.

Output folder::

    config.json               resolved HeadTrainConfig and the store's manifest summary
    seed-<k>/head.safetensors the best head's weights
    seed-<k>/head_config.json AdapterPoolerConfig + what it was trained on (encoder, store)
    seed-<k>/metrics.json     per-epoch validation, the best epoch, dev, wall times
    seed-<k>/tb/              TensorBoard event files (loss, learning rate, validation metrics)
    summary.json              per seed, and mean / standard deviation over seeds
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from bertvision.errors import ConfigError, DataError
from bertvision.fingerprint import store_fingerprint
from bertvision.io import atomic_folder, atomic_write_bytes, atomic_write_json
from bertvision.outdir import check_out_dir, claim

HEAD_WEIGHTS, HEAD_CONFIG = "head.safetensors", "head_config.json"


@dataclass(frozen=True)
class HeadTrainConfig:
    store: str
    """Store folder holding one sub-folder per split (``train``, ``dev``, ...)."""
    adapter_size: int = 64
    """A: width of the shared adapter."""
    shared: bool = True
    """One adapter shared by every layer (LayerWeightShare); False: one per layer."""
    combine: str = "flatten"
    """``flatten`` (layers x A, then project) or ``scalar_mix`` (softmax layer weights)."""
    residual: bool = True
    """Concatenate the last layer's representation to the head's input."""
    dropout: float = 0.1
    lr: float = 1e-3
    batch_size: int = 64
    epochs: int = 20
    """Maximum epochs; early stopping usually ends sooner."""
    patience: int = 4
    """Stop after this many epochs without a better validation score."""
    warmup: float = 0.1
    weight_decay: float = 0.01
    seeds: tuple[int, ...] = (0,)
    validation_fraction: float = 0.1
    validation_seed: int = 0
    """Must equal the fine-tuning run's, so the validation part is examples it never trained on."""
    device: str | None = None
    eval_splits: tuple[str, ...] | None = None
    """Splits scored once at the end; None: the task's labelled eval splits found in the store."""

    def __post_init__(self):
        for name in ("adapter_size", "batch_size", "epochs", "patience"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive")
        from bertvision.runtime import check_optimisation

        check_optimisation(self)


def _pooler_config(cfg: HeadTrainConfig, manifest: dict, spec: dict):
    from bertvision.models.adapter_pooler import AdapterPoolerConfig

    kind = spec["kind"]
    return AdapterPoolerConfig(
        num_hidden_states=manifest["num_hidden_states"],
        hidden_size=manifest["hidden_size"],
        num_outputs=len(spec["labels"]) if spec["labels"] else 1,
        adapter_size=cfg.adapter_size,
        shared=cfg.shared,
        combine=cfg.combine,
        residual=cfg.residual,
        dropout=cfg.dropout,
        task_kind=kind,
    )


def load_store_splits(cfg: HeadTrainConfig):
    """The task spec, the train store, and the eval stores named by ``cfg``."""
    from bertvision import store as st

    root = Path(cfg.store)
    if not (root / "train").is_dir():
        raise DataError(root, "no 'train' split in this store; run 'bertvision embed' with --splits train ...")
    train = st.load_split(root / "train")
    spec = train.manifest.get("extra", {}).get("task_spec")
    if not spec:
        raise DataError(root / "train" / "manifest.json", "manifest has no task_spec; re-embed with this version")
    if spec["kind"] == "span":
        raise ConfigError("span stores train with the span head (SQuAD), not this sentence-level trainer")
    if train.labels is None:
        raise DataError(root / "train", "the train split carries no labels")
    names = cfg.eval_splits or tuple(s for s in spec["eval_splits"] if (root / s).is_dir())
    evals = {}
    for name in names:
        data = st.load_split(root / name)
        st.check_compatible(data.manifest, num_hidden_states=train.manifest["num_hidden_states"],
                            hidden_size=train.manifest["hidden_size"], encoder=train.manifest["encoder"])  # fmt: skip
        if data.manifest.get("checkpoint") != train.manifest.get("checkpoint"):
            raise ConfigError(f"{root / name}: made from checkpoint {data.manifest.get('checkpoint')!r}, "
                              f"but train from {train.manifest.get('checkpoint')!r}")  # fmt: skip
        evals[name] = data
    return spec, train, evals


def selection_score(scores: dict[str, float]) -> float:
    """What early stopping maximises: the mean of the task's metrics, as GLUE scores a task.

    For MRPC that is (F1 + accuracy) / 2: F1 alone rewards predicting the majority (positive)
    class everywhere (F1 0.81 at 68% accuracy), which F1-only selection picked in practice.
    NaN (constant outputs) counts as the worst score.
    """
    value = float(np.mean(list(scores.values())))
    return -math.inf if math.isnan(value) else value


def predict(model, hidden, batch_size: int = 1024, device=None):
    """Head outputs for stored hidden states (N, L, H), as a float32 numpy array."""
    import torch

    model.eval()
    outs = []
    with torch.inference_mode():
        for start in range(0, len(hidden), batch_size):
            x = hidden[start : start + batch_size].to(device or "cpu")
            outs.append(model(x).float().cpu())
    return torch.cat(outs).numpy()


def train_seed(cfg: HeadTrainConfig, seed: int, spec: dict, train, val_idx, tr_idx, evals, out_dir: Path) -> dict:
    """Train one head with ``seed``; keep the best validation epoch; score eval splits once."""
    import torch
    from torch.utils.tensorboard import SummaryWriter
    from tqdm.auto import tqdm

    from bertvision.metrics import compute_metrics
    from bertvision.models.adapter_pooler import AdapterPooler
    from bertvision.runtime import (
        adamw,
        check_finite_state,
        check_loss,
        linear_schedule,
        pick_device,
        set_seed,
    )

    set_seed(seed)
    device = pick_device(cfg.device)
    pooler_cfg = _pooler_config(cfg, train.manifest, spec)
    model = AdapterPooler(pooler_cfg).to(device)
    x_tr, y_tr = train.hidden[tr_idx], train.labels[tr_idx]
    x_va, y_va = train.hidden[val_idx], train.labels[val_idx].numpy()
    steps_per_epoch = math.ceil(len(x_tr) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    optimizer = adamw(model, cfg.lr, cfg.weight_decay)  # no decay on biases, as fine-tuning
    scheduler = linear_schedule(optimizer, round(cfg.warmup * total), total)
    tb = SummaryWriter(str(out_dir / "tb"))
    gen = torch.Generator().manual_seed(seed)
    history, best, best_state, since_best, step = [], -math.inf, None, 0, 0
    epoch_seconds = []
    for epoch in tqdm(range(cfg.epochs), desc=f"head seed {seed}", leave=False, disable=None):
        model.train()
        t0 = time.perf_counter()
        for idx in torch.randperm(len(x_tr), generator=gen).split(cfg.batch_size):
            loss = model.loss(model(x_tr[idx].to(device)), y_tr[idx].to(device))
            value = check_loss(loss, step + 1, cfg.lr, f"head training (seed {seed}, epoch {epoch + 1})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            tb.add_scalar("train/loss", value, step)
        epoch_seconds.append(time.perf_counter() - t0)
        tb.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
        scores = compute_metrics(spec["metrics"], predict(model, x_va, device=device), y_va)
        for name, value in scores.items():
            tb.add_scalar(f"validation/{name}", value, epoch + 1)
        history.append({"epoch": epoch + 1, **scores})
        score = selection_score(scores)
        if best_state is None or score > best:  # NaN scores (constant outputs) count as worst
            best, since_best = score, 0
            best_state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
            best_epoch = epoch + 1
        else:
            since_best += 1
            if since_best >= cfg.patience:
                break
    tb.flush()
    check_finite_state(best_state, out_dir / HEAD_WEIGHTS)
    model.load_state_dict(best_state)
    # ---- the held-out splits, once, with the selected epoch
    result = {
        "seed": seed, "best_epoch": best_epoch, "epochs_run": len(history), "validation_history": history,
        "validation": history[best_epoch - 1], "epoch_seconds": float(np.mean(epoch_seconds)),
        "train_seconds": float(np.sum(epoch_seconds)), "parameters": model.num_parameters(),
    }  # fmt: skip
    for name, data in evals.items():
        if data.labels is None:
            continue
        result[name] = compute_metrics(spec["metrics"], predict(model, data.hidden, device=device), data.labels.numpy())
        for metric, value in result[name].items():
            tb.add_scalar(f"{name}/{metric}", value, best_epoch)
    tb.close()
    save_head(out_dir, best_state, {
        "adapter_pooler": pooler_cfg.to_dict(), "task": spec, "encoder": train.manifest["encoder"],
        "checkpoint": train.manifest.get("checkpoint"), "selection": train.manifest.get("selection"),
        "train": asdict(replace(cfg, seeds=(seed,))),
    })  # fmt: skip
    atomic_write_json(out_dir / "metrics.json", result)
    return result


def train_heads(cfg: HeadTrainConfig, out_dir: str | Path) -> dict:
    """Train one head per seed in ``cfg.seeds``; returns (and writes) the summary."""
    from bertvision.outdir import previous_run
    from bertvision.runtime import pick_device
    from bertvision.tasks.base import carve_validation

    out_dir = check_out_dir(out_dir)
    pick_device(cfg.device)  # a bad --device fails before the store is read
    spec, train, evals = load_store_splits(cfg)  # every shard read is checked (sha256, finite)
    inputs = {name: store_fingerprint(d.manifest) for name, d in {"train": train, **evals}.items()}
    with claim(out_dir, "head training"):
        if previous_run(out_dir, asdict(cfg), "train", inputs, SEED_GLOBS) is not None:
            return json.loads((out_dir / "summary.json").read_text())
        labels = train.labels.numpy()
        tr_idx, val_idx = carve_validation(labels, len(labels), cfg.validation_fraction, cfg.validation_seed)
        atomic_write_json(out_dir / "config.json", {"train": asdict(cfg), "inputs": inputs,
                                                    "store": _manifest_summary(train.manifest)})  # fmt: skip
        runs = [in_seed_folder(out_dir, seed, lambda d, seed=seed: train_seed(cfg, seed, spec, train, val_idx, tr_idx, evals, d))
                for seed in cfg.seeds]  # fmt: skip
        return _write_summary(out_dir, runs, list(evals))


# What a head run writes besides config.json, metrics.json and summary.json (a killed run's are
# removed before it starts over).
SEED_GLOBS = ("seed-*", ".seed-*.tmp")  # the second: `io.atomic_folder`'s temporary name


def in_seed_folder(out_dir: Path, seed: int, train_fn):
    """Run ``train_fn(folder)`` on a temporary folder that becomes ``seed-<k>`` when it
    returns (`io.atomic_folder`): a seed folder appears whole, and a failed seed (a diverged
    loss, a full disk) leaves no folder behind."""
    with atomic_folder(out_dir / f"seed-{seed}", f"writing head seed {seed} under {out_dir}") as tmp:
        return train_fn(tmp)


def _write_summary(out_dir: Path, runs: list[dict], evals: list[str]) -> dict:
    summary = summarize(runs, ["validation", *evals])
    atomic_write_json(out_dir / "summary.json", summary)
    atomic_write_json(out_dir / "metrics.json", {r["seed"]: {k: r[k] for k in ("validation", *evals) if k in r} for r in runs})
    return summary


def summarize(runs: list[dict], splits: list[str]) -> dict:
    """Mean and sample standard deviation over seeds of every metric of every split."""
    out = {"seeds": [r["seed"] for r in runs], "runs": runs}
    for split in splits:
        metrics = [r[split] for r in runs if split in r]
        if not metrics:
            continue
        names = [k for k in metrics[0] if k != "epoch"]
        out[split] = {
            name: {"mean": float(np.mean([m[name] for m in metrics])),
                   "std": float(np.std([m[name] for m in metrics], ddof=1)) if len(metrics) > 1 else 0.0}
            for name in names
        }  # fmt: skip
    out["epoch_seconds"] = float(np.mean([r["epoch_seconds"] for r in runs]))
    out["train_seconds"] = float(np.sum([r["train_seconds"] for r in runs]))
    return out


def _manifest_summary(manifest: dict) -> dict:
    keys = ("encoder", "checkpoint", "task", "num_hidden_states", "hidden_size", "selection", "max_length", "rows")
    return {k: manifest.get(k) for k in keys}


def save_head(folder: Path, state: dict, meta: dict) -> None:
    """A trained head of any kind: its weights (safetensors; through bytes, since safetensors'
    own file writer makes its files 0600, ignoring the umask) and ``head_config.json`` (the
    AdapterPoolerConfig under "adapter_pooler", the task, encoder, checkpoint, training config)."""
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
        from bertvision.errors import json_error

        raise json_error(cfg_file, e, what="malformed JSON") from e
    except UnicodeDecodeError as e:
        from bertvision.errors import decode_error

        raise decode_error(cfg_file, e) from e
    if not isinstance(meta, dict) or not isinstance(meta.get("adapter_pooler"), dict):
        raise DataError(cfg_file, "no 'adapter_pooler' object: not a head config written by 'bertvision train'")
    return meta


def is_span_head(meta: dict) -> bool:
    """Whether a head config describes a span head (start/end logits per token)."""
    return meta["adapter_pooler"].get("task_kind") == "span"


def load_head(path: str | Path, *, span: bool | None = None):
    """A trained head of any kind and its config dict, from a ``seed-<k>`` folder: an
    `AdapterPooler`, or a `SpanAdapterPooler` where the config's task kind is "span".

    Args:
      span: True or False to require a span head or a sentence head (ConfigError otherwise).
    """
    from safetensors.torch import load_file

    from bertvision.models.adapter_pooler import (
        AdapterPooler,
        AdapterPoolerConfig,
        SpanAdapterPooler,
    )

    path = Path(path)
    meta = read_head_config(path)
    if span is not None and is_span_head(meta) != span:
        want, got = ("a span head", "a sentence head") if span else ("a sentence head", "a span head")
        raise ConfigError(f"{path}: {got}, but {want} is needed here")
    module = SpanAdapterPooler if is_span_head(meta) else AdapterPooler
    model = module(AdapterPoolerConfig.from_dict(meta["adapter_pooler"]))
    try:
        model.load_state_dict(load_file(str(path / HEAD_WEIGHTS)))
    except Exception as e:  # a missing, truncated or mismatched weights file
        raise DataError(path / HEAD_WEIGHTS, f"cannot load head weights: {e}") from e
    return model.eval(), meta


def evaluate_head(head_dir: str | Path, store_dir: str | Path) -> dict:
    """Score a saved head on one store split; the store must match the head's encoder and shape."""
    from bertvision import store as st
    from bertvision.metrics import compute_metrics

    model, meta = load_head(head_dir, span=False)
    data = st.load_split(store_dir)
    pooler = meta["adapter_pooler"]
    st.check_compatible(data, num_hidden_states=pooler["num_hidden_states"], hidden_size=pooler["hidden_size"],
                        encoder=meta["encoder"])  # fmt: skip
    if data.manifest.get("checkpoint") != meta.get("checkpoint"):
        raise ConfigError(f"store {store_dir} was made from checkpoint {data.manifest.get('checkpoint')!r}, "
                          f"but the head was trained on {meta.get('checkpoint')!r}")  # fmt: skip
    if data.labels is None:
        raise DataError(store_dir, "this split carries no labels to score against")
    outputs = predict(model, data.hidden)
    return {"split": data.manifest["split"], "rows": len(data.ids),
            **compute_metrics(meta["task"]["metrics"], outputs, data.labels.numpy())}  # fmt: skip
