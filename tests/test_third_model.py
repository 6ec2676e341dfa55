"""A third model is its bundle and its task package, nothing else: a bundle dropped beside the
shipped two (here the chest X-ray model's own, restated as another task) is listed, chosen with
``--model``, answers in its own words and is held to its own result rule, with no line of the
engine, the command line or the result schema naming it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from result_checks import assert_valid_result

import medcnn.catalog
from medcnn.app.cli import main
from medcnn.catalog import installed_models
from medcnn.xray.phantom import ensure_radiograph_phantom

THIRD = "chest_xray_opacity"


@pytest.fixture
def three_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A bundles folder holding the shipped models and a third one, installed in its place."""
    shipped = installed_models()
    bundles = tmp_path / "bundles"
    for name, folder in shipped.items():
        (bundles / name).parent.mkdir(parents=True, exist_ok=True)
        (bundles / name).symlink_to(folder, target_is_directory=True)
    source = shipped["chest_xray_pneumonia"]
    third = bundles / THIRD
    shutil.copytree(source / "configs", third / "configs")
    (third / "models").mkdir()
    shutil.copy2(source / "models" / "model.pt", third / "models" / "model.pt")
    metadata_path = third / "configs" / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata["name"] = "Lung opacity on chest radiographs (a test's third model)"
    metadata["medcnn"].update(
        {
            "model": THIRD,
            "task": "chest_xray_opacity",
            "finding": "lung opacity",
            "labels": ["opacity", "no opacity"],
            "summary_columns": [],
        }
    )
    metadata_path.write_text(json.dumps(metadata, indent=4))
    monkeypatch.setattr(medcnn.catalog, "bundles_dir", lambda: bundles)
    monkeypatch.delenv("MEDCNN_BUNDLE", raising=False)
    return tmp_path


def test_a_third_bundle_is_listed_chosen_and_answers_in_its_own_words(
    three_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "--path"]) == 0
    assert THIRD in capsys.readouterr().out

    radiograph = ensure_radiograph_phantom(three_models / "radiograph")
    # Two installed models now judge a whole radiograph: the input no longer decides.
    assert main(["analyze", str(radiograph), "--out", str(three_models / "none")]) == 2
    assert "choose one with --model" in capsys.readouterr().err
    assert not (three_models / "none").exists()

    out = three_models / "third"
    assert main(["analyze", str(radiograph), "--model", THIRD, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "result.json").read_text())
    assert result["task"] == "chest_xray_opacity"
    assert result["model"]["id"] == THIRD
    assert result["label"] in ("opacity", "no opacity")
    assert f"probability of lung opacity {result['probability']:.3f}" in printed
    assert_valid_result(result)  # the schema holds the third task to its bundle's rule

    wrong = {**result, "label": "pneumonia"}  # another task's word
    with pytest.raises(Exception, match="is not one of"):
        assert_valid_result(wrong)
