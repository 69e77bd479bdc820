"""Sentence-level metrics, with the definitions GLUE uses (scikit-learn and scipy.stats).

Each function takes two 1-D arrays of equal length, `predictions` and `references`, already
prepared by `bertvision.metrics.compute_metrics` (class ids, or floats for regression), and
returns a plain Python float.
"""

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
    """F1 of the positive class 1 (GLUE MRPC and QQP).

    Returns 0.0 without a warning when no example is positive in either array.
    """
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
    """Pearson correlation (GLUE STS-B).

    Returns float('nan'), without a warning, when either array is constant (this includes a
    single example): the correlation is undefined there, and scipy would warn on every call.
    """
    if _is_constant(predictions) or _is_constant(references):
        return float("nan")
    from scipy import stats

    return float(stats.pearsonr(predictions, references).statistic)


def spearman(predictions: np.ndarray, references: np.ndarray) -> float:
    """Spearman rank correlation (GLUE STS-B); float('nan') when either array is constant."""
    if _is_constant(predictions) or _is_constant(references):
        return float("nan")
    from scipy import stats

    return float(stats.spearmanr(predictions, references).statistic)


def _is_constant(values: np.ndarray) -> bool:
    # Length 0 or 1 counts as constant: no correlation can be computed from it.
    return values.size < 2 or bool(np.all(values == values[0]))
