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
    span            tokens            SpanAdapterPooler   start/end CE    validation F1 (threshold there)

Adding a kind (e.g. token-level sentence heads) is one class here with these methods and an
entry in `KINDS`.
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
from bertvision.models.adapter_pooler import AdapterPooler, SpanAdapterPooler, span_loss
from bertvision.span_heads import (
    WindowSet,
    check_ids,
    head_logits,
    load_parts,
    pad_batch,
    train_batches,
)
from bertvision.tasks import get_task
from bertvision.tasks.base import carve_validation


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

    def load(self, cfg, root: Path, spec: dict, eval_names: list[str]) -> HeadData:
        train = st.load_split(root / "train")  # every shard read is checked (sha256, finite)
        if train.labels is None:
            raise DataError(root / "train", "the train split carries no labels")
        labels = train.labels.numpy()
        tr_idx, va_idx = carve_validation(labels, len(labels), cfg.validation_fraction, cfg.validation_seed)
        data = HeadData(spec, train.manifest, (train.hidden[tr_idx], train.labels[tr_idx]), len(tr_idx))
        data.parts["validation"] = (train.hidden[va_idx], labels[va_idx])
        for name in eval_names:
            split = st.load_split(root / name)
            st.check_compatible(split, **same_source(train.manifest))
            if split.labels is not None:
                data.parts[name] = (split.hidden, split.labels.numpy())
        return data

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


class SpanHeads:
    """Start/end logits per token of SQuAD windows (tokens stores), streamed from STORE/train
    shard by shard; selection on validation F1 with the no-answer threshold chosen there."""

    name = "span"
    family = "span"
    module = SpanAdapterPooler

    def num_outputs(self, spec: dict) -> int:
        return 2

    def load(self, cfg, root: Path, spec: dict, eval_names: list[str]) -> HeadData:
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


def store_kind(root: str | Path):
    """(kind, train manifest, task spec) of a store folder, from STORE/train's manifest."""
    root = Path(root)
    if not (root / "train").is_dir():
        raise DataError(root, "no 'train' split in this store; run 'bertvision embed' with --splits train ...")
    manifest = st.read_manifest(root / "train")
    spec = manifest.get("extra", {}).get("task_spec")
    if not spec:
        raise DataError(root / "train" / "manifest.json", "manifest has no task_spec; re-embed with this version")
    kind = KINDS[spec["kind"]]
    tokens = manifest.get("selection") == "tokens"
    if tokens != (kind.family == "span"):
        raise ConfigError(f"{root / 'train'}: a {manifest.get('selection')!r} store of a {spec['kind']} task; "
                          "span heads need 'tokens', sentence heads 'cls' or 'mean'")  # fmt: skip
    return kind, manifest, spec


def head_kind(meta: dict):
    """The kind of a trained head, from its head_config.json (`bertvision.train.read_head_config`)."""
    return KINDS[meta["adapter_pooler"].get("task_kind", "classification")]


def same_source(manifest: dict) -> dict:
    """`store.check_compatible` arguments asking for the encoder, checkpoint and shape that
    ``manifest`` (a train split's, or a head's) records."""
    return {"num_hidden_states": manifest["num_hidden_states"], "hidden_size": manifest["hidden_size"],
            "encoder": manifest["encoder"], "checkpoint": manifest.get("checkpoint")}  # fmt: skip
