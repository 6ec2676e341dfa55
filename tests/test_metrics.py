"""The reported numbers are computed correctly."""

from __future__ import annotations

import numpy as np
import pytest

from medcnn.training.calibration import apply_logistic, fit_logistic
from medcnn.training.metrics import (
    bootstrap_interval,
    brier_score,
    dice,
    expected_calibration_error,
    log_loss,
    roc_auc,
    threshold_metrics,
)


def test_auc_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(1)
    labels = rng.random(80) < 0.4
    scores = np.round(labels + rng.normal(0, 1, 80), 1)  # ties included
    pos, neg = scores[labels], scores[~labels]
    expected = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg])
    assert abs(roc_auc(labels, scores) - expected) < 1e-12
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0


def test_ece_is_zero_for_calibrated_bins_and_large_for_overconfidence() -> None:
    labels = np.array([0] * 8 + [1] * 2 + [1] * 8 + [0] * 2)
    probs = np.array([0.2] * 10 + [0.8] * 10)
    assert expected_calibration_error(labels, probs) < 1e-12
    assert expected_calibration_error(labels, np.where(probs > 0.5, 0.99, 0.01)) > 0.15


def test_brier_score_and_log_loss_reward_confident_right_answers() -> None:
    labels = np.array([1, 0, 1, 0])
    assert brier_score(labels, [0.8, 0.2, 0.6, 0.5]) == pytest.approx(
        (0.04 + 0.04 + 0.16 + 0.25) / 4
    )
    assert log_loss(labels, [0.8, 0.2, 0.6, 0.5]) == pytest.approx(
        -(2 * np.log(0.8) + np.log(0.6) + np.log(0.5)) / 4
    )
    assert brier_score(labels, labels) == 0.0 and log_loss(labels, labels) < 1e-5
    assert log_loss(labels, 1 - labels) > 10  # a sure mistake: large, but finite
    # a coin toss everywhere scores 0.25 and log 2, whatever the labels
    assert brier_score(labels, np.full(4, 0.5)) == 0.25
    assert log_loss(labels, np.full(4, 0.5)) == pytest.approx(np.log(2))


def test_threshold_metrics_and_dice() -> None:
    m = threshold_metrics([1, 1, 0, 0], [0.9, 0.4, 0.2, 0.6], 0.5)
    assert m == {"accuracy": 0.5, "sensitivity": 0.5, "specificity": 0.5}
    a = np.zeros((4, 4), bool)
    a[:2] = True
    assert dice(a, a) == 1.0 and dice(a, ~a) == 0.0


def test_logistic_head_recovers_a_known_model_and_calibrates() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 3))
    logit = 2.0 * x[:, 0] - 1.0 * x[:, 1] + 0.5
    y = rng.random(4000) < 1 / (1 + np.exp(-logit))
    head = fit_logistic(x, y, l2=0.1)
    p = apply_logistic(head, x)
    assert expected_calibration_error(y, p) < 0.03
    assert roc_auc(y, p) > 0.8


def test_bootstrap_interval_covers_the_estimate_and_resamples_whole_patients() -> None:
    rng = np.random.default_rng(3)
    labels = rng.random(120) < 0.4
    probs = np.clip(0.4 + 0.35 * (labels - 0.4) + rng.normal(0, 0.2, 120), 0.01, 0.99)
    low, high = bootstrap_interval(labels, probs, roc_auc)
    assert low < roc_auc(labels, probs) < high < 1.0
    assert bootstrap_interval(labels, probs, roc_auc) == [low, high]  # seeded: reproducible
    # Five copies of each patient's nodule are no more evidence than one: resampled by patient,
    # the interval stays as wide as the original's; resampled by nodule, it would shrink.
    copies = np.repeat(np.arange(120), 5)
    patients = [f"p{i}" for i in copies]
    by_patient = bootstrap_interval(labels[copies], probs[copies], roc_auc, patients)
    by_nodule = bootstrap_interval(labels[copies], probs[copies], roc_auc)
    assert by_patient[1] - by_patient[0] > 1.8 * (by_nodule[1] - by_nodule[0])
    assert by_patient[1] - by_patient[0] == pytest.approx(high - low, rel=0.25)
    assert bootstrap_interval(labels[:3], probs[:3], roc_auc, ["p"] * 3) is None  # one patient
