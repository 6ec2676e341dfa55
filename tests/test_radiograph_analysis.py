"""The chest X-ray model as users meet it: the input chooses the model, a radiograph is judged
whole, and its heatmap lands on the radiograph's own pixels whatever the file format."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from command_line import medcnn
from PIL import Image
from radiograph_files import write_dicom
from result_checks import assert_valid_result

from medcnn.app.engine import choose_model
from medcnn.catalog import NODULE_MODEL, XRAY_MODEL, installed_models, read_metadata
from medcnn.errors import UsageError
from medcnn.reading.radiograph import read_radiograph
from medcnn.xray.phantom import synthetic_radiograph

needs_xray_model = pytest.mark.skipif(
    XRAY_MODEL not in installed_models(), reason="the chest X-ray bundle is not installed"
)


def write_png(pixels: np.ndarray, path: Path) -> Path:
    Image.fromarray(pixels).save(path)
    return path


def write_nifti(pixels: np.ndarray, path: Path) -> Path:
    """A one-slice NIfTI, (columns, rows, 1), placed off the origin with 0.6 mm pixels."""
    affine = np.diag([-0.6, -0.6, 2.0, 1.0])
    affine[:3, 3] = [120.0, 80.0, -30.0]
    nib.save(nib.Nifti1Image(pixels.T[:, :, None].astype(np.float32), affine), path)
    return path


@needs_xray_model
def test_the_input_decides_the_model(tmp_path: Path, phantom_nifti: Path) -> None:
    picture = write_png(synthetic_radiograph(), tmp_path / "chest.png")
    assert choose_model(picture, None) == (
        XRAY_MODEL,
        "no point was given and the image is a 2D radiograph",
    )
    assert choose_model(phantom_nifti, [1.0, 2.0, 3.0]) == (
        NODULE_MODEL,
        "a point was given in a 3D scan",
    )
    for image, point, model, words in (
        (picture, [1.0, 2.0, 3.0], None, "2D radiograph"),
        (phantom_nifti, None, None, "3D scan"),
        (picture, [1.0, 2.0, 3.0], XRAY_MODEL, "takes no point"),
        (picture, None, NODULE_MODEL, "at a point"),
    ):
        with pytest.raises(UsageError, match=words):
            choose_model(image, point, model)


def test_an_unknown_model_is_refused_with_the_installed_ones(tmp_path: Path) -> None:
    picture = write_png(synthetic_radiograph(), tmp_path / "chest.png")
    with pytest.raises(UsageError, match="no model 'pneumonia'.*medcnn models"):
        choose_model(picture, None, "pneumonia")


@pytest.fixture(scope="module")
def phantom_nifti(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medcnn.app.demo import ensure_phantom

    return Path(ensure_phantom(tmp_path_factory.mktemp("phantom"))["nifti"])


@needs_xray_model
def test_the_heatmap_lands_on_the_same_pixels_from_png_dicom_and_nifti(tmp_path: Path) -> None:
    """One radiograph with a bright opacity, as PNG, DICOM and one-slice NIfTI: the same answer,
    and the same heatmap pixel for pixel, each on its input's own grid."""
    pixels = synthetic_radiograph()
    inputs = {
        "png": write_png(pixels, tmp_path / "chest.png"),
        "dicom": write_dicom(
            tmp_path / "chest.dcm", pixels, ViewPosition="PA", ImagerPixelSpacing=[0.5, 0.7]
        ),
        "nifti": write_nifti(pixels, tmp_path / "chest.nii.gz"),
    }
    heatmaps, probabilities = {}, {}
    for name, path in inputs.items():
        out = tmp_path / f"out_{name}"
        done = medcnn("analyze", str(path), "--out", str(out))
        assert done.returncode == 0, done.stderr
        result = json.loads((out / "result.json").read_text())
        assert_valid_result(result)
        assert result["task"] == "chest_xray_pneumonia" and result["model"]["id"] == XRAY_MODEL
        heatmap = nib.load(out / "heatmap.nii.gz")
        grid = read_radiograph(path).grid
        assert heatmap.shape == grid.shape  # (columns, rows, 1): the input's own pixels
        np.testing.assert_allclose(heatmap.affine, grid.affine, atol=1e-5)
        heatmaps[name] = np.asarray(heatmap.dataobj)[:, :, 0].T
        probabilities[name] = result["probability"]
    assert (tmp_path / "out_png" / "heatmap.png").is_file()
    assert not (tmp_path / "out_dicom" / "heatmap.png").exists()  # pictures only for pictures
    with Image.open(tmp_path / "out_png" / "heatmap.png") as picture:
        assert picture.size == (pixels.shape[1], pixels.shape[0])
        np.testing.assert_allclose(np.asarray(picture) / 255.0, heatmaps["png"], atol=0.5 / 255)
    for name in ("dicom", "nifti"):
        assert probabilities[name] == pytest.approx(probabilities["png"], abs=1e-6)
        np.testing.assert_allclose(heatmaps[name], heatmaps["png"], atol=1.01 / 255)
    peak = np.unravel_index(np.argmax(heatmaps["png"]), pixels.shape)
    assert all(heatmaps[name][peak] == heatmaps[name].max() for name in inputs)


