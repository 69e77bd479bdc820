"""The head kinds: what differs between training a head for sentence classification, sentence
regression and SQuAD spans, and nothing else.

Each kind supplies its data (reading the store's parts), its model (`AdapterPooler` or
`SpanAdapterPooler`), the batches (and their random generator, whose state a resumed trial
restores), the loss of a batch, scoring a part, and the selection metric early stopping
maximises. The training loop (`bertvision.train.fit_head`), saving and loading, the
seed folders and the summary are one code for every kind. A stage finds the kind from the
store's manifest (`store_kind`) or a head's config (`head_kind`), never from text.

    kind            store selection   model               loss            selection metric
    classification  cls / mean        AdapterPooler       cross-entropy   mean of the task's metrics
    regression      cls / mean        AdapterPooler       MSE             mean of the task's metrics
    classification  tokens (sentences) TokenAdapterPooler  cross-entropy  mean of the task's metrics
    regression      tokens (sentences) TokenAdapterPooler  MSE            mean of the task's metrics
    span            tokens (windows)  SpanAdapterPooler   start/end CE    validation F1 (threshold there)

Sentence heads on token states (`SentenceTokenHeads`, in `TOKEN_KINDS`) share the task kind's
name, loss and metric with the cls/mean ones; a store's ``token_layout`` or a head config's
``token_states`` picks them. Adding a kind is one class here with these methods and an entry in
`KINDS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bertvision import spans
from bertvision import store as st
from bertvision.distributed import ONE, World
from bertvision.errors import ConfigError, DataError
from bertvision.metrics import compute_metrics
from bertvision.models.adapter_pooler import (
    AdapterPooler,
    SpanAdapterPooler,
    TokenAdapterPooler,
    span_loss,
)
from bertvision.span_heads import (
    WindowSet,
    check_ids,
    head_logits,
    load_parts,
    pad_batch,
    train_batches,
)
from bertvision.tasks import get_task
from bertvision.tasks.base import carve_validation, training_subset


@dataclass
class HeadData:
    """What a head trains and is scored on, in its kind's own form. ``parts`` holds
    "validation" (selection) and the eval splits; `bertvision.train.fit_head` reads only
    ``train`` and ``parts["validation"]``."""

    spec: dict
    """The task spec recorded in the store's manifest."""
    manifest: dict
    """The train split's manifest (encoder, checkpoint, shapes)."""
    train: Any
    train_rows: int
    """Examples (span stores: windows) trained on."""
    parts: dict[str, Any] = field(default_factory=dict)

    @property
    def evals(self) -> list[str]:
        return [p for p in self.parts if p != "validation"]


