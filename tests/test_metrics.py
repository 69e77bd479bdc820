"""Sentence-level metrics: hand-worked values, and agreement with scikit-learn and scipy."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from bertvision.errors import ConfigError
from bertvision.metrics import METRICS, compute_metrics, main_metric

# A small binary case, used by several hand-worked tests:
#   index:       0  1  2  3  4
#   prediction:  1  0  1  1  0
#   reference:   1  1  1  0  0
# TP = 2 (indices 0, 2), FN = 1 (index 1), FP = 1 (index 3), TN = 1 (index 4).
PREDS = [1, 0, 1, 1, 0]
REFS = [1, 1, 1, 0, 0]


def test_registry_has_the_glue_metrics():
    assert set(METRICS) == {"accuracy", "f1", "mcc", "pearson", "spearman", "macro_f1"}


def test_accuracy_by_hand():
    # Indices 0, 2 and 4 are right: 3 of 5.
    assert compute_metrics(["accuracy"], PREDS, REFS) == {"accuracy": pytest.approx(0.6)}


def test_binary_f1_by_hand():
    # precision = TP / (TP + FP) = 2/3, recall = TP / (TP + FN) = 2/3, so F1 = 2/3.
    assert compute_metrics(["f1"], PREDS, REFS)["f1"] == pytest.approx(2 / 3)


def test_binary_f1_is_for_class_one():
    # Swapping the labels: class 1 is now predicted at 1, 4 and gold at 3, 4.
    # TP = 1 (index 4), FP = 1 (index 1), FN = 1 (index 3): precision = recall = F1 = 1/2.
    preds = [1 - p for p in PREDS]
    refs = [1 - r for r in REFS]
    assert compute_metrics(["f1"], preds, refs)["f1"] == pytest.approx(0.5)


def test_mcc_by_hand():
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (2 - 1) / sqrt(3*3*2*2) = 1/6.
    assert compute_metrics(["mcc"], PREDS, REFS)["mcc"] == pytest.approx(1 / 6)


def test_macro_f1_by_hand():
    # class 0: predicted at 0, 5; gold at 0, 5                -> F1 = 1
    # class 1: predicted at 1, 4; gold at 1, 2: TP 1, FP 1, FN 1 -> F1 = 1/2
    # class 2: predicted at 2, 3; gold at 3, 4: TP 1, FP 1, FN 1 -> F1 = 1/2
    # mean = (1 + 1/2 + 1/2) / 3 = 2/3
    preds = [0, 1, 2, 2, 1, 0]
    refs = [0, 1, 1, 2, 2, 0]
    assert compute_metrics(["macro_f1"], preds, refs)["macro_f1"] == pytest.approx(2 / 3)


def test_pearson_by_hand():
    # x = 1, 2, 3 (mean 2): deviations -1, 0, 1; sum of squares 2.
    # y = 1, 2, 4 (mean 7/3): deviations -4/3, -1/3, 5/3; sum of squares 42/9 = 14/3.
    # sum of products = 4/3 + 0 + 5/3 = 3; r = 3 / sqrt(2 * 14/3) = sqrt(27/28).
    result = compute_metrics(["pearson"], np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))
    assert result["pearson"] == pytest.approx(math.sqrt(27 / 28))


def test_spearman_by_hand():
    # Ranks of y = 10, 30, 20, 40 are 1, 3, 2, 4; x is already ranked 1..4.
    # d = 0, -1, 1, 0, sum d^2 = 2; rho = 1 - 6*2 / (4 * (16 - 1)) = 1 - 12/60 = 0.8.
    result = compute_metrics(["spearman"], [1.0, 2.0, 3.0, 4.0], [10.0, 30.0, 20.0, 40.0])
    assert result["spearman"] == pytest.approx(0.8)


def test_argmax_of_logits():
    # Row-wise argmax: 1, 0, 2 against gold 1, 0, 1 -> accuracy 2/3.
    logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5], [0.0, 0.2, 0.9]])
    assert compute_metrics(["accuracy"], logits, [1, 0, 1])["accuracy"] == pytest.approx(2 / 3)


def test_regression_column_is_squeezed():
    preds = np.array([[1.0], [2.0], [3.0]])
    flat = compute_metrics(["pearson", "spearman"], preds.ravel(), [1.0, 2.0, 4.0])
    assert compute_metrics(["pearson", "spearman"], preds, [1.0, 2.0, 4.0]) == flat
    assert flat["pearson"] == pytest.approx(math.sqrt(27 / 28))


def test_values_are_python_floats_in_the_order_asked():
    result = compute_metrics(["mcc", "accuracy", "f1"], np.array(PREDS), np.array(REFS))
    assert list(result) == ["mcc", "accuracy", "f1"]
    assert all(type(value) is float for value in result.values())


def test_main_metric_is_the_first():
    assert main_metric(["mcc", "accuracy"]) == "mcc"
    with pytest.raises(ConfigError):
        main_metric([])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_matches_sklearn_on_random_data(seed):
    rng = np.random.default_rng(seed)
    refs = rng.integers(0, 2, size=200)
    logits = rng.normal(size=(200, 2))
    preds = logits.argmax(axis=1)
    result = compute_metrics(["accuracy", "f1", "mcc"], logits, refs)
    assert result["accuracy"] == pytest.approx(accuracy_score(refs, preds))
    assert result["f1"] == pytest.approx(f1_score(refs, preds))
    assert result["mcc"] == pytest.approx(matthews_corrcoef(refs, preds))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_macro_f1_matches_sklearn_on_random_data(seed):
    rng = np.random.default_rng(seed)
    refs = rng.integers(0, 4, size=300)
    probs = rng.dirichlet(np.ones(4), size=300)
    expected = f1_score(refs, probs.argmax(axis=1), average="macro")
    assert compute_metrics(["macro_f1"], probs, refs)["macro_f1"] == pytest.approx(expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_correlations_match_scipy_on_random_data(seed):
    rng = np.random.default_rng(seed)
    refs = rng.uniform(0, 5, size=150)
    preds = refs + rng.normal(scale=1.5, size=150)
    result = compute_metrics(["pearson", "spearman"], preds[:, None], refs)
    assert result["pearson"] == pytest.approx(stats.pearsonr(preds, refs).statistic)
    assert result["spearman"] == pytest.approx(stats.spearmanr(preds, refs).statistic)


def test_unknown_metric_lists_the_known_ones():
    with pytest.raises(ConfigError, match="bleu") as info:
        compute_metrics(["accuracy", "bleu"], PREDS, REFS)
    for name in METRICS:
        assert name in str(info.value)


def test_length_mismatch():
    with pytest.raises(ValueError, match="5 predictions but 4 references"):
        compute_metrics(["accuracy"], PREDS, REFS[:4])


def test_empty_input():
    with pytest.raises(ValueError, match="empty"):
        compute_metrics(["accuracy"], [], [])


def test_bad_shapes():
    with pytest.raises(ValueError, match="predictions must have shape"):
        compute_metrics(["accuracy"], np.zeros((2, 2, 2)), [0, 1])
    with pytest.raises(ValueError, match="references must have shape"):
        compute_metrics(["accuracy"], [0, 1], [[0], [1]])


def test_constant_inputs_give_zero_mcc_and_nan_correlations_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # Every prediction 1: MCC is undefined and sklearn's convention gives 0.0.
        assert compute_metrics(["mcc"], [1, 1, 1, 1], [0, 1, 0, 1])["mcc"] == 0.0
        # One single label in both arrays (sklearn would warn here).
        assert compute_metrics(["mcc"], [1, 1, 1], [1, 1, 1])["mcc"] == 0.0
        # No positives anywhere: F1 is 0.0 rather than a warning.
        assert compute_metrics(["f1"], [0, 0], [0, 0])["f1"] == 0.0
        result = compute_metrics(["pearson", "spearman"], [2.0, 2.0, 2.0], [1.0, 2.0, 3.0])
        assert math.isnan(result["pearson"]) and math.isnan(result["spearman"])
        result = compute_metrics(["pearson", "spearman"], [1.0, 2.0, 3.0], [4.0, 4.0, 4.0])
        assert math.isnan(result["pearson"]) and math.isnan(result["spearman"])
        # A single example is constant too.
        assert math.isnan(compute_metrics(["pearson"], [1.0], [2.0])["pearson"])
