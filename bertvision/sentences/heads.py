"""Sentence head kinds: classification or regression on one vector per layer (cls or mean stores)
or on every token (sentence token stores), validated on the examples fine-tuning held out."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from bertvision import store as st
from bertvision.distributed import ONE, World
from bertvision.encoders import length_batches
from bertvision.errors import ConfigError, DataError
from bertvision.heads import HeadData, HeadKind, same_source
from bertvision.metrics import compute_metrics
from bertvision.models.adapter_pooler import AdapterPooler, TokenAdapterPooler
from bertvision.tasks.base import carve_validation, training_subset


def carve_rows(manifest: dict, labels: np.ndarray, fraction: float, seed: int, train_examples: int | None,
               where: Path) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(training rows, validation rows) of a sentence store's train split, carved as fine-tuning
    carves; a store embedded with ``--train-examples`` holds only those rows, and gives the
    positions its manifest recorded when asked for the carve it was made with."""
    subset = manifest.get("extra", {}).get("subset")
    if subset is None:
        tr, va = carve_validation(labels, len(labels), fraction, seed, source=str(where))
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
    scores a task. For MRPC F1 alone rewards predicting the majority class everywhere (F1 0.81
    at 68% accuracy), which F1-only selection picked in practice. NaN counts as the worst."""
    value = float(np.mean(list(scores.values())))
    return -math.inf if math.isnan(value) else value


def softmax_rows(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


class Part(NamedTuple):
    """One part (validation, or an eval split) of a sentence store, in the store's order."""

    states: Any  # in the kind's form (`SentenceHeads.states`)
    labels: np.ndarray
    ids: list[str]
    encoder: np.ndarray | None  # (N, C) float32: the fine-tuned encoder's own outputs, if stored


class SentenceHeads(HeadKind):
    """Classification or regression on one vector per example and layer (cls or mean stores)."""

    family = "sentence"
    module = AdapterPooler
    layout, store, reads = "vectors", "cls or mean", "cls/mean"

    def __init__(self, name: str, probabilities: bool = False):
        self.name = name
        self.probabilities = probabilities  # outputs are logits: ensembles average probabilities

    def num_outputs(self, spec: dict) -> int:
        return len(spec["labels"]) if spec["labels"] else 1

    def load(self, cfg, root: Path, spec: dict, eval_names: list[str]) -> HeadData:
        carve = (cfg.validation_fraction, cfg.validation_seed)
        train, rows, parts = self.parts(root, carve, cfg.train_examples, eval_names)
        return HeadData(spec, train.manifest, self.train_part(train, rows), len(rows), parts)

    def parts(self, root: Path, carve: tuple[float, int], train_examples: int | None, eval_names: list[str]):
        """(STORE/train, its training rows, part -> `Part`): the validation part carved as
        fine-tuning carves it (`carve_rows`), and the labelled eval splits."""
        train = st.load_split(root / "train")  # every shard read is checked (sha256, finite)
        if train.labels is None:
            raise DataError(root / "train", "the train split carries no labels")
        labels, enc = train.labels.numpy(), train.encoder_logits
        tr, va = carve_rows(train.manifest, labels, *carve, train_examples, root / "train")
        parts = {"validation": Part(self.states(train, va), labels[va], [train.ids[i] for i in va],
                                    None if enc is None else enc[va])}  # fmt: skip
        for name in eval_names:
            split = st.load_split(root / name)
            st.check_compatible(split, **same_source(train.manifest))
            if split.labels is not None:
                parts[name] = Part(self.states(split), split.labels.numpy(), split.ids, split.encoder_logits)
        return train, tr, parts

    def states(self, split, rows=None):
        """A part's states, in the form `outputs` reads: (N, L, H) of ``rows`` (default: all)."""
        return split.hidden if rows is None else split.hidden[rows]

    def train_part(self, train, rows):
        """What `batch` draws from: (states, labels) of the training rows."""
        return train.hidden[rows], train.labels[rows]

    def batch(self, train, idx):
        x, y = train
        return x[idx], y[idx]

    def rng(self, seed: int):  # torch's: batches come from torch.randperm
        return torch.Generator().manual_seed(seed)

    def rng_state(self, rng):
        return rng.get_state()

    def set_rng_state(self, rng, state) -> None:
        rng.set_state(state)

    def steps_per_epoch(self, data: HeadData, batch_size: int, world: World = ONE) -> int:
        return math.ceil(data.train_rows / batch_size)

    def batches(self, data: HeadData, batch_size: int, rng, world: World = ONE):
        """One epoch of (inputs..., labels) in a seeded random order; with several ranks, this
        rank's piece of each global batch (a last batch smaller than the ranks is skipped)."""
        for idx in torch.randperm(data.train_rows, generator=rng).split(batch_size):
            if len(idx) >= world.size:
                yield self.batch(data.train, world.piece(idx))

    def loss(self, trained, model, batch, device):
        """The loss of a batch: ``trained`` (the model, or its DDP wrapper) runs the forward."""
        *inputs, y = batch
        return model.loss(trained(*(t.to(device) for t in inputs)), y.to(device))

    def outputs(self, model, states, device=None, batch_size: int = 1024) -> np.ndarray:
        """The head's (N, C) float32 outputs on a part's states."""
        model.eval()
        with torch.inference_mode():
            outs = [model(states[start : start + batch_size].to(device or "cpu")).float().cpu()
                    for start in range(0, len(states), batch_size)]  # fmt: skip
        return torch.cat(outs).numpy()

    def score(self, model, part, data: HeadData, cfg, device, threshold=None) -> tuple[dict, None]:
        states, y = part[0], part[1]  # a `Part`, or (states, labels)
        return compute_metrics(data.spec["metrics"], self.outputs(model, states, device), y), None

    def selection(self, scores: dict) -> float:
        return selection_score(scores)

    def logged(self, scores: dict) -> dict:
        return scores

    def averaged(self, outputs: np.ndarray) -> np.ndarray:
        """What an ensemble averages: probabilities (classification) or predictions (regression)."""
        return softmax_rows(outputs.astype(np.float64)) if self.probabilities else outputs.astype(np.float64)

    def evaluate(self, model, meta: dict, split, store_dir: Path, data_dir: str | None) -> dict:
        if split.labels is None:
            raise DataError(store_dir, "this split carries no labels to score against")
        outputs = self.outputs(model, self.states(split))
        return {"split": split.manifest["split"], "rows": len(split.ids),
                **compute_metrics(meta["task"]["metrics"], outputs, split.labels.numpy())}  # fmt: skip


