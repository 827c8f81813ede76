"""Evaluation metrics (scikit-learn): accuracy, 1-off accuracy, macro F1, per-class precision/recall, MAE,
confusion matrix. Plain numpy in, plain Python numbers out (JSON- and W&B-ready)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    mean_absolute_error,
    precision_recall_fscore_support,
)


def one_off_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of predictions at most one class away (adjacent age group) — the Adience 1-off protocol."""
    y_true = np.asarray(y_true)
    if len(y_true) == 0:
        return float("nan")
    return float(np.mean(np.abs(np.asarray(y_pred) - y_true) <= 1))


def classification_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    num_classes: int,
    *,
    ordinal: bool = False,
    class_names: Sequence[str] | None = None,
    per_class: bool = False,
) -> dict[str, float]:
    """``acc``, ``f1`` (macro over all ``num_classes``), ``one_off`` when ``ordinal``; with ``per_class``
    also ``precision/<class>`` and ``recall/<class>``. Samples with unknown labels (< 0) are ignored."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    keep = y_true >= 0
    y_true, y_pred = y_true[keep], y_pred[keep]
    labels = list(range(num_classes))
    if len(y_true) == 0:
        out = {"acc": float("nan"), "f1": float("nan")}
        if ordinal:
            out["one_off"] = float("nan")
        return out
    out = {
        "acc": float(accuracy_score(y_true, y_pred)),
        "f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
    }
    if ordinal:
        out["one_off"] = one_off_accuracy(y_true, y_pred)
    if per_class:
        p, r, _, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
        names = list(class_names) if class_names is not None else [str(i) for i in labels]
        for i, name in enumerate(names):
            out[f"precision/{name}"] = float(p[i])
            out[f"recall/{name}"] = float(r[i])
    return out


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """``mae`` (years) over samples with a known target (not NaN)."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    keep = ~np.isnan(y_true)
    if not keep.any():
        return {"mae": float("nan")}
    return {"mae": float(mean_absolute_error(y_true[keep], y_pred[keep]))}


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrix ``[true, pred]`` over all ``num_classes`` (unknown labels ignored)."""
    y_true = np.asarray(y_true)
    keep = y_true >= 0
    return confusion_matrix(y_true[keep], np.asarray(y_pred)[keep], labels=list(range(num_classes)))


def is_better(value: float | None, best: float | None, goal: str) -> bool:
    """True when ``value`` improves on ``best`` for ``goal`` (maximize|minimize); NaN never improves."""
    if value is None or value != value:  # None or NaN
        return False
    if best is None or best != best:
        return True
    return value > best if goal == "maximize" else value < best


def jsonable(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()}
