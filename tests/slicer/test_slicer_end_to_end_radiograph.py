"""End to end as in Slicer, for a chest radiograph: the engine's synthetic radiograph written as
a volume of one slice and loaded into a real MRML scene through a storage node, the real
``python -m medcnn.app.worker`` with the installed chest X-ray model behind the runner the module
uses, the answer imported as MRML nodes. No point is placed or sent.

Runs once the chest X-ray model is installed (its bundle's ``metadata.json``); slow (the worker
loads every installed model). The CT counterpart is ``test_slicer_end_to_end.py``."""

from __future__ import annotations

import json
import math

import jsonschema
import numpy as np
import pytest
from slicer_test_support import SLICER_CORE_MISSING, wait_until, write_nrrd

from medcnn.catalog import XRAY_MODEL, installed_models
from medcnn.outputs.result import result_schema
from medcnn.xray.phantom import synthetic_radiograph

slicer = pytest.importorskip("slicer", reason=SLICER_CORE_MISSING)

from MedCNNLib.AnalysisLogic import MedCNNLogic, pointFromRAS  # noqa: E402
from MedCNNLib.ResultImport import TABLE_COLUMNS  # noqa: E402
from MedCNNLib.Runner import WorkerRunner  # noqa: E402
from slicer_scene_support import ijk_to_ras, load_volume, voxel_array  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        XRAY_MODEL not in installed_models(),
        reason=f"the {XRAY_MODEL} model is not installed (its bundle has no metadata.json yet)",
    ),
]
TIMEOUT = 900.0
# A radiograph's geometry as a file gives it: LPS axes as ITK places a picture, unequal pixel
# spacing, an origin away from 0.
RADIOGRAPH_AFFINE = np.diag([-0.2, -0.25, 1.0, 1.0])
RADIOGRAPH_AFFINE[:3, 3] = [40.0, 60.0, -12.0]


@pytest.fixture(scope="module")
def runner():
    """One worker for the module, as Slicer keeps one for the session."""
    runner = WorkerRunner()
    yield runner
    runner.shutdown()


@pytest.fixture
def logic(scene, runner, tmp_path):
    logic = MedCNNLogic(scene, runner, workDir=tmp_path / "work", keepOutputs=True)
    yield logic
    logic.cleanup = lambda: None  # the module's runner outlives each test


@pytest.fixture
def radiograph(scene, tmp_path):
    """The synthetic radiograph as a one-slice NRRD, loaded as Slicer loads a file."""
    pixels = synthetic_radiograph()  # (rows, columns)
    path = write_nrrd(pixels.T[:, :, None], RADIOGRAPH_AFFINE, tmp_path / "radiograph.nrrd")
    return load_volume(scene, path, "synthetic radiograph")


def node_ids(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def test_the_engine_lists_the_chest_xray_model(logic, runner):
    logic.startEngine()
    wait_until(logic.updateEngine, TIMEOUT, "the engine's hello", lambda: runner.hello)
    model = runner.hello.modelById(XRAY_MODEL)
    assert model is not None and model.needsPoint is False
    assert XRAY_MODEL in [choice.id for choice in logic.modelChoices()]


def test_a_synthetic_radiograph_in_the_scene(logic, runner, scene, radiograph):
    assert not logic.pointNeeded(radiograph)
    task = logic.analyze(radiograph, None, TIMEOUT)
    assert task.failed == [], task.message
    outcome = task.outcomes[0]
    result = json.loads((outcome.outputDir / "result.json").read_text())
    jsonschema.Draft202012Validator(result_schema()).validate(result)
    assert result["task"] == "chest_xray_pneumonia" and result["model"]["id"] == XRAY_MODEL
    assert "radiograph" in result["model"]["chosen_because"]
    assert "point" not in result and "segmentation" not in result["outputs"]
    loaded = {model["id"]: model for model in runner.models}
    assert loaded[XRAY_MODEL]["weights_sha256"] == result["model"]["weights_sha256"]

    # the heatmap: on the radiograph's own grid, heat colours, values in 0..1
    heatmap = scene.GetNodeByID(outcome.nodeIDs["heatmap"])
    np.testing.assert_allclose(ijk_to_ras(heatmap), ijk_to_ras(radiograph), atol=1e-4)
    assert heatmap.GetImageData().GetDimensions() == radiograph.GetImageData().GetDimensions()
    assert heatmap.GetDisplayNode().GetColorNodeID() == logic.heatColorNode().GetID()
    heat = voxel_array(heatmap.GetImageData())
    assert heat.dtype == np.float32 and 0.0 <= heat.min() and heat.max() <= 1.0
    assert set(outcome.nodeIDs) == {"heatmap", "table"}

    # the table row: exactly result.json, the model named, no nodule columns
    table = scene.GetNodeByID(outcome.nodeIDs["table"])
    data = table.GetTable()
    values = {name: data.GetColumnByName(name).GetValue(0) for name, *_ in TABLE_COLUMNS}
    assert values["Model"] == XRAY_MODEL and values["Point"] == ""
    assert values["Probability"] == result["probability"]
    assert values["Uncertainty"] == result["uncertainty"]
    assert values["Label"] == result["label"]
    for name in ("Diameter", "Volume", "Calcified", "R", "A", "S"):
        assert math.isnan(values[name]), name
    for node in (heatmap, table):
        assert node.GetAttribute("MedCNN.ModelID") == XRAY_MODEL
        assert node.GetAttribute("MedCNN.WeightsSHA256") == result["model"]["weights_sha256"]

    # re-analysed, with a stray point that is not sent: replaced, not piled up
    before = node_ids(scene)
    markups = slicer.vtkMRMLMarkupsFiducialNode()
    scene.AddNode(markups)
    markups.AddControlPoint(0.0, 0.0, -12.0, "stray")
    again = logic.analyze(radiograph, markups, TIMEOUT)
    assert again.failed == [], again.message
    assert len(node_ids(scene)) == len(before) + 1  # the point list, nothing else
    assert scene.GetNodeByID(outcome.nodeIDs["heatmap"]) is None
    assert table.GetNumberOfRows() == 1


def test_the_ct_model_named_on_a_radiograph_is_refused(logic, scene, radiograph):
    """The lung nodule model needs a point and a CT: the engine refuses, one sentence, nothing
    added to the scene."""
    before = node_ids(scene)
    task = logic.analyze(
        radiograph, [pointFromRAS((0.0, 0.0, -12.0), "P")], TIMEOUT, model="lung_nodule_ct"
    )
    assert task.succeeded == [] and task.failed[0].exitCode == 2, task.message
    assert node_ids(scene) == before
