"""The installed models in the panel's logic, against real MRML (slicer-core), fast: the model
choice offered from the engine's hello, what a request needs (a point in a CT, none for a
radiograph), and a radiograph's answer in the scene (its heatmap over it, its table row with the
model and empty nodule columns). The protocol stand-in plays both models; the same checks with
the real chest X-ray model are in ``test_slicer_end_to_end_radiograph.py``.

The radiograph is the engine's synthetic one (``medcnn.xray.phantom``) as a volume of one
slice, placed obliquely with unequal spacing and an origin away from 0, so a heatmap that lost
any part of that geometry would not overlay it."""

from __future__ import annotations

import json
import math

import jsonschema
import numpy as np
import pytest
from slicer_test_support import (
    SLICER_CORE_MISSING,
    SettingsStore,
    radiograph_matrix,
    wait_until,
)

from medcnn.outputs.result import result_schema
from medcnn.xray.phantom import synthetic_radiograph

slicer = pytest.importorskip("slicer", reason=SLICER_CORE_MISSING)

from MedCNNLib.AnalysisLogic import (  # noqa: E402
    AUTOMATIC,
    AnalysisError,
    MedCNNLogic,
    pointFromRAS,
    pointsFromMarkups,
)
from MedCNNLib.Parameters import AUTOMATIC_TITLE, Parameters  # noqa: E402
from MedCNNLib.ResultImport import TABLE_COLUMNS  # noqa: E402
from slicer_scene_support import add_volume, ijk_to_ras  # noqa: E402

from medcnn.errors import CancelledError  # noqa: E402

NODULE, XRAY = "lung_nodule_ct", "chest_xray_pneumonia"
NODULE_COLUMNS = ("Diameter", "Volume", "Calcified", "R", "A", "S")


@pytest.fixture
def radiograph(scene):
    """The synthetic radiograph as a 12-bit volume of one slice, placed obliquely."""
    pixels = synthetic_radiograph().astype(np.uint16) * 16  # (rows, columns)
    return add_volume(scene, pixels.T[:, :, None], radiograph_matrix(), "chest radiograph")


@pytest.fixture
def logic(scene, standin_runner, tmp_path):
    logic = MedCNNLogic(scene, standin_runner(), workDir=tmp_path / "work", keepOutputs=True)
    yield logic
    logic.cleanup()


@pytest.fixture
def requests(logic, monkeypatch):
    """The requests the logic submits to the runner, as sent."""
    sent = []
    submit = logic.runner.submit

    def recording(request):
        sent.append(request)
        return submit(request)

    monkeypatch.setattr(logic.runner, "submit", recording)
    return sent


def listed(logic) -> None:
    """Start the engine and wait for its hello (the models)."""
    logic.startEngine()
    wait_until(logic.updateEngine, 30.0, "the engine's hello", lambda: logic.runner.hello)


