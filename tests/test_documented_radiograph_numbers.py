"""The chest X-ray model's numbers in the README and its model card are the ones its release
wrote into ``metadata.json``, rounded as written."""

from __future__ import annotations

from pathlib import Path

import pytest
from readme_tables import README, numbers_in, readme_table

from medcnn.catalog import XRAY_MODEL, installed_models, read_metadata

pytestmark = pytest.mark.skipif(
    XRAY_MODEL not in installed_models(), reason="the chest X-ray bundle is not installed"
)
CARD = Path(__file__).resolve().parents[1] / "monai_bundle" / XRAY_MODEL / "docs" / "README.md"


def expected_rows(metadata: dict, column: str) -> dict[str, list[float]]:
    """Each table row's numbers of one column (shipped or founding), from the metadata."""
    if column == "shipped":
        kermany, nih = metadata["eval_metrics"]["kermany_test"], metadata["eval_metrics"]["nih_cv"]
        threshold = metadata["medcnn"]["threshold"]
    else:
        founding = metadata["medcnn"]["experiments"]["founding"]
        kermany, nih, threshold = (
            founding["kermany_test"],
            founding["nih_cv"],
            founding["threshold"],
        )

    def percent(*values: float) -> list[float]:
        return [round(100 * v, 1) for v in values]

    folds = [nih["auc_per_fold"][k] for k in sorted(nih["auc_per_fold"])]
    return {
        "Kermany test: ROC AUC": [kermany["auc"], *kermany["auc_ci95"]],
        "Kermany test: accuracy": [
            *percent(kermany["accuracy"], kermany["sensitivity"], kermany["specificity"]),
            threshold,
        ],
        "NIH adults, 5-fold": [nih["auc"], *nih["auc_ci95"]],
        "NIH ROC AUC per fold": [*folds, nih["auc_worst_fold"]],
        "NIH accuracy": percent(nih["accuracy"], nih["sensitivity"], nih["specificity"]),
        "Brier score": [kermany["brier"], nih["brier"]],
        "expected calibration error": [kermany["ece"], nih["ece"]],
    }


@pytest.mark.parametrize("document", [README, CARD], ids=["README", "model card"])
def test_the_tables_are_the_metadatas_numbers(document: Path) -> None:
    metadata = read_metadata(installed_models()[XRAY_MODEL])
    after = "## Chest radiographs: the pneumonia model" if document == README else "## How well"
    rows = readme_table(after, document)
    for column, index in (("shipped", 1), ("founding", 2)):
        for start, expected in expected_rows(metadata, column).items():
            (row,) = [r for r in rows if r[0].startswith(start)]
            written = numbers_in(row[index])
            assert len(written) == len(expected), (start, row[index])
            for value, truth in zip(written, expected, strict=True):
                digits = 1 if value != round(value, 2) or truth > 1 else 3
                assert abs(value - truth) <= 0.5 * 10**-digits + 1e-9, (column, start, row[index])


def test_the_children_and_adults_table_is_the_metadatas() -> None:
    experiments = read_metadata(installed_models()[XRAY_MODEL])["medcnn"]["experiments"]
    expected = {
        "children only": [
            experiments["children"]["kermany_test"]["auc"],
            experiments["children"]["nih_external"]["auc"],
        ],
        "adults only": [
            experiments["adults"]["kermany_test"]["auc"],
            experiments["adults"]["nih_cv"]["auc"],
        ],
        "both": [experiments["both"]["kermany_test"]["auc"], experiments["both"]["nih_cv"]["auc"]],
    }
    for document in (README, CARD):
        rows = (
            readme_table("What training on", document)
            if document == README
            else (readme_table("**Children and adults.**", document))
        )
        for start, truth in expected.items():
            (row,) = [r for r in rows if r[0].startswith(start)]
            written = [numbers_in(cell)[0] for cell in row[1:3]]
            assert written == pytest.approx(truth, abs=0.0005 + 1e-9), (document.name, start)
