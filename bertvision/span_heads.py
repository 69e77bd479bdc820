"""Span heads on token-level stores, and span ensembles (SQuAD 2.0).

    bertvision train --store runs/squad/emb/e1 --seeds 0 1 2 --out runs/squad/heads/e1
    bertvision ensemble --store runs/squad/emb/e1 --heads runs/squad/heads/e1/seed-* --encoder \\
        --method max --out runs/squad/ensemble/e1-max

Training reads ``STORE/train`` shard by shard (shuffled shards, shuffled within a shard, batches
of windows of similar length, padded per batch and masked), so a store larger than memory
trains too. Selection is honest: every epoch is scored on the validation part (``STORE/
validation`` for the article split; otherwise whole articles carved from ``STORE/train`` with
the seed fine-tuning used), with the no-answer threshold chosen on that part; the best epoch is
kept; then the eval split (``test`` or ``dev``) is scored once with that epoch and threshold, by
the official SQuAD 2.0 scorer.

Ensembles follow the original study: each member's start and end probabilities (softmax over a
window's real tokens) are combined position by position, by their element-wise maximum
(``max``) or their mean (``mean``); the fine-tuned encoder's own logits (stored beside the
hidden states) may be a member. The combined probabilities go through the same post-processing
(best span with end >= start, max over windows, a threshold chosen on validation).

Output of training, per seed: ``seed-<k>/head.safetensors``, ``head_config.json``,
``metrics.json``, ``tb/`` (TensorBoard), ``predictions-<split>.json``; and ``summary.json``
(mean and standard deviation over seeds).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from bertvision.errors import ConfigError, DataError
from bertvision.io import atomic_write_json
from bertvision.spans import evaluate
from bertvision.train import HEAD_WEIGHTS, load_head, save_head

METHODS = ("max", "mean")


@dataclass(frozen=True)
class SpanHeadTrainConfig:
    store: str
    """Token-level store folder holding one sub-folder per split (train, validation, test/dev)."""
    adapter_size: int = 64
    shared: bool = True
    combine: str = "flatten"
    residual: bool = True
    dropout: float = 0.1
    lr: float = 1e-3
    batch_size: int = 32
    """Windows per step."""
    epochs: int = 6
    patience: int = 2
    warmup: float = 0.1
    weight_decay: float = 0.01
    seeds: tuple[int, ...] = (0,)
    max_answer_tokens: int = 30
    validation_fraction: float = 0.1
    """Share of train's articles carved off for selection when the store has no validation split."""
    validation_seed: int = 0
    """Must equal fine-tuning's, so the validation part is articles the encoder never trained on."""
    data_dir: str | None = None
    """Where the task's text lives (contexts and gold answers); default $BERTVISION_DATA."""
    device: str | None = None

    def __post_init__(self):
        for name in ("adapter_size", "batch_size", "epochs", "patience", "max_answer_tokens"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive")
        from bertvision.runtime import check_optimisation

        check_optimisation(self)


# ---------------------------------------------------------------------------------------------
# Windows in memory


@dataclass
class WindowSet:
    """Windows of one part (validation, test...) in memory, one array per window."""

    ids: list[str]
    example_ids: list[str]
    hidden: list  # torch (T, L, H) float16 each
    offsets: list[np.ndarray]  # (T, 2) int32 each
    labels: np.ndarray | None  # (n, 2)
    encoder_logits: list[np.ndarray] | None  # (T, 2) float32 each

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_split(cls, split, keep: set[str] | None = None) -> WindowSet:
        """The windows of a `TokenSplit` (or one shard of it), those of questions in ``keep`` only."""
        rows = [i for i, q in enumerate(split.example_ids) if keep is None or q in keep]
        starts = split.row_starts
        logits = split.encoder_logits
        return cls(
            [split.ids[i] for i in rows],
            [split.example_ids[i] for i in rows],
            [split.hidden[starts[i] : starts[i + 1]] for i in rows],
            [split.offsets[starts[i] : starts[i + 1]] for i in rows],
            None if split.labels is None else split.labels.numpy()[rows] if rows else np.zeros((0, 2), np.int64),
            None if logits is None else [logits[starts[i] : starts[i + 1]] for i in rows],
        )

    def extend(self, other: WindowSet) -> None:
        self.ids += other.ids
        self.example_ids += other.example_ids
        self.hidden += other.hidden
        self.offsets += other.offsets
        if self.labels is not None and other.labels is not None:
            self.labels = np.concatenate([self.labels, other.labels])
        if self.encoder_logits is not None and other.encoder_logits is not None:
            self.encoder_logits += other.encoder_logits


def pad_batch(hidden: Sequence, device=None):
    """Windows (T_i, L, H) -> (B, T_max, L, H) float32 and a (B, T_max) mask of real tokens."""
    import torch

    width = max(len(h) for h in hidden)
    L, H = hidden[0].shape[1:]
    x = torch.zeros((len(hidden), width, L, H), dtype=torch.float32)
    mask = torch.zeros((len(hidden), width), dtype=torch.bool)
    for row, h in enumerate(hidden):
        x[row, : len(h)] = h
        mask[row, : len(h)] = True
    return x.to(device or "cpu"), mask.to(device or "cpu")


def length_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Batches of windows of similar length (sorted, cut); shuffled batch order when ``rng``."""
    if rng is not None:
        order = rng.permutation(len(lengths))
        order = order[np.argsort(-lengths[order], kind="stable")]
    else:
        order = np.argsort(-lengths, kind="stable")
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))] if rng is not None else batches


def head_logits(model, windows: WindowSet, device=None, batch_size: int = 64) -> tuple[list, list]:
    """Start and end logits of every window, (T,) float32 each (padding dropped)."""
    import torch

    lengths = np.array([len(h) for h in windows.hidden])
    starts: list = [None] * len(windows)
    ends: list = [None] * len(windows)
    model.eval()
    with torch.inference_mode():
        for idx in length_batches(lengths, batch_size, None):
            x, mask = pad_batch([windows.hidden[i] for i in idx], device)
            out = model(x, mask).float().cpu().numpy()
            for row, i in enumerate(idx):
                starts[i], ends[i] = out[row, : lengths[i], 0], out[row, : lengths[i], 1]
    return starts, ends


def softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max())
    return z / z.sum()


# ---------------------------------------------------------------------------------------------
# Store + task -> parts


@dataclass
class SpanParts:
    spec: dict
    manifest: dict
    train_path: Path
    train_keep: set[str] | None
    """Question ids of train windows to train on (None: all of STORE/train)."""
    train_windows: int
    """How many windows of STORE/train are trained on."""
    validation: WindowSet
    evals: dict[str, WindowSet]
    questions: dict[str, object]
    """Part name -> SquadSplit (contexts and gold answers) for validation and eval splits."""


def load_parts(store: str | Path, data_dir: str | None, validation_fraction: float, validation_seed: int,
               eval_names: Sequence[str] | None = None) -> SpanParts:  # fmt: skip
    """The train store, the validation windows and eval windows, with their questions' text."""
    from bertvision import store as st
    from bertvision.qa import span_parts
    from bertvision.tasks import get_task

    root = Path(store)
    if not (root / "train").is_dir():
        raise DataError(root, "no 'train' split in this store; run 'bertvision embed' on a span task first")
    manifest = st.read_manifest(root / "train")
    if manifest.get("selection") != "tokens":
        raise ConfigError(f"{root / 'train'}: a {manifest.get('selection')!r} store; span heads need 'tokens'")
    if manifest["status"] != "complete":
        st.load_split(root / "train")  # raises the store's own "incomplete" error
    spec = manifest.get("extra", {}).get("task_spec")
    if not spec:
        raise DataError(root / "train" / "manifest.json", "manifest has no task_spec; re-embed with this version")
    task = get_task(spec["name"], data_dir)
    parts = span_parts(task, validation_fraction, validation_seed)
    questions = {"validation": parts["validation"]}

    def load(name: str, keep: set[str] | None = None) -> WindowSet:
        split = st.load_split(root / name)
        if split.manifest.get("checkpoint") != manifest.get("checkpoint"):
            raise ConfigError(f"{root / name}: made from checkpoint {split.manifest.get('checkpoint')!r}, "
                              f"but train from {manifest.get('checkpoint')!r}")  # fmt: skip
        st.check_compatible(split.manifest, num_hidden_states=manifest["num_hidden_states"],
                            hidden_size=manifest["hidden_size"], encoder=manifest["encoder"])  # fmt: skip
        return WindowSet.from_split(split, keep)

    if (root / "validation").is_dir():
        validation, train_keep = load("validation"), None
        _check_ids(root / "validation", validation.example_ids, parts["validation"])
    else:  # carve whole articles out of STORE/train, as fine-tuning did
        held = {ex.id for ex in parts["validation"].examples}
        validation = None
        for shard in st.iter_token_shards(root / "train"):  # one pass: validation windows out
            piece = WindowSet.from_split(shard, held)
            if validation is None:
                validation = piece
            else:
                validation.extend(piece)
        train_keep = {ex.id for ex in parts["train"].examples}
        _check_ids(root / "train", validation.example_ids, parts["validation"])
    n_train = manifest["rows"] - (len(validation) if train_keep is not None else 0)
    names = list(eval_names) if eval_names else [s for s in spec["eval_splits"] if (root / s).is_dir()]
    evals = {}
    for name in names:
        evals[name] = load(name)
        questions[name] = task.load(name)
        _check_ids(root / name, evals[name].example_ids, questions[name])
    return SpanParts(spec, manifest, root / "train", train_keep, n_train, validation, evals, questions)


def _check_ids(where: Path, window_qids: Sequence[str], split) -> None:
    """The store's windows must cover exactly the questions of the task's part."""
    stored, wanted = set(window_qids), {ex.id for ex in split.examples}
    if stored != wanted:
        extra, missing = sorted(stored - wanted), sorted(wanted - stored)
        raise DataError(where, f"windows do not match the task's {split.split} questions "
                        f"({len(missing)} missing, e.g. {missing[:1]}; {len(extra)} unexpected, e.g. {extra[:1]}); "
                        "was it embedded from other data?")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Training


def _train_batches(parts: SpanParts, batch_size: int, rng: np.random.Generator) -> Iterator[WindowSet]:
    """One epoch of training batches, streamed shard by shard (shuffled)."""
    from bertvision import store as st

    for shard in st.iter_token_shards(parts.train_path, shuffle=True, seed=int(rng.integers(2**31))):
        ws = WindowSet.from_split(shard, parts.train_keep)
        if not len(ws):
            continue
        lengths = np.array([len(h) for h in ws.hidden])
        for idx in length_batches(lengths, batch_size, rng):
            yield WindowSet([ws.ids[i] for i in idx], [], [ws.hidden[i] for i in idx], [], ws.labels[idx], None)


def train_seed(cfg: SpanHeadTrainConfig, seed: int, parts: SpanParts, n_train: int, out_dir: Path) -> dict:
    import torch
    from torch.utils.tensorboard import SummaryWriter

    from bertvision.models.adapter_pooler import AdapterPoolerConfig, SpanAdapterPooler, span_loss
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
    m = parts.manifest
    pooler_cfg = AdapterPoolerConfig(
        num_hidden_states=m["num_hidden_states"], hidden_size=m["hidden_size"], num_outputs=2,
        adapter_size=cfg.adapter_size, shared=cfg.shared, combine=cfg.combine, residual=cfg.residual,
        dropout=cfg.dropout, task_kind="span",
    )  # fmt: skip
    model = SpanAdapterPooler(pooler_cfg).to(device)
    steps_per_epoch = math.ceil(n_train / cfg.batch_size) + 1  # per-shard batching may add a few
    total = steps_per_epoch * cfg.epochs
    optimizer = adamw(model, cfg.lr, cfg.weight_decay)  # no decay on biases, as fine-tuning
    scheduler = linear_schedule(optimizer, round(cfg.warmup * total), total)
    tb = SummaryWriter(str(out_dir / "tb"))
    rng = np.random.default_rng(seed)
    history, best, best_state, best_epoch, since_best, step = [], -math.inf, None, 0, 0, 0
    epoch_seconds, val = [], parts.questions["validation"]
    for epoch in range(cfg.epochs):
        model.train()
        t0 = time.perf_counter()
        for batch in _train_batches(parts, cfg.batch_size, rng):
            x, mask = pad_batch(batch.hidden, device)
            loss = span_loss(model(x, mask), torch.as_tensor(batch.labels, device=device))
            value = check_loss(loss, step + 1, cfg.lr, f"span head training (seed {seed}, epoch {epoch + 1})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step < total:
                scheduler.step()
            step += 1
            tb.add_scalar("train/loss", value, step)
        epoch_seconds.append(time.perf_counter() - t0)
        tb.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
        s, e = head_logits(model, parts.validation, device)
        scores, _, threshold = evaluate(val, parts.validation, s, e, cfg.max_answer_tokens)
        for name in ("exact", "f1", "HasAns_f1", "NoAns_f1"):
            if name in scores:
                tb.add_scalar(f"validation/{name}", scores[name], epoch + 1)
        history.append({"epoch": epoch + 1, **scores})
        if best_state is None or scores["f1"] > best:
            best, best_epoch, since_best = scores["f1"], epoch + 1, 0
            best_state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        else:
            since_best += 1
            if since_best >= cfg.patience:
                break
    check_finite_state(best_state, out_dir / HEAD_WEIGHTS)
    model.load_state_dict(best_state)
    chosen = history[best_epoch - 1]
    result = {
        "seed": seed, "best_epoch": best_epoch, "epochs_run": len(history), "validation_history": history,
        "validation": chosen, "threshold": chosen["threshold"], "epoch_seconds": float(np.mean(epoch_seconds)),
        "train_seconds": float(np.sum(epoch_seconds)), "parameters": model.num_parameters(),
    }  # fmt: skip
    for name, windows in parts.evals.items():
        t0 = time.perf_counter()
        s, e = head_logits(model, windows, device)
        scores, preds, _ = evaluate(parts.questions[name], windows, s, e, cfg.max_answer_tokens, chosen["threshold"])
        result[name], result[f"{name}_seconds"] = scores, round(time.perf_counter() - t0, 2)
        atomic_write_json(out_dir / f"predictions-{name}.json", preds.predictions(chosen["threshold"]))
        for metric in ("exact", "f1"):
            tb.add_scalar(f"{name}/{metric}", scores[metric], best_epoch)
    tb.close()
    save_head(out_dir, best_state, {
        "adapter_pooler": pooler_cfg.to_dict(), "task": parts.spec, "encoder": m["encoder"],
        "checkpoint": m.get("checkpoint"), "selection": "tokens", "threshold": chosen["threshold"],
        "windowing": m.get("extra", {}).get("windowing"), "train": asdict(replace(cfg, seeds=(seed,))),
    })  # fmt: skip
    atomic_write_json(out_dir / "metrics.json", result)
    return result


def train_span_heads(cfg: SpanHeadTrainConfig, out_dir: str | Path) -> dict:
    """Train one span head per seed; returns (and writes) the summary."""
    from bertvision import store as st
    from bertvision.fingerprint import store_fingerprint
    from bertvision.outdir import check_out_dir, claim, previous_run
    from bertvision.runtime import pick_device
    from bertvision.train import SEED_GLOBS, _write_summary, in_seed_folder

    out_dir = check_out_dir(out_dir)
    pick_device(cfg.device)
    root = Path(cfg.store)
    # Fingerprints from the manifests (cheap): a finished run on the same stores is reused
    # without reading the token store; every shard read later is checked (sha256, finite).
    if not (root / "train").is_dir():
        raise DataError(root, "no 'train' split in this store; run 'bertvision embed' on a span task first")
    spec = st.read_manifest(root / "train").get("extra", {}).get("task_spec") or {}
    used = ["train", "validation", *spec.get("eval_splits", ())]  # what load_parts reads
    inputs = {name: store_fingerprint(root / name) for name in used if (root / name / "manifest.json").is_file()}
    with claim(out_dir, "head training"):
        if previous_run(out_dir, asdict(cfg), "train", inputs, SEED_GLOBS) is not None:
            return json.loads((out_dir / "summary.json").read_text())
        parts = load_parts(cfg.store, cfg.data_dir, cfg.validation_fraction, cfg.validation_seed)
        n_train = parts.train_windows
        keys = ("encoder", "checkpoint", "task", "num_hidden_states", "hidden_size", "selection", "max_length", "rows")
        atomic_write_json(out_dir / "config.json", {"train": asdict(cfg), "inputs": inputs, "train_windows": n_train,
                                                    "store": {k: parts.manifest.get(k) for k in keys}})  # fmt: skip
        runs = [in_seed_folder(out_dir, seed, lambda d, seed=seed: train_seed(cfg, seed, parts, n_train, d))
                for seed in cfg.seeds]  # fmt: skip
        return _write_summary(out_dir, runs, list(parts.evals))


# ---------------------------------------------------------------------------------------------
# Ensembles


def member_probs(starts: list, ends: list) -> tuple[list, list]:
    """Per window, softmax over its real tokens of start and of end logits."""
    return [softmax(np.asarray(s, np.float64)) for s in starts], [softmax(np.asarray(e, np.float64)) for e in ends]


def combine(members: list[tuple[list, list]], method: str) -> tuple[list, list]:
    """Element-wise ``max`` or ``mean`` of members' (start probs, end probs), as log-probabilities."""
    if method not in METHODS:
        raise ConfigError(f"--method must be one of {METHODS}, not {method!r}")
    reduce = np.maximum.reduce if method == "max" else (lambda xs: sum(xs) / len(xs))
    n = len(members[0][0])
    starts = [np.log(reduce([m[0][w] for m in members]) + 1e-30) for w in range(n)]
    ends = [np.log(reduce([m[1][w] for m in members]) + 1e-30) for w in range(n)]
    return starts, ends


def ensemble(
    store: str | Path,
    heads: Sequence[str | Path],
    out_dir: str | Path,
    *,
    include_encoder: bool = False,
    methods: Sequence[str] = METHODS,
    data_dir: str | None = None,
    validation_fraction: float = 0.1,
    validation_seed: int = 0,
    max_answer_tokens: int = 30,
    device: str | None = None,
) -> dict:
    """Score each member and their ensembles on validation (thresholds) and eval splits (once)."""
    from bertvision.outdir import check_out_dir, claim
    from bertvision.runtime import pick_device

    out_dir = check_out_dir(out_dir)
    if not heads and not include_encoder:
        raise ConfigError("an ensemble needs members: --heads and/or --encoder")
    if len(heads) + include_encoder < 2:
        raise ConfigError("an ensemble needs at least two members")
    dev = pick_device(device)
    parts = load_parts(store, data_dir, validation_fraction, validation_seed)
    sets = {"validation": parts.validation, **parts.evals}
    logits: dict[str, dict[str, tuple[list, list]]] = {}  # member -> part -> (starts, ends)
    for head in heads:
        model, meta = load_head(head, span=True)
        if meta.get("checkpoint") != parts.manifest.get("checkpoint"):
            raise ConfigError(f"head {head} was trained on checkpoint {meta.get('checkpoint')!r}, "
                              f"the store holds {parts.manifest.get('checkpoint')!r}")  # fmt: skip
        model.to(dev)
        logits[str(head)] = {p: head_logits(model, ws, dev) for p, ws in sets.items()}
    if include_encoder:
        if not parts.manifest.get("encoder_logits"):
            raise ConfigError(f"{parts.train_path}: the store has no encoder logits (embed a question-answering "
                              "checkpoint from 'bertvision finetune' on a span task)")  # fmt: skip
        logits["encoder"] = {p: ([x[:, 0] for x in ws.encoder_logits], [x[:, 1] for x in ws.encoder_logits])
                             for p, ws in sets.items()}  # fmt: skip

    def run(starts_ends: dict[str, tuple[list, list]]) -> dict:
        val_scores, _, thr = evaluate(parts.questions["validation"], parts.validation, *starts_ends["validation"],
                                      max_answer_tokens)  # fmt: skip
        out = {"validation": val_scores, "threshold": thr}
        for name in parts.evals:
            scores, preds, _ = evaluate(parts.questions[name], parts.evals[name], *starts_ends[name],
                                        max_answer_tokens, thr)  # fmt: skip
            out[name], out[f"_predictions_{name}"] = scores, preds.predictions(thr)
        return out

    with claim(out_dir, "ensemble"):
        return _ensemble(logits, run, sets, parts, methods, store, out_dir)


def _ensemble(logits: dict, run, sets: dict, parts: SpanParts, methods: Sequence[str], store, out_dir: Path) -> dict:
    t0 = time.perf_counter()
    result: dict = {"members": {}, "ensembles": {}, "store": str(store)}
    for name, by_part in logits.items():
        result["members"][name] = {k: v for k, v in run(by_part).items() if not k.startswith("_")}
    probs = {name: {p: member_probs(*se) for p, se in by_part.items()} for name, by_part in logits.items()}
    for method in methods:
        combined = {p: combine([probs[m][p] for m in probs], method) for p in sets}
        scored = run(combined)
        for name in parts.evals:
            atomic_write_json(out_dir / f"predictions-{method}-{name}.json", scored.pop(f"_predictions_{name}"))
        result["ensembles"][method] = scored
    result["seconds"] = round(time.perf_counter() - t0, 2)
    atomic_write_json(out_dir / "ensemble.json", result)
    return result


def evaluate_span_head(head_dir: str | Path, store_dir: str | Path, data_dir: str | None = None,
                       max_answer_tokens: int | None = None) -> dict:  # fmt: skip
    """Score a saved span head on one token-store split, with the threshold chosen at training."""
    from bertvision import store as st
    from bertvision.tasks import get_task

    model, meta = load_head(head_dir, span=True)
    data = st.load_split(store_dir)
    if data.manifest.get("selection") != "tokens":
        raise ConfigError(f"{store_dir}: a {data.manifest.get('selection')!r} store; span heads need 'tokens'")
    pooler = meta["adapter_pooler"]
    st.check_compatible(data.manifest, num_hidden_states=pooler["num_hidden_states"],
                        hidden_size=pooler["hidden_size"], encoder=meta["encoder"])  # fmt: skip
    if data.manifest.get("checkpoint") != meta.get("checkpoint"):
        raise ConfigError(f"store {store_dir} was made from checkpoint {data.manifest.get('checkpoint')!r}, "
                          f"but the head was trained on {meta.get('checkpoint')!r}")  # fmt: skip
    split = get_task(meta["task"]["name"], data_dir).load(data.manifest["split"])
    windows = WindowSet.from_split(data)
    _check_ids(Path(store_dir), windows.example_ids, split)
    answer_tokens = max_answer_tokens or meta["train"]["max_answer_tokens"]
    s, e = head_logits(model, windows)
    scores, _, _ = evaluate(split, windows, s, e, answer_tokens, meta["threshold"])
    return {"split": data.manifest["split"], "windows": len(windows), **scores}
