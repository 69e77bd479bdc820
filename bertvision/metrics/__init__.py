"""Sentence-level metrics by name (`METRICS`), computed on raw model outputs by
`compute_metrics`; the first name selects models (`main_metric`). SQuAD 2.0: `squad_v2`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from bertvision.errors import ConfigError
from bertvision.metrics.classification import accuracy, binary_f1, macro_f1, mcc, pearson, spearman

__all__ = ["METRICS", "compute_metrics", "main_metric", "mean_std"]

METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy,
    "f1": binary_f1,
    "mcc": mcc,
    "pearson": pearson,
    "spearman": spearman,
    "macro_f1": macro_f1,
}


def main_metric(names: Sequence[str]) -> str:
    """The metric used for model selection: the first of `names`."""
    if not names:
        raise ConfigError("metrics: name at least one metric")
    return names[0]


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for one value): how every run reports a score over
    its seeds."""
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}


def compute_metrics(names: Sequence[str], predictions, references) -> dict[str, float]:
    """{name: float} for every metric in `names`, in that order. ``predictions``: class ids (N,),
    logits or probabilities (N, C) (argmax taken), or regression outputs (N,) or (N, 1)."""
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ConfigError(
            f"metrics: unknown metric(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(METRICS)}"
        )
    preds, refs = _prepare(predictions, references)
    return {name: float(METRICS[name](preds, refs)) for name in names}


def _prepare(predictions, references) -> tuple[np.ndarray, np.ndarray]:
    """Turn model outputs into 1-D predictions and check them against the references."""
    preds, refs = np.asarray(predictions), np.asarray(references)
    if preds.ndim == 2 and preds.shape[1] > 0:
        # One column is a regression output; several are per-class scores.
        preds = preds[:, 0] if preds.shape[1] == 1 else preds.argmax(axis=1)
    if preds.ndim != 1:
        raise ValueError(f"predictions must have shape (N,), (N, 1) or (N, C), not {preds.shape}")
    if refs.ndim != 1:
        raise ValueError(f"references must have shape (N,), not {refs.shape}")
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} references; they must match")
    if len(refs) == 0:
        raise ValueError("cannot compute metrics on empty predictions and references")
    return preds, refs