def carve_rows(manifest: dict, labels: np.ndarray, fraction: float, seed: int, train_examples: int | None,
               where: Path) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(training rows, validation rows) of a sentence store's train split: carved as fine-tuning
    carves (`carve_validation`, then `training_subset` for ``train_examples``), or, for a store
    embedded with ``--train-examples`` (which holds only those rows), the positions its
    manifest recorded, when the carve asked for is the one it was made with."""
    subset = manifest.get("extra", {}).get("subset")
    if subset is None:
        tr, va = carve_validation(labels, len(labels), fraction, seed)
        return training_subset(tr, train_examples, seed), va
    made = (subset["validation_fraction"], subset["validation_seed"])
    if made != (fraction, seed) or train_examples not in (None, subset["train_examples"]):
        raise ConfigError(f"{where}: the store holds only the validation part and {subset['train_examples']} training "
                          f"examples of {subset['of_rows']} (embedded with --train-examples {subset['train_examples']}, "
                          f"--validation-fraction {made[0]}, --validation-seed {made[1]}); train with those "
                          "settings, or embed the whole split")  # fmt: skip
    return np.asarray(subset["train"], dtype=np.int64), np.asarray(subset["validation"], dtype=np.int64)


def selection_score(scores: dict[str, float]) -> float:
    """What sentence heads' early stopping maximises: the mean of the task's metrics, as GLUE
    scores a task.

    For MRPC that is (F1 + accuracy) / 2: F1 alone rewards predicting the majority (positive)
    class everywhere (F1 0.81 at 68% accuracy), which F1-only selection picked in practice.
    NaN (constant outputs) counts as the worst score.
    """
    value = float(np.mean(list(scores.values())))
    return -math.inf if math.isnan(value) else value


def predict(model, hidden, batch_size: int = 1024, device=None) -> np.ndarray:
    """Sentence head outputs for stored hidden states (N, L, H), as a float32 numpy array."""
    import torch

    model.eval()
    outs = []
    with torch.inference_mode():
        for start in range(0, len(hidden), batch_size):
            x = hidden[start : start + batch_size].to(device or "cpu")
            outs.append(model(x).float().cpu())
    return torch.cat(outs).numpy()


class SentenceHeads:
    """Classification or regression on one vector per example and layer (cls or mean stores).
    The validation part is carved from STORE/train with fine-tuning's seeded function."""

    family = "sentence"
    module = AdapterPooler

    def __init__(self, name: str):
        self.name = name

    def num_outputs(self, spec: dict) -> int:
        return len(spec["labels"]) if spec["labels"] else 1

    def model_fields(self, data: HeadData) -> dict:
        """What the store adds to the head's config beyond its shape (`AdapterPoolerConfig`)."""
        return {}

    def outputs(self, model, part, device=None) -> np.ndarray:
        """The head's (N, C) outputs on a part's states (an ensemble member's)."""
        return predict(model, part, device=device)

    def load(self, cfg, root: Path, spec: dict, eval_names: list[str]) -> HeadData:
        train = st.load_split(root / "train")  # every shard read is checked (sha256, finite)
        if train.labels is None:
            raise DataError(root / "train", "the train split carries no labels")
        labels = train.labels.numpy()
        tr_idx, va_idx = carve_rows(train.manifest, labels, cfg.validation_fraction, cfg.validation_seed,
                                    cfg.train_examples, root / "train")  # fmt: skip
        data = HeadData(spec, train.manifest, self.train_part(train, tr_idx), len(tr_idx))
        data.parts["validation"] = (self.states(train, va_idx), labels[va_idx])
        for name in eval_names:
            split = st.load_split(root / name)
            st.check_compatible(split, **same_source(train.manifest))
            if split.labels is not None:
                data.parts[name] = (self.states(split), split.labels.numpy())
        return data

    def states(self, split, rows=None):
        """The states a part is scored on: (N, L, H) of ``rows`` (default: all) of a split."""
        return split.hidden if rows is None else split.hidden[rows]

    def train_part(self, train, rows):
        """What `batches` draws from: (states, labels) of the training rows."""
        return train.hidden[rows], train.labels[rows]

    def rng(self, seed: int):
        import torch

        return torch.Generator().manual_seed(seed)

    def rng_state(self, rng):
        return rng.get_state()

    def set_rng_state(self, rng, state) -> None:
        rng.set_state(state)

    def steps_per_epoch(self, data: HeadData, batch_size: int, world: World = ONE) -> int:
        return math.ceil(data.train_rows / batch_size)

    def batches(self, data: HeadData, batch_size: int, rng, world: World = ONE):
        """One epoch of (states, labels) batches in a seeded random order; with several ranks,
        this rank's piece of each global batch (a last batch smaller than the ranks is skipped)."""
        import torch

        x, y = data.train
        for idx in torch.randperm(len(x), generator=rng).split(batch_size):
            if len(idx) < world.size:
                continue
            idx = world.piece(idx)
            yield x[idx], y[idx]

    def loss(self, trained, model, batch, device):
        """The loss of a batch: ``trained`` (the model, or its DDP wrapper) runs the forward."""
        x, y = batch
        return model.loss(trained(x.to(device)), y.to(device))

    def score(self, model, part, data: HeadData, cfg, device, threshold=None) -> tuple[dict, None]:
        x, y = part
        return compute_metrics(data.spec["metrics"], predict(model, x, device=device), y), None

    def selection(self, scores: dict) -> float:
        return selection_score(scores)

    def logged(self, scores: dict) -> dict:
        return scores

    def head_meta(self, data: HeadData, chosen: dict) -> dict:
        return {"selection": data.manifest.get("selection")}

    def evaluate(self, model, meta: dict, split, store_dir: Path, data_dir: str | None) -> dict:
        if split.labels is None:
            raise DataError(store_dir, "this split carries no labels to score against")
        outputs = predict(model, split.hidden)
        return {"split": split.manifest["split"], "rows": len(split.ids),
                **compute_metrics(meta["task"]["metrics"], outputs, split.labels.numpy())}  # fmt: skip


