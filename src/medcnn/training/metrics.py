"""Binary-classification and segmentation metrics, written out so each one is easy to check."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the chance a malignant nodule scores above a benign one."""
    labels, scores = np.asarray(labels, bool), np.asarray(scores, float)
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every threshold, from (0, 0) to (1, 1); NaN for a
    class the labels do not have."""
    labels, scores = np.asarray(labels, bool), np.asarray(scores, float)
    thresholds = np.concatenate([[np.inf], np.sort(np.unique(scores))[::-1]])

    def rates(chosen: np.ndarray) -> np.ndarray:
        if not len(chosen):
            return np.full(len(thresholds), np.nan)
        return np.array([(chosen >= t).mean() for t in thresholds])

    return rates(scores[~labels]), rates(scores[labels])


def expected_calibration_error(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = 10
) -> float:
    """Mean |observed rate - predicted probability| over equal-width bins, weighted by count."""
    labels, probabilities = np.asarray(labels, float), np.asarray(probabilities, float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(probabilities, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        chosen = which == b
        if chosen.any():
            error += chosen.mean() * abs(labels[chosen].mean() - probabilities[chosen].mean())
    return float(error)


def brier_score(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean squared distance of the probability from the outcome: calibration and sharpness in
    one proper score that, unlike a binned ECE, needs no bins: a small set does not inflate it."""
    labels, probabilities = np.asarray(labels, float), np.asarray(probabilities, float)
    return float(np.mean((probabilities - labels) ** 2))


def log_loss(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-6) -> float:
    """Mean negative log-likelihood of the outcomes (natural log): punishes confident mistakes."""
    labels = np.asarray(labels, bool)
    probabilities = np.clip(np.asarray(probabilities, float), eps, 1 - eps)
    return float(-np.mean(np.where(labels, np.log(probabilities), np.log1p(-probabilities))))


def bootstrap_interval(
    labels: np.ndarray,
    probabilities: np.ndarray,
    metric: Callable[[np.ndarray, np.ndarray], float],
    groups: Sequence[str] | None = None,
    draws: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> list[float] | None:
    """A percentile bootstrap interval for ``metric``, resampling whole groups (patients), since
    nodules of one patient are not independent; None where it cannot be estimated.

    On the few hundred nodules a group has, the spread is what tells a real difference from a
    lucky draw. Draws that lack a class (no AUC) are skipped; the seed makes it reproducible.
    """
    labels, probabilities = np.asarray(labels, bool), np.asarray(probabilities, float)
    keys = np.asarray(groups if groups is not None else np.arange(len(labels)).astype(str))
    _, members = np.unique(keys, return_inverse=True)
    order = np.argsort(members, kind="stable")
    by_group = np.split(order, np.cumsum(np.bincount(members))[:-1]) if len(order) else []
    if len(by_group) < 2:
        return None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(draws):
        chosen = np.concatenate(
            [by_group[g] for g in rng.integers(len(by_group), size=len(by_group))]
        )
        value = metric(labels[chosen], probabilities[chosen])
        if np.isfinite(value):
            values.append(value)
    if len(values) < draws // 2:
        return None
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


def reliability_bins(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> list[dict]:
    labels, probabilities = np.asarray(labels, float), np.asarray(probabilities, float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(probabilities, edges[1:-1]), 0, bins - 1)
    return [
        {
            "low": float(edges[b]),
            "high": float(edges[b + 1]),
            "count": int((which == b).sum()),
            "predicted": float(probabilities[which == b].mean()) if (which == b).any() else None,
            "observed": float(labels[which == b].mean()) if (which == b).any() else None,
        }
        for b in range(bins)
    ]


def threshold_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict:
    labels = np.asarray(labels, bool)
    called = np.asarray(probabilities) >= threshold
    return {
        "accuracy": float((called == labels).mean()),
        "sensitivity": float(called[labels].mean()) if labels.any() else float("nan"),
        "specificity": float((~called[~labels]).mean()) if (~labels).any() else float("nan"),
    }


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return float(2 * (a & b).sum() / total) if total else 1.0