@needs_xray_model
def test_a_point_on_a_radiograph_and_a_ct_as_a_radiograph_are_refused(
    tmp_path: Path, phantom_nifti: Path
) -> None:
    picture = write_png(synthetic_radiograph(), tmp_path / "chest.png")
    for args, code, words in (
        ([picture, "--point", "1", "2", "3"], 2, "leave out --point"),
        ([phantom_nifti, "--model", XRAY_MODEL], 14, "slices"),
    ):
        out = tmp_path / "out"
        done = medcnn("analyze", *map(str, args), "--out", str(out))
        assert done.returncode == code, done.stderr
        assert words in done.stderr and len(done.stderr.strip().splitlines()) == 1
        assert not out.exists() or not any(out.iterdir())


@needs_xray_model
def test_a_batch_mixes_radiographs_and_nodules_in_one_table(
    tmp_path: Path, phantom_nifti: Path
) -> None:
    from medcnn.phantom import NODULE_CENTER_RAS

    write_png(synthetic_radiograph(), tmp_path / "a.png")
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image", "r", "a", "s"])
        writer.writerow(["xr", "a.png", "", "", ""])
        writer.writerow(["ct", str(phantom_nifti), *NODULE_CENTER_RAS])
    done = medcnn("batch", str(manifest), "--out", str(tmp_path / "b"))
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "b" / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["id"] for r in rows] == ["xr", "ct"]
    radiograph, nodule = rows
    assert radiograph["label"] in ("pneumonia", "no pneumonia")
    assert radiograph["r"] == radiograph["diameter_mm"] == radiograph["volume_ml"] == ""
    assert nodule["label"] in ("malignant", "benign") and float(nodule["diameter_mm"]) > 0
    result = json.loads((tmp_path / "b" / radiograph["output_dir"] / "result.json").read_text())
    assert result["task"] == "chest_xray_pneumonia"


@needs_xray_model
def test_the_release_numbers_reproduce_on_the_fixed_subset(shared_data: Path) -> None:
    """The model card's check subset (every 10th of Kermany's test split), judged again through
    the click's path, gives the numbers recorded in metadata.json."""
    from medcnn.xray.analysis import RadiographAnalyzer
    from medcnn.xray.training.evaluation import (
        LabelledRadiograph,
        member_probabilities,
        summarize,
    )

    analyzer = RadiographAnalyzer()
    recorded = read_metadata(analyzer.bundle_dir)["medcnn"]["check_subset"]
    root = shared_data / "xray"
    records = [
        LabelledRadiograph(root / name, int("/PNEUMONIA/" in name), name)
        for name in recorded["images"]
    ]
    members, errors = member_probabilities(analyzer.model, analyzer.spec, records)
    assert not any(errors)
    probability = members.mean(axis=1)
    again = summarize(
        np.array([r.label for r in records]),
        probability,
        [r.patient for r in records],
        analyzer.threshold,
    )
    for key in ("auc", "accuracy", "sensitivity", "specificity", "brier"):
        assert again[key] == pytest.approx(recorded[key], abs=1e-4), key
    assert probability.mean() == pytest.approx(recorded["mean_probability"], abs=1e-4)


@needs_xray_model
def test_the_bundle_runs_the_monai_way_on_its_embedded_radiograph(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    config = repo / "monai_bundle" / XRAY_MODEL / "configs" / "inference.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            str(config),
            "--output_dir",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    with open(tmp_path / "out" / "predictions.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["id"] == "synthetic_radiograph" and row["error"] == ""
    assert row["label"] in ("pneumonia", "no pneumonia")


@needs_xray_model
def test_held_out_evaluation_of_a_labelled_folder(tmp_path: Path) -> None:
    """``medcnn evaluate --model chest_xray_pneumonia --held-out --data DIR``: metrics, the
    per-image table and the plots, and an unreadable image reported, not fatal."""
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    pixels = synthetic_radiograph()
    rows = []
    for k in range(6):
        name = f"images/{k}.png"
        shifted = np.roll(pixels, 9 * k, axis=1)
        write_png(shifted, data / name)
        rows.append([name, "pneumonia" if k % 2 else "no_finding", f"p{k // 2}"])
    (data / "images" / "broken.png").write_bytes(b"not a picture")
    rows.append(["images/broken.png", "pneumonia", "p9"])
    with open(data / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label", "patient_id"])
        writer.writerows(rows)
    out = tmp_path / "eval"
    done = medcnn(
        "evaluate", "--model", XRAY_MODEL, "--held-out", "--data", str(data), "--out", str(out)
    )
    assert done.returncode == 0, done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 6 and metrics["not_judged"] == 1 and 0 <= metrics["auc"] <= 1
    with open(out / "predictions.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 7 and table[-1]["error"] and table[-1]["probability"] == ""
    assert (out / "roc.png").is_file() and (out / "reliability.png").is_file()


@needs_xray_model
def test_cross_validation_of_the_nih_adults_reproduces_the_model_card(
    shared_data: Path, tmp_path: Path
) -> None:
    """``medcnn evaluate --model chest_xray_pneumonia`` on xray/nih judges each radiograph with
    the member held out of its fold: the release's cross-validated numbers, again."""
    out = tmp_path / "eval"
    done = medcnn(
        "evaluate",
        "--model",
        XRAY_MODEL,
        "--data",
        str(shared_data / "xray" / "nih"),
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    recorded = read_metadata(installed_models()[XRAY_MODEL])["eval_metrics"]["nih_cv"]
    assert metrics["judged_by"] == "out_of_fold_member" and metrics["n"] == recorded["n"]
    for key in ("auc", "accuracy", "sensitivity", "specificity", "brier"):
        assert metrics[key] == pytest.approx(recorded[key], abs=1e-4), key