@dataclass
class TokenRows:
    """Examples of a sentence token store in memory (a `TokenSplit`, or rows of one): example
    i's tokens are ``hidden[starts[i]:starts[i] + lengths[i]]``."""

    hidden: Any  # torch (sum T, L, H) float16
    segments: Any  # torch (sum T,) int64
    starts: np.ndarray  # (n,) int64
    lengths: np.ndarray  # (n,) int64
    labels: Any = None  # torch (n,) or None

    @classmethod
    def from_split(cls, split, rows: np.ndarray | None = None) -> TokenRows:
        import torch

        rows = np.arange(len(split.ids)) if rows is None else np.asarray(rows)
        return cls(split.hidden, torch.from_numpy(split.segments.astype(np.int64)), split.row_starts[:-1][rows],
                   np.diff(split.row_starts)[rows], None if split.labels is None else split.labels[rows])  # fmt: skip

    def __len__(self) -> int:
        return len(self.starts)

    def batch(self, idx, device=None):
        """Rows ``idx`` padded to their longest: (B, T, L, H) in the store's dtype (float16; the
        head converts its real tokens), (B, T) mask, (B, T) segments.

        One gather (index_select) of every row's positions, padding reading token 0 and then
        zeroed, instead of a copy per row: faster on long pairs (RTE), as fast on short sentences
        (docs/BENCHMARKS.md, "Token heads: batches and steps")."""
        import torch

        idx = np.asarray(idx)
        lengths = self.lengths[idx]  # (B,)
        positions = np.arange(int(lengths.max()))  # (T,)
        real = positions[None, :] < lengths[:, None]  # (B, T)
        flat = torch.from_numpy(np.where(real, self.starts[idx][:, None] + positions[None, :], 0))  # (B, T)
        mask = torch.from_numpy(real)
        x = self.hidden.index_select(0, flat.flatten()).view(*flat.shape, *self.hidden.shape[1:])  # (B, T, L, H)
        x.masked_fill_(~mask[..., None, None], 0.0)
        seg = self.segments[flat].masked_fill_(~mask, 0)  # (B, T)
        return x.to(device or "cpu"), mask.to(device or "cpu"), seg.to(device or "cpu")


def predict_tokens(model, rows: TokenRows, batch_size: int = 64, device=None) -> np.ndarray:
    """A token head's outputs for every row, (N, C) float32 in row order (batched by length)."""
    import torch

    model.eval()
    out = np.empty((len(rows), model.config.num_outputs), dtype=np.float32)
    order = np.argsort(-rows.lengths, kind="stable")  # similar lengths together: little padding
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = model(*rows.batch(idx, device)).float().cpu().numpy()
    return out


