"""Training the chest X-ray model end to end on a tiny synthetic copy of the data's layout:
members trained per patient fold, the release assembled, signed, measured and loadable."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medcnn.bundle import verified_weights_path
from medcnn.catalog import XRAY_MODEL, default_bundle_dir
from medcnn.xray.analysis import RadiographAnalyzer
from medcnn.xray.phantom import synthetic_radiograph
from medcnn.xray.training.data import kermany_patient, kermany_records
from medcnn.xray.training.trainer import RadiographTraining


def picture(seed: int, pneumonia: bool) -> Image.Image:
    """A small radiograph-like picture; pneumonia brightens the lower left lung field."""
    pixels = synthetic_radiograph()[::4, ::4].astype(float)
    rng = np.random.default_rng(seed)
    if pneumonia:
        pixels[90:120, 25:60] += 60
    pixels += rng.normal(0, 4, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def xray_folder(root: Path) -> Path:
    """kermany/{train,test}/{NORMAL,PNEUMONIA} and nih/ with labels.csv, as ../shared/data/xray."""
    for split, count in (("train", 10), ("test", 3)):
        for k in range(count):
            child = k + (100 if split == "test" else 0)
            folder = root / "kermany" / split
            (folder / "NORMAL").mkdir(parents=True, exist_ok=True)
            (folder / "PNEUMONIA").mkdir(parents=True, exist_ok=True)
            picture(child, False).convert("RGB").save(
                folder / "NORMAL" / f"IM-{child:04d}-0001.jpeg"
            )
            picture(child + 1000, True).convert("RGB").save(
                folder / "PNEUMONIA" / f"person{child}_bacteria_{child}.jpeg"
            )
    (root / "nih" / "images").mkdir(parents=True)
    with open(root / "nih" / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label", "patient_id", "fold"])
        for fold in range(5):
            for label in ("pneumonia", "no_finding"):
                name = f"images/{fold}_{label}.png"
                picture(fold * 7 + len(label), label == "pneumonia").save(root / "nih" / name)
                writer.writerow([name, label, f"{fold}{label[0]}", fold])
    return root


def test_the_children_are_kept_whole_in_their_folds(tmp_path: Path) -> None:
    root = xray_folder(tmp_path / "xray")
    assert kermany_patient("NORMAL2-IM-0007-0001.jpeg") == kermany_patient("IM-0007-0002.jpeg")
    assert kermany_patient("person7_virus_13.jpeg") == "pneumonia-7"
    records = kermany_records(root / "kermany")
    folds: dict[str, set[int]] = {}
    for record in records:
        folds.setdefault(record.patient, set()).add(record.fold)
    assert all(len(f) == 1 for f in folds.values())
    assert {r.fold for r in records if r.split == "test"} == {-1}


@pytest.mark.slow
def test_a_training_smoke_run_gives_a_signed_measured_loadable_bundle(tmp_path: Path) -> None:
    root = xray_folder(tmp_path / "xray")
    release = tmp_path / "release"
    metadata = RadiographTraining(
        root,
        tmp_path / "run",
        default_bundle_dir(XRAY_MODEL),
        release,
        overrides={"epochs": 1, "batch_size": 8, "threads": 1},
    ).run()
    for fold in range(5):
        assert (tmp_path / "run" / "both" / f"fold{fold}" / "model.pt").is_file()
    verified_weights_path(release)  # the SHA-256 in metadata.json is the weights'
    assert not (release / "models" / "model.ts").exists()  # derived on demand, not shipped
    assert (release / "docs" / "images" / "roc.png").is_file()
    written = json.loads((release / "configs" / "metadata.json").read_text())
    assert written == metadata
    assert written["eval_metrics"]["kermany_test"]["n"] == 6
    assert written["eval_metrics"]["nih_cv"]["n"] == 10
    assert 0.05 <= written["medcnn"]["threshold"] <= 0.95
    analyzer = RadiographAnalyzer(release, trusted=True)
    result = analyzer.analyze_file(
        root / "nih" / "images" / "0_pneumonia.png", None, tmp_path / "o"
    )
    assert result.task == "chest_xray_pneumonia" and len(result.member_probabilities) == 5