@dataclass
class TokenRows:
    """A sentence token store in memory (example i: ``lengths[i]`` tokens from ``starts[i]``)."""

    hidden: Any  # torch (sum T, L, H) float16
    segments: Any  # torch (sum T,) int64
    starts: np.ndarray  # (n,) int64
    lengths: np.ndarray  # (n,) int64
    labels: Any = None  # torch (n,) or None

    @classmethod
    def from_split(cls, split, rows: np.ndarray | None = None) -> TokenRows:
        rows = np.arange(len(split.ids)) if rows is None else np.asarray(rows)
        return cls(split.hidden, torch.from_numpy(split.segments.astype(np.int64)), split.row_starts[:-1][rows],
                   np.diff(split.row_starts)[rows], None if split.labels is None else split.labels[rows])  # fmt: skip

    def __len__(self) -> int:
        return len(self.starts)

    def batch(self, idx, device=None):
        """Rows ``idx`` padded to their longest: (B, T, L, H) in the store's dtype (the head
        converts its real tokens), (B, T) mask, (B, T) segments. One gather of every row's
        positions, padding reading token 0 and then zeroed: faster on long pairs than a copy per
        row (docs/BENCHMARKS.md, "Token heads: batches and steps")."""
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


class SentenceTokenHeads(SentenceHeads):
    """Classification or regression on every token of each example (sentence token stores, read
    into memory: up to a few GB for a GLUE train split), pooled by `TokenAdapterPooler`."""

    module = TokenAdapterPooler
    layout, store, reads = "sentences", "sentence token", "token"

    def model_fields(self, data: HeadData) -> dict:
        return {"token_states": True, "num_segments": len(data.spec["text_fields"])}

    def states(self, split, rows=None) -> TokenRows:
        return TokenRows.from_split(split, rows)

    def train_part(self, train, rows) -> TokenRows:
        return TokenRows.from_split(train, rows)  # its labels come along

    def batch(self, rows: TokenRows, idx):
        idx = idx.numpy()
        return (*rows.batch(idx), rows.labels[idx])

    def outputs(self, model, rows: TokenRows, device=None, batch_size: int = 64) -> np.ndarray:
        """The head's (N, C) float32 outputs in row order, batched by length (little padding)."""
        model.eval()
        out = np.empty((len(rows), model.config.num_outputs), dtype=np.float32)
        with torch.inference_mode():
            for idx in length_batches(rows.lengths, batch_size):
                out[idx] = model(*rows.batch(idx, device)).float().cpu().numpy()
        return out