class SentenceTokenHeads(SentenceHeads):
    """Classification or regression on every token of each example (sentence token stores):
    `TokenAdapterPooler` pools the tokens (mean, attention, or the original's flatten). The
    validation part is carved from STORE/train as for cls/mean stores (the same examples). The
    store is read into memory (a GLUE train split of the bundled encoder: up to a few GB)."""

    module = TokenAdapterPooler

    def model_fields(self, data: HeadData) -> dict:
        return {"token_states": True, "num_segments": len(data.spec["text_fields"])}

    def outputs(self, model, part, device=None) -> np.ndarray:
        return predict_tokens(model, part, device=device)

    def states(self, split, rows=None) -> TokenRows:
        return TokenRows.from_split(split, rows)

    def train_part(self, train, rows) -> TokenRows:
        return TokenRows.from_split(train, rows)  # its labels come along

    def batches(self, data: HeadData, batch_size: int, rng, world: World = ONE):
        """One epoch of padded (tokens, mask, segments, labels) batches in a seeded random order;
        with several ranks, this rank's piece of each global batch."""
        import torch

        rows = data.train
        for idx in torch.randperm(len(rows), generator=rng).split(batch_size):
            if len(idx) < world.size:
                continue
            idx = world.piece(idx).numpy()
            yield (*rows.batch(idx), rows.labels[idx])

    def loss(self, trained, model, batch, device):
        x, mask, seg, y = batch
        return model.loss(trained(x.to(device), mask.to(device), seg.to(device)), y.to(device))

    def score(self, model, part, data: HeadData, cfg, device, threshold=None) -> tuple[dict, None]:
        rows, y = part
        return compute_metrics(data.spec["metrics"], predict_tokens(model, rows, device=device), y), None

    def head_meta(self, data: HeadData, chosen: dict) -> dict:
        return {"selection": "tokens"}

    def evaluate(self, model, meta: dict, split, store_dir: Path, data_dir: str | None) -> dict:
        if split.labels is None:
            raise DataError(store_dir, "this split carries no labels to score against")
        if getattr(split, "segments", None) is None:
            raise ConfigError(f"{store_dir}: not a sentence token store; this head reads every token of a sentence")
        outputs = predict_tokens(model, TokenRows.from_split(split))
        return {"split": split.manifest["split"], "rows": len(split.ids),
                **compute_metrics(meta["task"]["metrics"], outputs, split.labels.numpy())}  # fmt: skip


class SpanHeads:
    """Start/end logits per token of SQuAD windows (tokens stores), streamed from STORE/train
    shard by shard; selection on validation F1 with the no-answer threshold chosen there."""

    name = "span"
    family = "span"
    module = SpanAdapterPooler

    def num_outputs(self, spec: dict) -> int:
        return 2

    def model_fields(self, data: HeadData) -> dict:
        return {}

    def load(self, cfg, root: Path, spec: dict, eval_names: list[str]) -> HeadData:
        if cfg.train_examples is not None:
            raise ConfigError(f"{root}: --train-examples is for sentence stores; span heads train on every window")
        parts = load_parts(root, cfg.data_dir, cfg.validation_fraction, cfg.validation_seed, eval_names)
        data = HeadData(parts.spec, parts.manifest, parts, parts.train_windows)
        for name in ("validation", *parts.evals):
            data.parts[name] = (parts.validation if name == "validation" else parts.evals[name], parts.questions[name])
        return data

    def rng(self, seed: int):
        return np.random.default_rng(seed)

    def rng_state(self, rng) -> dict:
        return rng.bit_generator.state

    def set_rng_state(self, rng, state: dict) -> None:
        rng.bit_generator.state = state

    def steps_per_epoch(self, data: HeadData, batch_size: int, world: World = ONE) -> int:
        shards = len(data.manifest["shards"])
        if shards < world.size:
            raise ConfigError(f"{data.train.train_path}: {shards} shard(s) for {world.size} workers; each "
                              "worker reads shards of its own: use fewer workers (or re-embed with smaller "
                              "--shard-rows)")  # fmt: skip
        # Per-shard batching may add a few. With several ranks, each holds about rows / ranks
        # windows in batches of batch_size / ranks: the same count.
        return math.ceil(data.train_rows / batch_size) + 1

    def batches(self, data: HeadData, batch_size: int, rng, world: World = ONE):
        return train_batches(data.train, batch_size, rng, world)

    def loss(self, trained, model, batch: WindowSet, device):
        import torch

        x, mask = pad_batch(batch.hidden, device)
        return span_loss(trained(x, mask), torch.as_tensor(batch.labels, device=device))

    def score(self, model, part, data: HeadData, cfg, device, threshold=None):
        windows, questions = part
        s, e = head_logits(model, windows, device)
        scores, preds, _ = spans.evaluate(questions, windows, s, e, cfg.max_answer_tokens, threshold)
        return scores, preds

    def selection(self, scores: dict) -> float:
        return scores["f1"]

    def logged(self, scores: dict) -> dict:
        return {k: scores[k] for k in ("exact", "f1", "HasAns_f1", "NoAns_f1") if k in scores}

    def head_meta(self, data: HeadData, chosen: dict) -> dict:
        return {"selection": "tokens", "threshold": chosen["threshold"],
                "windowing": data.manifest.get("extra", {}).get("windowing")}  # fmt: skip

    def evaluate(self, model, meta: dict, split, store_dir: Path, data_dir: str | None) -> dict:
        if split.manifest.get("selection") != "tokens":
            raise ConfigError(f"{store_dir}: a {split.manifest.get('selection')!r} store; span heads need 'tokens'")
        questions = get_task(meta["task"]["name"], data_dir).load(split.manifest["split"])
        windows = WindowSet.from_split(split)
        check_ids(Path(store_dir), windows.example_ids, questions)
        s, e = head_logits(model, windows)
        scores, _, _ = spans.evaluate(questions, windows, s, e, meta["train"]["max_answer_tokens"], meta["threshold"])
        return {"split": split.manifest["split"], "windows": len(windows), **scores}


