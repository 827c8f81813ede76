"""experiments.metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from experiments import metrics as M


def test_classification_hand_computed() -> None:
    y = np.array([0, 0, 1, 1, 2, 2, -1])
    p = np.array([0, 1, 1, 1, 0, 2, 2])  # last sample: unknown label, ignored
    r = M.classification_metrics(y, p, 3, ordinal=True, class_names=["a", "b", "c"], per_class=True)
    assert r["acc"] == pytest.approx(4 / 6)
    # one-off: |diff| <= 1 for all but (2 -> 0)
    assert r["one_off"] == pytest.approx(5 / 6)
    # per class: a: P=1/2 R=1/2; b: P=2/3 R=1; c: P=1 R=1/2
    assert r["precision/a"] == pytest.approx(0.5) and r["recall/a"] == pytest.approx(0.5)
    assert r["precision/b"] == pytest.approx(2 / 3) and r["recall/b"] == pytest.approx(1.0)
    assert r["precision/c"] == pytest.approx(1.0) and r["recall/c"] == pytest.approx(0.5)
    f1 = [0.5, 0.8, 2 / 3]
    assert r["f1"] == pytest.approx(sum(f1) / 3)


def test_macro_f1_counts_absent_classes() -> None:
    r = M.classification_metrics(np.array([0, 0]), np.array([0, 0]), 2)
    assert r["acc"] == 1.0 and r["f1"] == pytest.approx(0.5)  # class 1 never seen: F1 0
    assert "one_off" not in r


def test_confusion_and_mae() -> None:
    cm = M.confusion(np.array([0, 1, 1, -1]), np.array([1, 1, 0, 0]), 3)
    assert cm.tolist() == [[0, 1, 0], [1, 1, 0], [0, 0, 0]]
    assert M.regression_metrics(np.array([10.0, 20.0, np.nan]), np.array([12.0, 17.0, 0.0]))[
        "mae"
    ] == pytest.approx(2.5)


def test_empty_is_nan() -> None:
    assert math.isnan(M.classification_metrics(np.array([-1]), np.array([0]), 2, ordinal=True)["one_off"])
    assert math.isnan(M.regression_metrics(np.array([np.nan]), np.array([1.0]))["mae"])


def test_is_better_and_goal() -> None:
    assert M.is_better(0.5, None, "maximize") and M.is_better(0.6, 0.5, "maximize")
    assert not M.is_better(0.5, 0.5, "maximize") and M.is_better(0.4, 0.5, "minimize")
    assert not M.is_better(float("nan"), 0.5, "maximize")
