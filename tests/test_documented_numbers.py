"""What the documents repeat is held to its one source: the version to ``medcnn.__version__``,
the measured numbers to the bundle's ``metadata.json``, which the release writes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib
from readme_tables import MODEL_CARD, README, numbers_in, readme_table, table_header

import medcnn
from medcnn.bundle import default_bundle_dir, read_metadata

REPO = Path(__file__).resolve().parents[1]
METADATA = read_metadata(default_bundle_dir())
NESTED, SHIPPED = METADATA["eval_metrics_nested_head"], METADATA["eval_metrics"]


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def test_one_version_everywhere() -> None:
    """pyproject reads it from medcnn.__version__; the bundle states it and its changelog's
    newest entry is it."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    dynamic = project["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "medcnn.__version__"}
    version = medcnn.__version__
    assert METADATA["version"] == version
    assert METADATA["required_packages_version"]["medcnn"] == version
    changelog = list(METADATA["changelog"])
    assert changelog[0] == max(changelog, key=_release) == version  # newest first, and it


def _metrics(metrics: dict) -> dict[str, list[float]]:
    """What each row of the documents' tables says, from the metadata, in the row's order."""
    folds = [metrics["auc_per_fold"][f] for f in sorted(metrics["auc_per_fold"])]
    return {
        "auc": [metrics["auc"]],
        "auc_ci95": metrics["auc_ci95"],
        "folds": folds,
        "accuracy": [metrics["accuracy"]],
        "sensitivity_specificity": [metrics["sensitivity"], metrics["specificity"]],
        "ece": [metrics["ece"]],
        "brier_log_loss": [metrics["brier"], metrics["log_loss"]],
        "brier_ci_log_loss": [metrics["brier"], *metrics["brier_ci95"], metrics["log_loss"]],
        "dice": [metrics["dice_mean"], metrics["dice_median"]],
        "reader_diameter": [metrics["auc_reader_diameter"]],
    }


def assert_written_as(cell: str, expected: list[float], where: str) -> None:
    """The cell's numbers are the metadata's, rounded to the digits written (three)."""
    written = numbers_in(cell)[: len(expected)]
    assert len(written) == len(expected), f"{where}: {cell!r}"
    for value, truth in zip(written, expected, strict=True):
        assert abs(value - truth) <= 0.0005 + 1e-9, f"{where}: {cell!r} against {expected}"


README_ROWS = {
    "ROC AUC, pooled": "auc",
    "its 95 % interval (patients resampled)": "auc_ci95",
    "ROC AUC per fold": "folds",
    "accuracy / sensitivity / specificity at 0.5": None,
    "expected calibration error (10 bins)": "ece",
    "Brier score / log loss (no bins)": "brier_log_loss",
    "segmentation Dice, mean (median)": "dice",
}
README_TABLE = "**Measured** by 5-fold cross-validation over patients"


def test_the_readmes_table_is_the_metadatas_nested_numbers() -> None:
    """The README's first column is the current model's honest (nested-head) numbers."""
    header = table_header(README_TABLE)
    assert re.search(rf"\b{re.escape(medcnn.__version__)}\b", header[1]), header[1]
    expected = _metrics(NESTED)
    rows = {row[0]: row for row in readme_table(README_TABLE)}
    assert set(README_ROWS) <= set(rows)
    for label, key in README_ROWS.items():
        if key is None:
            values = [NESTED["accuracy"], NESTED["sensitivity"], NESTED["specificity"]]
        else:
            values = expected[key]
        assert_written_as(rows[label][1], values, f"README, {label}")
    assert_written_as(rows["ROC AUC, pooled"][-1], expected["reader_diameter"], "README, readers")


def test_the_readme_quotes_the_shipped_heads_numbers() -> None:
    sentence = re.search(
        r"the same evaluation\s+gives AUC ([\d.]+) and ECE ([\d.]+)", README.read_text()
    )
    assert sentence, "the README's sentence on the shipped head moved; update this test"
    assert_written_as(f"{sentence[1]} {sentence[2]}", [SHIPPED["auc"], SHIPPED["ece"]], "README")


MODEL_CARD_ROWS = {
    "ROC AUC pooled": "auc",
    "its 95 % interval (patients resampled)": "auc_ci95",
    "ROC AUC per fold": "folds",
    "accuracy at threshold 0.5": "accuracy",
    "sensitivity / specificity at 0.5": "sensitivity_specificity",
    "expected calibration error": "ece",
    "Brier score (95 % interval) / log loss": "brier_ci_log_loss",
    "Dice mean / median": "dice",
    "readers' diameter alone, AUC": "reader_diameter",
}


@pytest.mark.parametrize(
    ("column", "metrics"), [(1, NESTED), (2, SHIPPED)], ids=["nested", "shipped"]
)
def test_the_model_cards_table_is_the_metadatas_numbers(column: int, metrics: dict) -> None:
    after = "so on this many\nnodules the ECE cannot tell the two apart"
    header = table_header(after, MODEL_CARD)
    assert header[1:] == [
        "combining head refitted per fold (honest)",
        "shipped head (`metadata.json`)",
    ]
    rows = {row[0]: row for row in readme_table(after, MODEL_CARD)}
    expected = _metrics(metrics)
    assert set(MODEL_CARD_ROWS) <= set(rows)
    for label, key in MODEL_CARD_ROWS.items():
        assert_written_as(rows[label][column], expected[key], f"model card, {label}")