def node_ids(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def row(table, index: int = 0) -> dict:
    data = table.GetTable()
    return {name: data.GetColumnByName(name).GetValue(index) for name, *_ in TABLE_COLUMNS}


def test_the_model_selector_offers_automatic_then_each_model_of_the_hello(logic):
    assert logic.modelChoices() == [(AUTOMATIC, AUTOMATIC_TITLE, logic.modelChoices()[0][2])]
    listed(logic)
    choices = logic.modelChoices()
    assert [choice.id for choice in choices] == [AUTOMATIC, NODULE, XRAY]
    assert choices[0].title == "Automatic: the image decides"
    assert choices[2].title == "standin chest X-ray 0.0.2"
    assert "no point" in choices[2].description  # the model's own words (its "input")


def test_the_model_choice_is_a_parameter_kept_only_while_listed(logic):
    store = SettingsStore()
    Parameters(model=XRAY).save(store)
    logic.parameters = Parameters.load(store)
    assert logic.parameters.model == XRAY
    assert logic.chosenModel() == AUTOMATIC  # not listed yet: the image decides
    listed(logic)
    assert logic.chosenModel() == XRAY
    logic.parameters.model = "retired_model"
    assert logic.chosenModel() == AUTOMATIC


def test_what_a_request_needs_follows_the_model_and_the_volume(logic, phantom, radiograph):
    assert logic.pointNeeded(phantom) and not logic.pointNeeded(radiograph)  # automatic
    assert logic.pointNeeded(None)
    listed(logic)
    assert not logic.pointNeeded(phantom, XRAY)  # the model says: it takes no point
    assert logic.pointNeeded(radiograph, NODULE)
    logic.parameters.model = XRAY
    assert not logic.pointNeeded(phantom)
    assert "no point" in logic.inputHint(phantom)
    logic.parameters.model = AUTOMATIC
    assert logic.inputHint(phantom).startswith("Place a point")
    assert "no point is needed" in logic.inputHint(radiograph)
    assert logic.inputHint(None).startswith("Select a chest CT or a chest radiograph")


def test_a_radiograph_is_analysed_whole_without_a_point(logic, radiograph, scene, requests):
    task = logic.analyze(radiograph, None, timeout=60)
    assert task.failed == [], task.message
    outcome = task.outcomes[0]
    assert outcome.point.wholeImage and outcome.point.label == "chest radiograph"
    assert [(r.point, r.model) for r in requests] == [(None, None)]  # automatic: no model named
    result = json.loads((outcome.outputDir / "result.json").read_text())
    jsonschema.Draft202012Validator(result_schema()).validate(result)
    assert result["task"] == XRAY and result["model"]["id"] == XRAY
    assert "2D radiograph" in result["model"]["chosen_because"]
    assert set(outcome.nodeIDs) == {"heatmap", "table"}  # no segmentation
    assert logic.resultNodes(role="segmentation") == []
    assert task.message == (
        f"chest radiograph: {result['label']}, probability {result['probability']:.2f} "
        f"\u00b1 {result['uncertainty']:.2f}."
    )


def test_the_heatmap_lies_on_the_radiographs_own_grid(logic, radiograph, scene):
    task = logic.analyze(radiograph, None, timeout=60)
    heatmap = scene.GetNodeByID(task.outcomes[0].nodeIDs["heatmap"])
    # the same voxels in the same places: it overlays the radiograph exactly
    np.testing.assert_allclose(ijk_to_ras(heatmap), ijk_to_ras(radiograph), atol=1e-4)
    assert heatmap.GetImageData().GetDimensions() == radiograph.GetImageData().GetDimensions()
    assert heatmap.GetName() == "chest radiograph MedCNN heatmap"
    # and its values lie where the radiograph's do (the stand-in's heat is smoothed brightness)
    from slicer_scene_support import voxel_array

    heat = voxel_array(heatmap.GetImageData()).astype(float).ravel()
    pixels = voxel_array(radiograph.GetImageData()).astype(float).ravel()
    assert np.corrcoef(heat, pixels)[0, 1] > 0.9
    assert 0.0 <= heat.min() and heat.max() <= 1.0
    # shown over the radiograph in every slice view, the views through its centre
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for index in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(index)
        assert composite.GetBackgroundVolumeID() == radiograph.GetID()
        assert composite.GetForegroundVolumeID() == heatmap.GetID()
    dims = np.array(radiograph.GetImageData().GetDimensions())
    centre = (ijk_to_ras(radiograph) @ np.r_[(dims - 1) / 2.0, 1.0])[:3]
    slices = scene.GetNodesByClass("vtkMRMLSliceNode")
    for index in range(slices.GetNumberOfItems()):
        matrix = slices.GetItemAsObject(index).GetSliceToRAS()
        np.testing.assert_allclose([matrix.GetElement(r, 3) for r in range(3)], centre, atol=1e-3)


def test_the_row_names_the_model_and_leaves_the_nodule_columns_empty(logic, radiograph, scene):
    outcome = logic.analyze(radiograph, None, timeout=60).outcomes[0]
    result = outcome.result
    table = scene.GetNodeByID(outcome.nodeIDs["table"])
    assert [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())] == [
        name for name, *_ in TABLE_COLUMNS
    ]
    values = row(table)
    assert values["Model"] == XRAY
    assert values["Point"] == ""
    assert values["Label"] == result["label"] in ("pneumonia", "no pneumonia")
    assert values["Probability"] == result["probability"]
    assert values["Uncertainty"] == result["uncertainty"]
    assert [values["Probability low"], values["Probability high"]] == result["probability_interval"]
    assert all(math.isnan(values[name]) for name in NODULE_COLUMNS)
    for role in ("heatmap", "table"):
        node = scene.GetNodeByID(outcome.nodeIDs[role])
        assert node.GetAttribute("MedCNN.ModelID") == XRAY
        assert node.GetAttribute("MedCNN.ModelName") == result["model"]["name"]
        assert node.GetAttribute("MedCNN.WeightsSHA256") == result["model"]["weights_sha256"]
        assert node.GetAttribute("MedCNN.PointRAS") == ""
        assert node.GetAttribute("MedCNN.InputVolume") == "chest radiograph"


def test_reanalysing_a_radiograph_with_the_same_model_replaces_its_row(logic, radiograph, scene):
    first = logic.analyze(radiograph, None, timeout=60).outcomes[0].nodeIDs
    before = node_ids(scene)
    listed(logic)
    logic.parameters.model = XRAY  # named now: the same model, so the same row
    second = logic.analyze(radiograph, None, timeout=60).outcomes[0].nodeIDs
    assert len(node_ids(scene)) == len(before)
    assert scene.GetNodeByID(first["heatmap"]) is None
    assert scene.GetNodeByID(second["heatmap"]) is not None
    assert first["table"] == second["table"]
    assert scene.GetNodeByID(second["table"]).GetNumberOfRows() == 1
    assert len(logic.resultNodes(role="heatmap")) == 1


