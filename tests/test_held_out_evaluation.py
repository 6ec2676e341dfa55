"""Evaluating the shipped model on nodules of other patients: a folder laid out like lidc_voi,
as another set or a group's own data comes, judged by the whole model as a click would be."""

from __future__ import annotations

import csv
import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from nodule_tables import copy_nodules
from readme_tables import readme_table

from medcnn.app.analysis import Analyzer
from medcnn.app.cli import main
from medcnn.reading import read_scan
from medcnn.training.data.lidc import load_cases, read_table

pytestmark = pytest.mark.data
COLUMNS = ("image", "mask", "center_r", "center_a", "center_s", "diameter_mm", "malignancy")


@pytest.fixture(scope="module")
def other_set(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three benign and three malignant nodules in a table without folds or descriptors; two of
    them without a mask."""
    source = shared_data / "lidc_voi"
    rows = read_table(source)
    picked = [r for r in rows if r["malignancy"] in "12"][:3]
    picked += [r for r in rows if r["malignancy"] in "45"][:3]
    for row in picked[2::3]:
        row["mask"] = ""
    folder = copy_nodules(source, tmp_path_factory.mktemp("other_set"), picked, list(COLUMNS))
    return folder


def readme_metrics_keys() -> set[str]:
    """The keys the README's ``metrics.json`` table documents (first column, in backticks)."""
    table = readme_table("`metrics.json`, what `evaluate` measured")
    return {key for row in table for key in re.findall(r"`([a-z0-9_]+)`", row[0])}


def test_held_out_nodules_are_judged_by_the_whole_model_as_a_click(
    other_set: Path, tmp_path: Path, analyzer: Analyzer
) -> None:
    out = tmp_path / "eval"
    assert main(["evaluate", "--held-out", "--data", str(other_set), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["judged_by"] == "ensemble"
    assert metrics["n_nodules"] == metrics["n_binary"] == 6
    # the shipped model segments these four as readers do (0.83 when this was written)
    assert metrics["dice_mean"] > 0.7 and metrics["auc_reader_diameter"] is not None
    assert metrics["auc_per_fold"] == {} and metrics["auc_worst_fold"] is None  # no folds given
    assert metrics["mean_uncertainty"] > 0.0  # five members disagree a little
    assert set(metrics) == readme_metrics_keys()
    with open(out / "predictions.csv", newline="") as handle:
        predictions = list(csv.DictReader(handle))
    assert [p["dice"] == "" for p in predictions] == [False, False, True] * 2
    table = read_table(other_set)
    first = table[0]
    point = np.array([float(first[k]) for k in ("center_r", "center_a", "center_s")])
    click = analyzer.analyze_volume(read_scan(other_set / first["image"]), point)
    assert float(predictions[0]["probability"]) == pytest.approx(click.result.probability, abs=1e-4)
    assert (out / "roc.png").exists() and (out / "reliability.png").exists()


def test_other_patients_without_held_out_are_refused_with_what_to_do(
    other_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "eval"
    assert main(["evaluate", "--data", str(other_set), "--out", str(out)]) == 2
    assert "--held-out" in capsys.readouterr().err
    assert not out.exists()


def test_a_table_without_the_needed_columns_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "nodules.csv").write_text("image,malignancy\nimages/a.nii.gz,4\n")
    assert (
        main(["evaluate", "--held-out", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    )
    err = capsys.readouterr().err
    assert "center_r, center_a, center_s" in err and "Traceback" not in err


def test_a_table_with_no_nodules_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "nodules.csv").write_text("image,center_r,center_a,center_s,malignancy\n")
    assert (
        main(["evaluate", "--held-out", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    )
    assert "lists no nodules" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_scans_and_masks_in_the_clicks_other_formats_are_read(
    shared_data: Path, tmp_path: Path
) -> None:
    """lung1 as NRRD with its NRRD label: judged as the click judges that scan."""
    lung1 = shared_data / "ct" / "lung1"
    (tmp_path / "nodules.csv").write_text(
        "image,mask,center_r,center_a,center_s,malignancy\n"
        f"{lung1 / 'lung1_image.nrrd'},{lung1 / 'lung1_label.nrrd'},21.86,120.54,-611.5,4\n"
    )
    out = tmp_path / "eval"
    assert main(["evaluate", "--held-out", "--data", str(tmp_path), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_nodules"] == 1 and 0.3 < metrics["dice_mean"] <= 1.0
    assert metrics["auc"] is None and metrics["specificity"] is None  # one malignant nodule only


def test_a_listed_file_that_is_missing_is_named(
    other_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(other_set, broken)
    (broken / read_table(other_set)[1]["image"]).unlink()
    out = tmp_path / "eval"
    assert main(["evaluate", "--held-out", "--data", str(broken), "--out", str(out)]) == 3
    err = capsys.readouterr().err
    assert read_table(other_set)[1]["image"] in err and "does not exist" in err
    assert not out.exists()


def test_a_nodule_whose_point_a_click_refuses_is_listed_not_scored(
    shared_data: Path, tmp_path: Path
) -> None:
    """lidc_voi's one nodule whose table centre lies outside its own volume of interest: a
    click there is refused, so the evaluation lists it with the reason instead of scoring it."""
    source = shared_data / "lidc_voi"
    rows = read_table(source)
    outside = next(r for r in rows if r["image"].endswith("LIDC-IDRI-0332_R_1.nii.gz"))
    others = [r for r in rows if r["malignancy"] in "12"][:2]
    copy_nodules(source, tmp_path / "set", [*others, outside], list(COLUMNS))
    out = tmp_path / "eval"
    with warnings.catch_warnings():  # two benign nodules: no ROC, and no numpy noise about it
        warnings.simplefilter("error", RuntimeWarning)
        assert (
            main(["evaluate", "--held-out", "--data", str(tmp_path / "set"), "--out", str(out)])
            == 0
        )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_nodules"] == 2 and metrics["n_refused"] == 1
    assert metrics["refused"][0]["name"] == "LIDC-IDRI-0332_R_1"
    assert "outside the scan" in metrics["refused"][0]["reason"]
    with open(out / "predictions.csv", newline="") as handle:
        assert "LIDC-IDRI-0332_R_1" not in {p["name"] for p in csv.DictReader(handle)}


def test_a_table_whose_every_point_is_refused_stops_with_the_first_reason(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    source = shared_data / "lidc_voi"
    outside = next(r for r in read_table(source) if "LIDC-IDRI-0332_R_1" in r["image"])
    copy_nodules(source, tmp_path / "set", [outside], list(COLUMNS))
    out = tmp_path / "eval"
    assert main(["evaluate", "--held-out", "--data", str(tmp_path / "set"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Every one of the 1 nodules was refused" in err and "outside the scan" in err
    assert "Traceback" not in err and not out.exists()


def test_a_table_written_by_a_spreadsheet_is_read_as_its_numbers(
    other_set: Path, tmp_path: Path
) -> None:
    """Spreadsheets and pandas write whole numbers as ``4.0`` (and Excel a byte-order mark
    before the header): the ratings of such a table are read as the same numbers."""
    floats = tmp_path / "floats"
    shutil.copytree(other_set, floats)
    rows = read_table(floats)
    for row in rows:
        row["malignancy"] = f"{float(row['malignancy']):.1f}"
        row["center_r"] = f" {row['center_r']} "
    with open(floats / "nodules.csv", "w", newline="", encoding="utf-8-sig") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert [c.rating for c in load_cases(floats)] == [c.rating for c in load_cases(other_set)]


@pytest.mark.parametrize(
    ("column", "value", "says"),
    [
        ("malignancy", "4.5", "gives malignancy as '4.5'; write a whole number from 1 to 5"),
        ("malignancy", "7", "gives malignancy as '7'; write a whole number from 1 to 5"),
        ("malignancy", "", "has no malignancy"),
        ("center_a", "n/a", "gives center_a as 'n/a', not a number"),
        ("fold", "x", "gives fold as 'x', not a number"),
    ],
)
def test_a_cell_that_is_not_its_number_is_refused_before_any_scan_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture, column: str, value: str, says: str
) -> None:
    """The table's last row names the cell; the images do not exist, so the sentence shows the
    cells were checked before any scan was read."""
    good = {"image": "a.nii.gz", "center_r": "1", "center_a": "2", "center_s": "3"}
    rows = [{**good, "malignancy": "2", "fold": "0"}, {**good, "malignancy": "4", "fold": "1"}]
    rows[-1][column] = value
    with open(tmp_path / "nodules.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    code = main(["evaluate", "--held-out", "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"Row 3 of {tmp_path / 'nodules.csv'}" in err and says in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()
