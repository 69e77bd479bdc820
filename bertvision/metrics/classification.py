"""Sentence-level metrics as GLUE defines them (scikit-learn, scipy.stats): two 1-D arrays of
equal length, prepared by `bertvision.metrics.compute_metrics`, to a plain float."""

from __future__ import annotations

import warnings

import numpy as np

# scikit-learn and scipy.stats are imported where they are used: together they take about a
# second to import, paid by every command and every Ray worker that loads a task kind, most of
# which never score anything.


def accuracy(predictions: np.ndarray, references: np.ndarray) -> float:
    """Fraction of predictions equal to the reference label."""
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(references, predictions))


def binary_f1(predictions: np.ndarray, references: np.ndarray) -> float:
    """F1 of the positive class 1 (GLUE MRPC and QQP); 0.0, unwarned, when no example is positive."""
    from sklearn.metrics import f1_score

    return float(
        f1_score(references, predictions, pos_label=1, average="binary", zero_division=0.0)
    )


def macro_f1(predictions: np.ndarray, references: np.ndarray) -> float:
    """Unweighted mean of the per-class F1 over the classes seen in either array."""
    from sklearn.metrics import f1_score

    return float(f1_score(references, predictions, average="macro", zero_division=0.0))


def mcc(predictions: np.ndarray, references: np.ndarray) -> float:
    """Matthews correlation coefficient (GLUE CoLA); 0.0 when it is undefined, as in sklearn."""
    from sklearn.metrics import matthews_corrcoef

    with warnings.catch_warnings():
        # sklearn warns when both arrays hold one single label; the 0.0 it returns is the answer.
        warnings.filterwarnings("ignore", message="A single label was found", category=UserWarning)
        return float(matthews_corrcoef(references, predictions))


def pearson(predictions: np.ndarray, references: np.ndarray) -> float:
    """Pearson correlation (GLUE STS-B)."""
    return _correlation("pearsonr", predictions, references)


def spearman(predictions: np.ndarray, references: np.ndarray) -> float:
    """Spearman rank correlation (GLUE STS-B)."""
    return _correlation("spearmanr", predictions, references)


def _correlation(name: str, predictions: np.ndarray, references: np.ndarray) -> float:
    """float('nan'), unwarned, when either array is constant (one example included): the
    correlation is undefined there, and scipy would warn on every call."""
    if any(v.size < 2 or bool(np.all(v == v[0])) for v in (predictions, references)):
        return float("nan")
    from scipy import stats

    return float(getattr(stats, name)(predictions, references).statistic)