def test_a_ct_still_needs_a_point_and_its_row_names_its_model(logic, phantom, phantom_ct, scene):
    with pytest.raises(AnalysisError, match="Place a point"):
        logic.startAnalysis(phantom, [])
    assert logic.runner.pid is None  # nothing was sent
    task = logic.analyze(phantom, [pointFromRAS(phantom_ct.nodule_ras, "N1")], timeout=60)
    values = row(scene.GetNodeByID(task.outcomes[0].nodeIDs["table"]))
    assert values["Model"] == NODULE and values["Point"] == "N1"
    assert values["Diameter"] == task.outcomes[0].result["diameter_mm"]
    assert set(task.outcomes[0].nodeIDs) == {"heatmap", "segmentation", "table"}


def test_a_point_on_a_radiograph_is_not_sent(logic, radiograph, scene, requests):
    markups = slicer.vtkMRMLMarkupsFiducialNode()
    scene.AddNode(markups)
    markups.AddControlPoint(80.0, -30.0, 100.0, "stray")
    task = logic.analyze(radiograph, markups, timeout=60)
    assert task.failed == [], task.message  # the engine refuses a point on a radiograph
    assert [r.point for r in requests] == [None]
    assert len(task.outcomes) == 1 and task.outcomes[0].point.wholeImage


def test_a_model_that_takes_no_point_is_sent_none_and_named(logic, phantom, requests):
    """The model chosen decides, not the volume: the chest X-ray model gets no point, even on a
    CT (which the engine then refuses in one sentence, as it would on the command line)."""
    listed(logic)
    logic.parameters.model = XRAY
    task = logic.analyze(phantom, None, timeout=60)
    assert [(r.point, r.model) for r in requests] == [(None, XRAY)]
    assert task.succeeded == [] and "not a radiograph" in task.message


def test_control_points_not_placed_are_never_sent(logic, phantom, phantom_ct, scene, requests):
    markups = slicer.vtkMRMLMarkupsFiducialNode()
    scene.AddNode(markups)
    for label in ("placed", "previewed", "missing"):
        markups.AddControlPoint(*phantom_ct.nodule_ras, label)
    markups.ResetNthControlPointPosition(1)  # being placed: a preview
    markups.SetNthControlPointPositionMissing(2)  # skipped: no position
    assert [point.label for point in pointsFromMarkups(markups)] == ["placed"]
    task = logic.analyze(phantom, markups, timeout=60)
    assert len(requests) == 1 and [o.point.label for o in task.outcomes] == ["placed"]
    markups.RemoveNthControlPoint(0)
    with pytest.raises(AnalysisError, match="Place a point"):
        logic.startAnalysis(phantom, markups)


def test_a_radiograph_uses_the_same_worker_progress_and_cancel(
    scene, radiograph, phantom, phantom_ct, standin_runner, tmp_path
):
    logic = MedCNNLogic(scene, standin_runner(), workDir=tmp_path / "a")
    ct = logic.analyze(phantom, [pointFromRAS(phantom_ct.nodule_ras)], timeout=60)
    pid = logic.runner.pid
    task = logic.startAnalysis(radiograph, None)
    stages = []
    while not task.poll():
        stages.append(task.stage)
    assert ct.failed == task.failed == [] and logic.runner.pid == pid  # one worker for both
    assert "network" in stages and task.progress == 1.0
    logic.cleanup()

    hanging = MedCNNLogic(scene, standin_runner("hang"), workDir=tmp_path / "b")
    before = node_ids(scene)
    task = hanging.startAnalysis(radiograph, None)
    wait_until(lambda: task.poll() or task.stage == "child", 30.0, "the stand-in's hang")
    task.cancel()
    assert task.cancelled and task.outcomes[0].exitCode == CancelledError.exit_code
    assert node_ids(scene) == before
    hanging.cleanup()


def test_a_table_of_an_earlier_version_gets_the_model_column(logic, phantom, phantom_ct, scene):
    """A scene saved before the Model column: its table is extended, its rows kept."""
    point = [pointFromRAS(phantom_ct.nodule_ras, "N1")]
    table = scene.GetNodeByID(
        logic.analyze(phantom, point, timeout=60).outcomes[0].nodeIDs["table"]
    )
    table.RemoveColumn(table.GetColumnIndex("Model"))
    assert table.GetTable().GetColumnByName("Model") is None
    other = [pointFromRAS(np.add(phantom_ct.nodule_ras, 20.0), "N2")]
    task = logic.analyze(phantom, other, timeout=60)
    assert task.failed == [], task.message
    models = table.GetTable().GetColumnByName("Model")
    assert table.GetNumberOfRows() == 2
    assert [models.GetValue(0), models.GetValue(1)] == ["", NODULE]
