"""End to end as in Slicer: real scans loaded into a real MRML scene through storage nodes, the
real ``python -m medcnn.app.worker`` with the shipped model behind the same runner the module uses,
results imported as MRML nodes. Slow (model loading and inference on CPU); CI runs them.

Set ``MEDCNN_BUNDLE`` to run them against another bundle (the engine's own override)."""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np
import pytest
from slicer_test_support import CHEST_LUNG_RAS, LUNG1_NODULE_RAS, SLICER_CORE_MISSING, pid_alive

slicer = pytest.importorskip("slicer", reason=SLICER_CORE_MISSING)

from MedCNNLib.AnalysisLogic import MedCNNLogic, pointFromRAS  # noqa: E402
from MedCNNLib.Runner import AnalysisRequest, WorkerRunner  # noqa: E402
from slicer_scene_support import (  # noqa: E402
    grid_indices,
    ijk_to_ras,
    load_labelmap,
    load_volume,
    segment_world_points,
    voxel_array,
    world_points,
)

from medcnn.bundle import default_bundle_dir  # noqa: E402
from medcnn.catalog import installed_models  # noqa: E402
from medcnn.errors import (  # noqa: E402
    EXIT_CODES_BY_NAME,
    CancelledError,
    NotCTError,
    PointOutsideScanError,
)
from medcnn.stages import STAGES as ENGINE_STAGES  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.data]
STAGES = [stage.name for stage in ENGINE_STAGES if stage.name != "done"]
TIMEOUT = 900.0


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
    for path in sorted((tmp_path / "work").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()


def node_ids(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def assert_on_source_grid(overlay, source) -> None:
    """The overlay's voxel centres are the source's: same axes and spacing, integer offsets,
    checked at the overlay's corners through both nodes' IJK-to-RAS matrices."""
    source_matrix, overlay_matrix = ijk_to_ras(source), ijk_to_ras(overlay)
    np.testing.assert_allclose(overlay_matrix[:3, :3], source_matrix[:3, :3], atol=1e-5)
    dims = np.array(overlay.GetImageData().GetDimensions())
    corners = np.array(
        [[i, j, k] for i in (0, dims[0] - 1) for j in (0, dims[1] - 1) for k in (0, dims[2] - 1)]
    )
    world = world_points(corners, overlay_matrix)
    in_source = grid_indices(world, source)
    np.testing.assert_allclose(in_source, np.round(in_source), atol=1e-3)
    np.testing.assert_allclose(world_points(np.round(in_source), source_matrix), world, atol=1e-3)
    source_dims = np.array(source.GetImageData().GetDimensions())
    assert np.all(np.round(in_source) >= 0) and np.all(np.round(in_source) < source_dims)


def test_runner_reports_the_real_stages_and_reuses_its_worker(runner, shared_data, tmp_path):
    image = shared_data / "ct" / "lung1" / "lung1_image.nrrd"
    first = runner.submit(AnalysisRequest(str(image), LUNG1_NODULE_RAS, str(tmp_path / "a")))
    events = first.wait(TIMEOUT)
    pid = runner.pid
    assert events[-1].kind == "result", events[-1].message
    stages = [e.stage for e in events if e.kind == "progress"]
    assert [s for s in stages if s in STAGES] == STAGES
    fractions = [e.fraction for e in events if e.kind == "progress"]
    assert fractions == sorted(fractions)
    loaded = {model["id"]: model for model in runner.models}  # every installed model
    assert (
        loaded["lung_nodule_ct"]["weights_sha256"] == events[-1].result["model"]["weights_sha256"]
    )
    assert events[-1].result["model"]["id"] == "lung_nodule_ct"
    # the engine's hello: its stages, exit codes and models, as the engine defines them
    assert runner.hello.stages == [stage.name for stage in ENGINE_STAGES]
    assert runner.hello.exitCodes == EXIT_CODES_BY_NAME
    assert [model.id for model in runner.hello.models] == list(installed_models())
    assert runner.hello.modelById("lung_nodule_ct").needsPoint

    second = runner.submit(AnalysisRequest(str(image), LUNG1_NODULE_RAS, str(tmp_path / "b")))
    events = second.wait(TIMEOUT)
    assert events[-1].kind == "result"
    assert "starting" not in [e.stage for e in events]
    assert runner.pid == pid and pid_alive(pid)


def test_lung1_in_the_scene(logic, scene, shared_data):
    folder = shared_data / "ct" / "lung1"
    volume = load_volume(scene, folder / "lung1_image.nrrd", "lung1")
    task = logic.analyze(volume, [pointFromRAS(LUNG1_NODULE_RAS, "N1")], TIMEOUT)
    assert task.failed == [], task.message
    outcome = task.outcomes[0]
    result = json.loads((outcome.outputDir / "result.json").read_text())
    heatmap = scene.GetNodeByID(outcome.nodeIDs["heatmap"])
    segmentation = scene.GetNodeByID(outcome.nodeIDs["segmentation"])
    table = scene.GetNodeByID(outcome.nodeIDs["table"])

    # heatmap: on the CT's grid, heat colours, values as written
    assert_on_source_grid(heatmap, volume)
    assert heatmap.GetDisplayNode().GetColorNodeID() == logic.heatColorNode().GetID()
    heat = voxel_array(heatmap.GetImageData())
    assert heat.dtype == np.float32 and 0.0 <= heat.min() and heat.max() <= 1.0

    # segmentation: the nodule where the radiologists' label is
    label = load_labelmap(folder / "lung1_label.nrrd")
    label_ijk = np.argwhere(voxel_array(label.GetImageData()) > 0)
    label_points = world_points(label_ijk, ijk_to_ras(label))
    segment_id = segmentation.GetSegmentation().GetNthSegmentID(0)
    nodule_points = segment_world_points(segmentation, segment_id)
    assert len(nodule_points) > 0
    np.testing.assert_allclose(
        nodule_points.mean(axis=0), label_points.mean(axis=0), atol=5.0
    )  # centroids within 5 mm
    nodule_voxels = {tuple(v) for v in np.round(grid_indices(nodule_points, volume)).astype(int)}
    label_voxels = {tuple(v) for v in np.round(grid_indices(label_points, volume)).astype(int)}
    covered = len(nodule_voxels & label_voxels) / len(label_voxels)
    dice = 2 * len(nodule_voxels & label_voxels) / (len(nodule_voxels) + len(label_voxels))
    assert covered >= 0.5 and dice >= 0.4, f"label covered {covered:.2f}, Dice {dice:.2f}"

    # table and provenance: exactly result.json
    data = table.GetTable()
    assert table.GetNumberOfRows() == 1
    assert data.GetColumnByName("Probability").GetValue(0) == result["probability"]
    assert data.GetColumnByName("Uncertainty").GetValue(0) == result["uncertainty"]
    assert data.GetColumnByName("Label").GetValue(0) == result["label"]
    assert data.GetColumnByName("Diameter").GetValue(0) == result["diameter_mm"]
    assert data.GetColumnByName("Volume").GetValue(0) == result["volume_ml"]
    assert data.GetColumnByName("Calcified").GetValue(0) == result["calcified_share"]
    assert data.GetColumnByName("Model").GetValue(0) == result["model"]["id"] == "lung_nodule_ct"
    point = [data.GetColumnByName(axis).GetValue(0) for axis in "RAS"]
    assert point == result["point"]["ras"]
    weights = default_bundle_dir() / "models" / "model.pt"
    sha256 = hashlib.sha256(weights.read_bytes()).hexdigest()
    for node in (heatmap, segmentation, table):
        assert node.GetAttribute("MedCNN.WeightsSHA256") == sha256
        assert sha256 == result["model"]["weights_sha256"]
        assert node.GetAttribute("MedCNN.ModelName") == result["model"]["name"]
        assert node.GetAttribute("MedCNN.ModelVersion") == result["model"]["version"]
        assert node.GetAttribute("MedCNN.EngineVersion") == result["software"]["medcnn"]
        assert node.GetAttribute("MedCNN.InputVolume") == "lung1"
        assert node.GetAttribute("MedCNN.Time")

    # re-run on the same point: replaced, not piled up
    before = node_ids(scene)
    again = logic.analyze(volume, [pointFromRAS(LUNG1_NODULE_RAS, "N1")], TIMEOUT)
    assert again.failed == []
    assert len(node_ids(scene)) == len(before)
    assert scene.GetNodeByID(outcome.nodeIDs["heatmap"]) is None
    assert table.GetNumberOfRows() == 1

    # a point outside the scan: one clear message, nothing added, nothing lost
    before = node_ids(scene)
    failed = logic.analyze(volume, [pointFromRAS((5000.0, 0.0, 0.0), "out")], TIMEOUT)
    assert failed.succeeded == [] and failed.failed[0].exitCode == PointOutsideScanError.exit_code
    assert failed.message.startswith("out: ") and "outside" in failed.message
    assert node_ids(scene) == before


def test_a_mask_is_refused_as_not_a_ct(logic, scene, shared_data):
    """A 0/1 volume (a mask loaded as a scalar volume) is refused by the engine: one message,
    the engine's exit code, nothing added to the scene."""
    mask = load_volume(scene, shared_data / "ct" / "lung1" / "lung1_label.nrrd", "mask")
    before = node_ids(scene)
    task = logic.analyze(mask, [pointFromRAS(LUNG1_NODULE_RAS, "N1")], TIMEOUT)
    assert task.succeeded == []
    assert task.failed[0].exitCode == NotCTError.exit_code, task.message
    assert node_ids(scene) == before


def test_dicom_series_in_the_scene(logic, scene, shared_data):
    from medcnn.reading import read_scan

    folder = shared_data / "ct" / "chest_ct_dicom"
    volume = load_volume(scene, sorted(folder.glob("*.dcm")), "chest")
    # MRML's DICOM reading and the engine's agree on where every voxel is
    engine_scan = read_scan(folder)
    np.testing.assert_allclose(ijk_to_ras(volume), engine_scan.affine, atol=1e-3)

    task = logic.analyze(volume, [pointFromRAS(CHEST_LUNG_RAS, "L1")], TIMEOUT)
    assert task.failed == [], task.message
    outcome = task.outcomes[0]
    assert_on_source_grid(scene.GetNodeByID(outcome.nodeIDs["heatmap"]), volume)
    result = json.loads((outcome.outputDir / "result.json").read_text())
    table = scene.GetNodeByID(outcome.nodeIDs["table"])
    assert table.GetTable().GetColumnByName("Probability").GetValue(0) == result["probability"]
    np.testing.assert_allclose(result["point"]["ras"], CHEST_LUNG_RAS, atol=1e-3)


def test_cancel_ends_the_real_worker_and_the_next_request_restarts_it(shared_data, tmp_path):
    runner = WorkerRunner()
    try:
        image = shared_data / "ct" / "lung1" / "lung1_image.nrrd"
        job = runner.submit(AnalysisRequest(str(image), LUNG1_NODULE_RAS, str(tmp_path / "a")))
        deadline = time.monotonic() + TIMEOUT
        seen = []
        while "network" not in seen:
            assert time.monotonic() < deadline, f"no 'network' stage within {TIMEOUT} s: {seen}"
            seen += [e.stage for e in job.poll() if e.kind == "progress"]
            time.sleep(0.02)
        pid = runner.pid
        job.cancel()
        assert job.poll()[-1].exitCode == CancelledError.exit_code
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(pid)
        assert not (tmp_path / "a" / "result.json").exists()

        events = runner.submit(
            AnalysisRequest(str(image), LUNG1_NODULE_RAS, str(tmp_path / "b"))
        ).wait(TIMEOUT)
        assert events[0].stage == "starting" and events[-1].kind == "result"
        assert runner.pid != pid
    finally:
        runner.shutdown()
