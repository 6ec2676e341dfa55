"""The scene side against real MRML (slicer-core), fast: the real runner and the real MRML import,
with the protocol stand-in in place of the model (it writes its heatmap and segmentation on a
sub-grid of the scan's grid, as the engine does). They run on the engine's synthetic chest CT
written as NRRD, so a fresh clone tests the extension; those about geometry run on lung1 too,
where ../shared/data is. The same checks with the real model are in
``test_slicer_end_to_end.py``."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
from slicer_test_support import SLICER_CORE_MISSING, SettingsStore, wait_until

from medcnn.outputs.result import result_schema

slicer = pytest.importorskip("slicer", reason=SLICER_CORE_MISSING)

from MedCNNLib.AnalysisLogic import (  # noqa: E402
    AnalysisError,
    MedCNNLogic,
    pointFromRAS,
    pointsFromMarkups,
)
from MedCNNLib.Parameters import Parameters  # noqa: E402
from MedCNNLib.ResultImport import NODULE_TERMINOLOGY, TABLE_COLUMNS  # noqa: E402
from MedCNNLib.Runner import STARTING_TITLE  # noqa: E402
from slicer_scene_support import (  # noqa: E402
    grid_indices,
    ijk_to_ras,
    load_volume,
    segment_world_points,
    world_points,
)

from medcnn.errors import CancelledError, PointOutsideScanError  # noqa: E402
from medcnn.stages import NETWORK  # noqa: E402


@pytest.fixture
def volume(scene, ct):
    """The CT (the phantom, and lung1 where the data is) loaded into the scene."""
    return load_volume(scene, ct.path, ct.name)


@pytest.fixture
def logic(scene, standin_runner, tmp_path):
    logic = MedCNNLogic(scene, standin_runner(), workDir=tmp_path / "work", keepOutputs=True)
    yield logic
    logic.cleanup()


def node_ids(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def analyse(logic, volume, *points):
    task = logic.analyze(volume, [pointFromRAS(p, f"P{n}") for n, p in enumerate(points, 1)], 60)
    return task


def test_heatmap_voxels_sit_on_source_voxels(logic, volume, ct, scene):
    task = analyse(logic, volume, ct.nodule_ras)
    assert task.failed == [], task.message
    heatmap = scene.GetNodeByID(task.outcomes[0].nodeIDs["heatmap"])
    source, overlay = ijk_to_ras(volume), ijk_to_ras(heatmap)
    np.testing.assert_allclose(overlay[:3, :3], source[:3, :3], atol=1e-6)  # same axes, spacing
    dims = np.array(heatmap.GetImageData().GetDimensions())
    corners = np.array([[i, j, k] for i in (0, dims[0] - 1) for j in (0, dims[1] - 1)
                        for k in (0, dims[2] - 1)])  # fmt: skip
    world = world_points(corners, overlay)
    in_source = grid_indices(world, volume)
    np.testing.assert_allclose(in_source, np.round(in_source), atol=1e-4)  # voxel centres
    np.testing.assert_allclose(world_points(np.round(in_source), source), world, atol=1e-4)
    # the point's own voxel is inside the heatmap's sub-grid
    point_index = grid_indices(np.array([ct.nodule_ras]), heatmap)[0]
    assert np.all(point_index > -0.5) and np.all(point_index < dims - 0.5)


def test_heatmap_display_uses_the_heat_colour_map_with_threshold(logic, phantom, phantom_ct, scene):
    task = analyse(logic, phantom, phantom_ct.nodule_ras)
    heatmap = scene.GetNodeByID(task.outcomes[0].nodeIDs["heatmap"])
    display = heatmap.GetDisplayNode()
    color = scene.GetNodeByID(display.GetColorNodeID())
    assert color.GetSingletonTag() == "MedCNNHeat" and color.GetNumberOfColors() == 256
    rgb = [0.0] * 4
    color.GetColor(0, rgb)
    assert rgb[:3] == [0.0, 0.0, 0.0]
    color.GetColor(255, rgb)
    assert rgb[:3] == [1.0, 1.0, 1.0]
    assert (display.GetWindow(), display.GetLevel()) == (1.0, 0.5)
    assert display.GetApplyThreshold() and display.GetLowerThreshold() == pytest.approx(0.2)

    logic.setHeatmapThreshold(0.45)
    logic.setHeatmapOpacity(0.7)
    assert display.GetLowerThreshold() == pytest.approx(0.45)
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for index in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(index)
        assert composite.GetBackgroundVolumeID() == phantom.GetID()
        assert composite.GetForegroundVolumeID() == heatmap.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.7)


def test_slice_views_are_centred_on_the_point(logic, phantom, phantom_ct, scene):
    analyse(logic, phantom, phantom_ct.nodule_ras)
    slices = scene.GetNodesByClass("vtkMRMLSliceNode")
    for index in range(slices.GetNumberOfItems()):
        matrix = slices.GetItemAsObject(index).GetSliceToRAS()
        centre = [matrix.GetElement(row, 3) for row in range(3)]
        np.testing.assert_allclose(centre, phantom_ct.nodule_ras, atol=1e-3)


def test_segmentation_has_a_named_coded_segment_around_the_point(logic, volume, ct, scene):
    task = analyse(logic, volume, ct.nodule_ras)
    segmentation = scene.GetNodeByID(task.outcomes[0].nodeIDs["segmentation"])
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 1
    segment_id = segmentation.GetSegmentation().GetNthSegmentID(0)
    segment = segmentation.GetSegmentation().GetSegment(segment_id)
    assert segment.GetName() == "Nodule"
    assert segment.GetTerminology() == NODULE_TERMINOLOGY
    assert "^27925004^Nodule" in segment.GetTerminology()
    display = segmentation.GetDisplayNode()
    assert display.GetVisibility2DFill() and display.GetVisibility3D()
    assert segmentation.GetSegmentation().ContainsRepresentation("Closed surface")
    points = segment_world_points(segmentation, segment_id)
    assert len(points) > 0
    np.testing.assert_allclose(points.mean(axis=0), ct.nodule_ras, atol=3.0)
    indices = grid_indices(points, volume)  # on the CT's voxel centres
    np.testing.assert_allclose(indices, np.round(indices), atol=1e-4)


def test_table_row_equals_result_json_and_nodes_carry_provenance(logic, volume, ct, scene):
    task = analyse(logic, volume, ct.nodule_ras)
    outcome = task.outcomes[0]
    result = json.loads((outcome.outputDir / "result.json").read_text())
    jsonschema.Draft202012Validator(result_schema()).validate(result)  # the stand-in's too
    table = scene.GetNodeByID(outcome.nodeIDs["table"])
    assert table.GetNumberOfRows() == 1
    assert [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())] == [
        name for name, *_ in TABLE_COLUMNS
    ]
    data = table.GetTable()

    def cell(name):
        return data.GetColumnByName(name).GetValue(0)

    assert cell("Probability") == result["probability"]
    assert cell("Uncertainty") == result["uncertainty"]
    assert [cell("Probability low"), cell("Probability high")] == result["probability_interval"]
    assert cell("Label") == result["label"]
    assert cell("Diameter") == result["diameter_mm"]
    assert cell("Volume") == result["volume_ml"]
    assert cell("Calcified") == result["calcified_share"]
    assert [cell("R"), cell("A"), cell("S")] == result["point"]["ras"]
    assert cell("Point") == "P1"
    assert table.GetColumnUnitLabel("Diameter") == "mm"

    for role in ("heatmap", "segmentation", "table"):
        node = scene.GetNodeByID(outcome.nodeIDs[role])
        assert node.GetAttribute("MedCNN.Role") == role
        assert node.GetAttribute("MedCNN.ModelName") == result["model"]["name"]
        assert node.GetAttribute("MedCNN.ModelVersion") == result["model"]["version"]
        assert node.GetAttribute("MedCNN.WeightsSHA256") == result["model"]["weights_sha256"]
        assert node.GetAttribute("MedCNN.EngineVersion") == result["software"]["medcnn"]
        assert node.GetAttribute("MedCNN.InputVolume") == ct.name
        assert node.GetAttribute("MedCNN.InputVolumeID") == volume.GetID()
        point = [float(v) for v in node.GetAttribute("MedCNN.PointRAS").split(",")]
        np.testing.assert_allclose(point, ct.nodule_ras, atol=1e-3)
        assert node.GetAttribute("MedCNN.Time").endswith("+00:00")
        assert "not for clinical use" in node.GetAttribute("MedCNN.Disclaimer")
    heatmap = scene.GetNodeByID(outcome.nodeIDs["heatmap"])
    assert json.loads(heatmap.GetAttribute("MedCNN.Result")) == result


def test_rerun_on_the_same_point_replaces_its_results(logic, phantom, phantom_ct, scene):
    first = analyse(logic, phantom, phantom_ct.nodule_ras).outcomes[0].nodeIDs
    before = node_ids(scene)
    second = analyse(logic, phantom, phantom_ct.nodule_ras).outcomes[0].nodeIDs
    after = node_ids(scene)
    assert len(after) == len(before)
    for role in ("heatmap", "segmentation"):
        assert scene.GetNodeByID(first[role]) is None
        assert scene.GetNodeByID(second[role]) is not None
    assert first["table"] == second["table"]
    assert scene.GetNodeByID(second["table"]).GetNumberOfRows() == 1
    # a second point adds a row and its own nodes; the first point's stay
    other = (phantom_ct.nodule_ras[0] + 20.0, phantom_ct.nodule_ras[1], phantom_ct.nodule_ras[2])
    third = analyse(logic, phantom, other).outcomes[0].nodeIDs
    table = scene.GetNodeByID(third["table"]).GetTable()
    assert table.GetNumberOfRows() == 2
    # each row shows its own result's probability, computed at its point, not one constant
    results = [
        json.loads(scene.GetNodeByID(ids["heatmap"]).GetAttribute("MedCNN.Result"))
        for ids in (second, third)
    ]
    shown = [table.GetColumnByName("Probability").GetValue(row) for row in range(2)]
    assert sorted(shown) == sorted(r["probability"] for r in results)
    assert results[0]["probability"] != results[1]["probability"]
    assert scene.GetNodeByID(second["heatmap"]) is not None
    assert len(logic.resultNodes(role="heatmap")) == 2


def test_error_leaves_the_scene_as_it_was(logic, phantom, phantom_ct, scene):
    analyse(logic, phantom, phantom_ct.nodule_ras)
    before = node_ids(scene)
    mtimes = {i: scene.GetNodeByID(i).GetMTime() for i in before}
    task = analyse(logic, phantom, (5000.0, 0.0, 0.0))
    assert task.succeeded == []
    assert task.failed[0].exitCode == PointOutsideScanError.exit_code
    assert "outside" in task.message
    assert node_ids(scene) == before
    table = logic.resultNodes(role="table")[0]
    assert table.GetNumberOfRows() == 1
    assert all(scene.GetNodeByID(i).GetMTime() == mtimes[i] for i in before if "Table" in i)


def test_failed_import_removes_what_it_had_added(logic, phantom, phantom_ct, scene, monkeypatch):
    before = node_ids(scene)
    real = logic.results._addSegmentation

    def broken(*args, **kwargs):
        real(*args, **kwargs)
        raise RuntimeError("disk full")

    monkeypatch.setattr(logic.results, "_addSegmentation", broken)
    task = analyse(logic, phantom, phantom_ct.nodule_ras)
    assert "could not be loaded into the scene (disk full)" in task.message
    assert node_ids(scene) - before <= {logic.heatColorNode().GetID()}  # shared colour map only


def test_points_from_a_markups_list_are_keyed_by_point(logic, phantom, phantom_ct, scene):
    markups = slicer.vtkMRMLMarkupsFiducialNode()
    scene.AddNode(markups)
    markups.AddControlPoint(*phantom_ct.nodule_ras, "N-1")
    markups.AddControlPoint(5000.0, 0.0, 0.0, "far")
    points = pointsFromMarkups(markups)
    assert [p.label for p in points] == ["N-1", "far"]
    task = logic.analyze(phantom, markups, timeout=60)
    assert [o.error is None for o in task.outcomes] == [True, False]
    result = task.outcomes[0].result
    assert task.message.splitlines()[0].startswith(
        f"N-1: {result['label']}, probability {result['probability']:.2f}"
    )
    assert task.message.splitlines()[1].startswith("far: ")
    # moving the point and re-running replaces N-1's results
    markups.SetNthControlPointPosition(0, *np.add(phantom_ct.nodule_ras, 2.0))
    markups.RemoveNthControlPoint(1)
    logic.analyze(phantom, markups, timeout=60)
    assert len(logic.resultNodes(role="heatmap")) == 1


def test_volume_under_a_transform_is_analysed_in_its_own_coordinates(logic, volume, ct, scene):
    transform = slicer.vtkMRMLLinearTransformNode()
    scene.AddNode(transform)
    matrix = transform.GetMatrixTransformToParent()
    matrix.SetElement(0, 3, 100.0)  # the CT shown 100 mm to the right
    transform.SetMatrixTransformToParent(matrix)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    world = (ct.nodule_ras[0] + 100.0, ct.nodule_ras[1], ct.nodule_ras[2])
    task = analyse(logic, volume, world)
    assert task.failed == []
    np.testing.assert_allclose(task.outcomes[0].result["point"]["ras"], ct.nodule_ras)
    for role in ("heatmap", "segmentation"):
        node = scene.GetNodeByID(task.outcomes[0].nodeIDs[role])
        assert node.GetTransformNodeID() == transform.GetID()


def test_inputs_are_checked_before_anything_runs(logic, phantom, phantom_ct, scene):
    with pytest.raises(AnalysisError, match="Select a volume"):
        logic.startAnalysis(None, [pointFromRAS(phantom_ct.nodule_ras)])
    with pytest.raises(AnalysisError, match="Place a point"):
        logic.startAnalysis(phantom, [])
    empty = slicer.vtkMRMLMarkupsFiducialNode()
    scene.AddNode(empty)
    with pytest.raises(AnalysisError, match="Place a point"):
        logic.startAnalysis(phantom, empty)
    label = slicer.vtkMRMLLabelMapVolumeNode()
    label.SetName("mask")
    label.SetAndObserveImageData(phantom.GetImageData())
    scene.AddNode(label)
    with pytest.raises(AnalysisError, match="not a scalar volume"):
        logic.startAnalysis(label, [pointFromRAS(phantom_ct.nodule_ras)])
    assert logic.runner.pid is None  # nothing was started


def test_cancel_marks_every_remaining_point(scene, phantom, phantom_ct, standin_runner, tmp_path):
    logic = MedCNNLogic(scene, standin_runner("hang"), workDir=tmp_path / "w")
    before = node_ids(scene)
    points = [pointFromRAS(phantom_ct.nodule_ras), pointFromRAS((0, 0, 0))]
    task = logic.startAnalysis(phantom, points)
    assert task.statusText.startswith(f"Writing '{phantom.GetName()}' to the temporary folder")
    task.poll()
    assert task.statusText == f"{points[0].label} (1/2): {STARTING_TITLE}"

    def running() -> bool:
        assert not task.poll(), f"the task ended before it could be cancelled: {task.message}"
        return task.stage in ("network", "child")

    wait_until(running, 30.0, "the stand-in's 'network' stage", lambda: task.stage)
    task.stage = NETWORK.name  # the stand-in may have gone on to its own "child" stage
    assert task.statusText.endswith(f"(1/2): {NETWORK.title}")  # the title the engine said
    task.cancel()
    assert task.done and task.cancelled and task.succeeded == []
    assert [o.exitCode for o in task.outcomes] == [CancelledError.exit_code] * 2
    assert task.message == "The analysis was cancelled."
    assert node_ids(scene) == before
    assert list((tmp_path / "w").rglob("*.nrrd")) == []  # the written CT went with it
    logic.cleanup()
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").rglob("result.json"))


def exported(logic) -> list:
    return sorted((logic.workDir / "input").glob("*.nrrd"))


def test_the_written_volume_lives_as_long_as_its_analysis(logic, phantom, phantom_ct):
    """Written on the task's first poll (the panel says so meanwhile), removed when it ends,
    whether it succeeded, failed or was refused."""
    task = logic.startAnalysis(phantom, [pointFromRAS(phantom_ct.nodule_ras)])
    assert exported(logic) == []
    assert "Writing 'phantom' to the temporary folder" in task.statusText
    task.wait(60)
    assert task.failed == [] and exported(logic) == []
    task = logic.analyze(phantom, [pointFromRAS((5000.0, 0.0, 0.0))], timeout=60)
    assert len(task.failed) == 1 and exported(logic) == []


def test_a_volume_that_cannot_be_written_fails_every_point_in_one_sentence(
    logic, phantom, phantom_ct, monkeypatch
):
    def full_disk(volumeNode):
        raise AnalysisError("'phantom' could not be written; check the free disk space.", "output")

    monkeypatch.setattr(logic, "exportVolume", full_disk)
    points = [pointFromRAS(phantom_ct.nodule_ras), pointFromRAS((0.0, 0.0, 0.0))]
    task = logic.analyze(phantom, points, timeout=10)
    assert [o.error for o in task.outcomes] == [
        "'phantom' could not be written; check the free disk space."
    ] * 2
    assert logic.runner.pid is None  # nothing was sent


def test_a_volume_removed_before_the_first_poll_is_one_message(logic, phantom, phantom_ct, scene):
    task = logic.startAnalysis(phantom, [pointFromRAS(phantom_ct.nodule_ras)])
    scene.RemoveNode(phantom)
    assert task.poll() is True
    assert "removed from the scene" in task.message


def test_the_temporary_folder_is_slicers_when_there_is_one(
    scene, standin_runner, monkeypatch, tmp_path
):
    class App:
        temporaryPath = str(tmp_path / "SlicerTemp")

    monkeypatch.setattr(slicer, "app", App(), raising=False)
    logic = MedCNNLogic(scene, standin_runner())
    try:
        assert logic.workDir.parent == tmp_path / "SlicerTemp"
    finally:
        logic.cleanup()
    assert not logic.workDir.exists()


def test_parameters_round_trip_through_a_settings_store():
    store = SettingsStore()
    Parameters(heatmapOpacity=0.3, heatmapThreshold=0.6, showSegmentation3D=False).save(store)
    store["MedCNN/centerViewsOnNodule"] = "false"  # QSettings gives strings back
    loaded = Parameters.load(store)
    assert loaded == Parameters(0.3, 0.6, False, False)
    store["MedCNN/heatmapOpacity"] = 7
    assert Parameters.load(store).heatmapOpacity == 1.0


def test_a_busy_runner_is_one_clear_message(scene, phantom, phantom_ct, standin_runner, tmp_path):
    runner = standin_runner("hang")
    first = MedCNNLogic(scene, runner, workDir=tmp_path / "a")
    second = MedCNNLogic(scene, runner, workDir=tmp_path / "b")
    task = first.startAnalysis(phantom, [pointFromRAS(phantom_ct.nodule_ras)])
    task.poll()
    other = second.analyze(phantom, [pointFromRAS(phantom_ct.nodule_ras)], timeout=10)
    assert "already running" in other.message
    task.cancel()


def test_only_placed_control_points_are_sent(logic, phantom, phantom_ct, scene):
    markups = slicer.vtkMRMLMarkupsFiducialNode()
    scene.AddNode(markups)
    markups.AddControlPoint(*phantom_ct.nodule_ras, "placed")
    markups.AddControlPoint(0.0, 0.0, 0.0, "being placed")
    markups.AddControlPoint(5000.0, 0.0, 0.0, "skipped")
    markups.UnsetNthControlPointPosition(1)
    markups.SetNthControlPointPositionMissing(2)
    assert [p.label for p in pointsFromMarkups(markups)] == ["placed"]
    task = logic.analyze(phantom, markups, timeout=60)
    assert [o.point.label for o in task.outcomes] == ["placed"] and task.failed == []
    markups.UnsetNthControlPointPosition(0)
    with pytest.raises(AnalysisError, match="no placed point"):
        logic.startAnalysis(phantom, markups)


def test_results_sit_under_the_cts_study_in_the_data_tree(logic, phantom, phantom_ct, scene):
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Patient")
    study = hierarchy.CreateStudyItem(patient, "Chest CT study")
    hierarchy.CreateItem(study, phantom)
    task = analyse(logic, phantom, phantom_ct.nodule_ras)
    assert task.failed == [], task.message
    nodeIDs = task.outcomes[0].nodeIDs
    assert set(nodeIDs) == {"heatmap", "segmentation", "table"}
    for role, nodeID in nodeIDs.items():
        item = hierarchy.GetItemByDataNode(scene.GetNodeByID(nodeID))
        assert item != hierarchy.GetInvalidItemID(), role
        assert hierarchy.GetItemParent(item) == study, role
