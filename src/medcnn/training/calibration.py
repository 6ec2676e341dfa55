"""The combining head: a logistic regression over each member's image features.

It is fitted on out-of-fold predictions only, so it learns how far to trust each member's
outputs on patients the member never saw; that also calibrates the probability.
"""

from __future__ import annotations

import numpy as np
import torch

from medcnn.nodule.network import NoduleEnsemble


def fit_logistic(
    features: np.ndarray, labels: np.ndarray, l2: float = 1.0
) -> dict[str, np.ndarray]:
    """Standardised, ridge-penalised logistic regression by Newton's method."""
    x = np.asarray(features, float)
    y = np.asarray(labels, float)
    mean, std = x.mean(0), x.std(0) + 1e-6
    design = np.concatenate([(x - mean) / std, np.ones((len(x), 1))], 1)
    w = np.zeros(design.shape[1])
    penalty = np.full(design.shape[1], l2)
    penalty[-1] = 0.0
    for _ in range(100):
        p = 1 / (1 + np.exp(-(design @ w)))
        gradient = design.T @ (p - y) + penalty * w
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return {"mean": mean, "std": std, "weight": w[:-1], "bias": w[-1:]}


def apply_logistic(head: dict[str, np.ndarray], features: np.ndarray) -> np.ndarray:
    z = (np.asarray(features, float) - head["mean"]) / head["std"]
    return 1 / (1 + np.exp(-(z @ head["weight"] + head["bias"][0])))


def install_head(model: NoduleEnsemble, head: dict[str, np.ndarray]) -> None:
    """Put a fitted head into the model's buffers, so it ships inside ``model.pt``."""
    for name, key in (
        ("feature_mean", "mean"),
        ("feature_std", "std"),
        ("head_weight", "weight"),
        ("head_bias", "bias"),
    ):
        getattr(model, name).copy_(torch.as_tensor(head[key], dtype=torch.float32))


def member_rows(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """One training row per member and nodule: the head is applied to each member alone."""
    features, labels = [], []
    for row in rows:
        for member in row["member_features"]:
            features.append(member)
            labels.append(row["label"])
    return np.array(features, dtype=float), np.array(labels, dtype=float)


def ensemble_probabilities(head: dict[str, np.ndarray], rows: list[dict]) -> np.ndarray:
    """What the shipped model computes: the members' head probabilities, averaged."""
    return np.array([apply_logistic(head, np.array(r["member_features"])).mean() for r in rows])


def nested_head_probabilities(rows: list[dict], l2: float = 1.0) -> list[dict]:
    """Each fold's probabilities from a head fitted on the other folds only: the honest numbers."""
    binary = [r for r in rows if r["label"] is not None]
    out = []
    for fold in sorted({r["fold"] for r in rows}):
        head = fit_logistic(*member_rows([r for r in binary if r["fold"] != fold]), l2)
        held = [r for r in rows if r["fold"] == fold]
        for row, p in zip(held, ensemble_probabilities(head, held), strict=True):
            out.append({**row, "probability": float(p)})
    return out