KINDS = {"classification": SentenceHeads("classification"), "regression": SentenceHeads("regression"),
         "span": SpanHeads()}  # fmt: skip
"""Task kind (the task spec's ``kind``, the head config's ``task_kind``) -> head kind."""
TOKEN_KINDS = {"classification": SentenceTokenHeads("classification"),
               "regression": SentenceTokenHeads("regression")}  # fmt: skip
"""Sentence task kind -> the head kind on a sentence token store."""


def store_kind(root: str | Path):
    """(kind, train manifest, task spec) of a store folder, from STORE/train's manifest."""
    root = Path(root)
    if not (root / "train").is_dir():
        raise DataError(root, "no 'train' split in this store; run 'bertvision embed' with --splits train ...")
    manifest = st.read_manifest(root / "train")
    spec = manifest.get("extra", {}).get("task_spec")
    if not spec:
        raise DataError(st.manifest_path(root / "train"), "manifest has no task_spec; re-embed with this version")
    sentence_tokens = manifest.get("token_layout") == "sentences"
    kind = TOKEN_KINDS[spec["kind"]] if sentence_tokens and spec["kind"] in TOKEN_KINDS else KINDS[spec["kind"]]
    windows = manifest.get("selection") == "tokens" and not sentence_tokens
    if windows != (kind.family == "span"):
        raise ConfigError(f"{root / 'train'}: a {manifest.get('selection')!r} store of a {spec['kind']} task; "
                          "span heads need windows of tokens, sentence heads 'cls', 'mean' or sentence tokens")  # fmt: skip
    return kind, manifest, spec


def head_kind(meta: dict):
    """The kind of a trained head, from its head_config.json (`bertvision.train.read_head_config`)."""
    config = meta["adapter_pooler"]
    task_kind = config.get("task_kind", "classification")
    return TOKEN_KINDS[task_kind] if config.get("token_states") else KINDS[task_kind]


def same_source(manifest: dict) -> dict:
    """`store.check_compatible` arguments asking for the encoder, checkpoint and shape that
    ``manifest`` (a train split's, or a head's) records."""
    return {"num_hidden_states": manifest["num_hidden_states"], "hidden_size": manifest["hidden_size"],
            "encoder": manifest["encoder"], "checkpoint": manifest.get("checkpoint")}  # fmt: skip
