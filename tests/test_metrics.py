"""lwlrap and friends against their reference definitions (scikit-learn), on random cases, ties and edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import average_precision_score, label_ranking_average_precision_score

from embedtag.errors import DataError
from embedtag.metrics import accuracy, accuracy_multi, lwlrap, lwlrap_per_class, macro_map, precision_at_k


def reference_lwlrap(truth, scores):
    truth = np.asarray(truth)
    keep = truth.sum(1) > 0
    return label_ranking_average_precision_score(truth[keep], scores[keep], sample_weight=truth[keep].sum(1))


def kaggle_lwlrap(truth, scores):
    """The competition's own per-pair formula written out naively (ties pessimistic, as sklearn)."""
    total, acc = 0, 0.0
    for t, s in zip(truth, scores):
        for j in np.flatnonzero(t):
            ge = s >= s[j]
            acc += (ge & (t > 0)).sum() / ge.sum()
            total += 1
    return acc / total


@st.composite
def cases(draw):
    n = draw(st.integers(1, 25))
    n_labels = draw(st.integers(1, 9))
    truth = draw(arrays(np.int8, (n, n_labels), elements=st.integers(0, 1)))
    if truth.sum() == 0:
        truth[draw(st.integers(0, n - 1)), draw(st.integers(0, n_labels - 1))] = 1
    # small integer scores make ties common; floats cover the general case
    if draw(st.booleans()):
        scores = draw(arrays(np.float64, (n, n_labels), elements=st.integers(-2, 2).map(float)))
    else:
        scores = draw(arrays(np.float64, (n, n_labels),
                             elements=st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)))
    return truth, scores


@settings(max_examples=150, deadline=None)
@given(cases())
def test_lwlrap_equals_sklearn_reference(case):
    truth, scores = case
    assert lwlrap(truth, scores) == pytest.approx(reference_lwlrap(truth, scores), abs=1e-12)
    assert lwlrap(truth, scores) == pytest.approx(kaggle_lwlrap(truth, scores), abs=1e-12)


@settings(max_examples=150, deadline=None)
@given(cases())
def test_per_class_weighted_sum_is_overall(case):
    truth, scores = case
    per_class, weights = lwlrap_per_class(truth, scores)
    assert weights.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(weights, truth.sum(0) / truth.sum())
    assert (per_class * weights).sum() == pytest.approx(lwlrap(truth, scores), abs=1e-12)
    assert ((per_class >= 0) & (per_class <= 1)).all()


def test_lwlrap_known_values():
    truth = np.array([[1, 0, 0], [0, 1, 1]])
    perfect = np.array([[0.9, 0.1, 0.0], [0.0, 0.8, 0.7]])
    assert lwlrap(truth, perfect) == 1.0
    # clip 0's label ranked 2nd (1/2); clip 1's labels ranked 1st and 3rd (1/1, 2/3)
    scores = np.array([[0.5, 0.9, 0.0], [0.2, 0.8, 0.1]])
    assert lwlrap(truth, scores) == pytest.approx((0.5 + 1 + 2 / 3) / 3)
    # one all-tied row: every label ties, precision = n_true / n_labels
    assert lwlrap([[1, 0, 0, 0]], [[0.3, 0.3, 0.3, 0.3]]) == pytest.approx(0.25)


def test_clips_without_labels_are_ignored():
    truth = np.array([[1, 0], [0, 0]])
    scores = np.array([[0.9, 0.1], [0.0, 1.0]])
    assert lwlrap(truth, scores) == 1.0


def test_lwlrap_rejects_bad_input():
    with pytest.raises(DataError):
        lwlrap(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(DataError):
        lwlrap(np.ones((2, 3)), np.zeros((3, 2)))
    with pytest.raises(DataError):
        lwlrap(np.ones((1, 2)), np.array([[np.nan, 1.0]]))
    with pytest.raises(DataError):
        lwlrap(np.full((1, 2), 2), np.zeros((1, 2)))


def test_macro_map_matches_sklearn():
    rng = np.random.default_rng(0)
    truth = (rng.random((50, 6)) < 0.3).astype(int)
    truth[:, 5] = 0  # an absent class is skipped rather than counted as 0
    scores = rng.random((50, 6))
    expected = np.mean([average_precision_score(truth[:, j], scores[:, j]) for j in range(5)])
    assert macro_map(truth, scores) == pytest.approx(expected)


def test_accuracy_single_label():
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert accuracy([1, 0, 0], scores) == pytest.approx(2 / 3)
    assert accuracy(np.eye(2)[[1, 0, 0]], scores) == pytest.approx(2 / 3)
    with pytest.raises(DataError):
        accuracy(np.array([[1, 1], [1, 0], [0, 1]]), scores)


def test_accuracy_multi_is_inflated_by_negatives():
    truth = np.zeros((10, 80), int)
    truth[np.arange(10), np.arange(10)] = 1
    nothing = np.zeros((10, 80))
    # predicting no label at all is "98.75% accurate" yet ranks nothing: the reason lwlrap is the headline
    assert accuracy_multi(truth, nothing) == pytest.approx(79 / 80)
    assert accuracy_multi(truth, truth * 0.9) == 1.0
    assert accuracy_multi(truth, truth * 0.9, threshold=0.95) == pytest.approx(79 / 80)


def test_precision_at_k():
    truth = np.array([[1, 1, 0, 0], [0, 0, 0, 1]])
    scores = np.array([[0.9, 0.1, 0.8, 0.0], [0.1, 0.2, 0.3, 0.4]])
    assert precision_at_k(truth, scores, 1) == 1.0
    assert precision_at_k(truth, scores, 2) == pytest.approx((1 / 2 + 1 / 2) / 2)
    with pytest.raises(DataError):
        precision_at_k(truth, scores, 5)
