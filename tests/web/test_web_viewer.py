"""The web viewer in this process, without a browser: its scene, views and panel state, driven
as a browser drives them (mouse events into the views' interactors, the panel's handlers).

Geometry first: a click at a known pixel of the axial view places the point at the RAS that
the view's own XY-to-RAS matrix gives for that pixel, and the heatmap of the answer is drawn on
screen where that point is, not elsewhere.
"""

from __future__ import annotations

import asyncio
import gc
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip(
    "trame_slicer", reason='the web extra is not installed: pip install -e ".[web]"'
)

from browser_support import heat_mask  # noqa: E402
from slicer_test_support import STANDIN_WORKER, radiograph_matrix  # noqa: E402
from vtkmodules.util.numpy_support import vtk_to_numpy  # noqa: E402
from vtkmodules.vtkCommonCore import vtkCommand  # noqa: E402
from vtkmodules.vtkCommonMath import vtkMatrix4x4  # noqa: E402

from medcnn.errors import InputNotFoundError, UnreadableImageError  # noqa: E402
from medcnn.phantom import NODULE_CENTER_RAS  # noqa: E402
from medcnn.web import viewer as web  # noqa: E402
from medcnn.web.images import node_ids  # noqa: E402

SIZE = (400, 360)  # the axial view's pixels in these tests


@pytest.fixture
def make_viewer(monkeypatch, tmp_path):
    """A viewer (server not started) whose worker is the protocol stand-in."""
    from MedCNNLib.Runner import WorkerRunner

    made = []

    def make(mode: str = "normal") -> web.WebViewer:
        monkeypatch.setenv("STANDIN_MODE", mode)
        runner = WorkerRunner(command=[sys.executable, str(STANDIN_WORKER)])
        viewer = web.WebViewer(
            server=f"medcnn-web-test-{len(made)}", runner=runner, work_dir=tmp_path / "work"
        )
        made.append(viewer)
        return viewer

    yield make
    from trame.app.core import AVAILABLE_SERVERS

    for viewer in made:
        viewer.cleanup()
        AVAILABLE_SERVERS.pop(viewer.server.name, None)
    made.clear()
    gc.collect()  # the scenes and views go now, not in the interpreter's teardown


def axial_view(viewer: web.WebViewer):
    return viewer.slicer_app.view_manager.get_view("Red")


def sized(view, size=SIZE):
    view.render_window().SetSize(*size)
    view.update_size(*size)
    view.interactor().InvokeEvent(vtkCommand.WindowResizeEvent)
    view.render_window().Render()
    return view


def xy_to_ras(view, xy) -> np.ndarray:
    matrix = view.get_view_node().GetXYToRAS()
    m = np.array([[matrix.GetElement(i, j) for j in range(4)] for i in range(4)])
    return (m @ np.array([xy[0], xy[1], 0.0, 1.0]))[:3]


def ras_to_xy(view, ras) -> np.ndarray:
    matrix = view.get_view_node().GetXYToRAS()
    m = np.array([[matrix.GetElement(i, j) for j in range(4)] for i in range(4)])
    return (np.linalg.inv(m) @ np.array([*ras, 1.0]))[:2]


def click(view, xy) -> None:
    """A left click at display pixel ``xy`` (origin bottom left), as the browser's arrives."""
    interactor = view.interactor()
    for event in ("MouseMoveEvent", "LeftButtonPressEvent", "LeftButtonReleaseEvent"):
        interactor.SetEventPosition(int(xy[0]), int(xy[1]))
        interactor.InvokeEvent(getattr(vtkCommand, event))


def screen(view) -> np.ndarray:
    """The view's pixels as rows from the bottom, (height, width, RGB), read from its render
    window as trame-slicer reads what it streams to the browser."""
    from slicer import vtkMRMLLayerDisplayableManager
    from vtkmodules.vtkCommonDataModel import vtkImageData

    view.render_window().Render()
    image = vtkImageData()
    vtkMRMLLayerDisplayableManager.RenderWindowBufferToImage(view.render_window(), image)
    width, height, _ = image.GetDimensions()
    return (
        vtk_to_numpy(image.GetPointData().GetScalars())
        .reshape(height, width, -1)[..., :3]
        .astype(int)
    )


def run(viewer: web.WebViewer, timeout: float = 120.0) -> None:
    """Press Analyze and let the server's loop advance the task until it is done."""

    async def analyse() -> None:
        viewer.analyze_or_cancel()
        waited = 0.0
        while viewer.state.running and waited < timeout:
            await asyncio.sleep(0.05)
            waited += 0.05

    asyncio.run(analyse())
    assert not viewer.state.running, f"the analysis did not end within {timeout} s"


def test_a_click_places_the_point_at_the_ras_of_that_pixel_and_the_heat_lands_there(
    make_viewer,
):
    viewer = make_viewer()
    viewer.open_image(None)  # the phantom, its nodule at the centre of every slice view
    assert viewer.state.image_note.startswith("Synthetic phantom")
    view = sized(axial_view(viewer))
    # through the nodule: the view's plane holds its centre
    np.testing.assert_allclose(xy_to_ras(view, ras_to_xy(view, NODULE_CENTER_RAS))[2], -103.9)

    target = np.add(NODULE_CENTER_RAS, (4.0, -3.0, 0.0))  # off the view's centre on purpose
    pixel = np.round(ras_to_xy(view, target))
    click(view, pixel)

    assert len(viewer.state.points) == 1
    placed = np.array(viewer.state.points[0]["ras"])
    np.testing.assert_allclose(placed, xy_to_ras(view, pixel), atol=0.01)
    mm_per_pixel = np.linalg.norm(xy_to_ras(view, (1, 0)) - xy_to_ras(view, (0, 0)))
    assert np.linalg.norm(placed - target) <= mm_per_pixel  # within a pixel of where we aimed

    viewer.state.threshold = 0.2
    viewer.logic.parameters.centerViewsOnNodule = False  # the view stays as it was clicked
    run(viewer)
    assert viewer.state.error == ""
    assert len(viewer.state.rows) == 1
    assert viewer.state.rows[0]["R"] == f"{placed[0]:.1f}"

    rows, columns = np.nonzero(heat_mask(screen(view)))
    assert len(rows) > 20, "no heat on screen"
    centre = np.array([columns.mean(), rows.mean()])
    distances = np.hypot(columns - pixel[0], rows - pixel[1]) * mm_per_pixel
    # the stand-in's heat is a Gaussian around the point, above the 0.2 threshold within 5.4
    # voxels (0.8 mm): centred on the click, nowhere beyond its reach
    assert np.linalg.norm(centre - pixel) * mm_per_pixel < 1.0, (centre, pixel)
    assert distances.max() < 5.5, distances.max()

    # the panel's sliders: opacity of the heat in every slice view, heat below the threshold gone
    viewer._on_opacity(0.8)
    composites = viewer.slicer_app.scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    opacities = [composites.GetItemAsObject(i).GetForegroundOpacity() for i in range(3)]
    assert opacities == [0.8, 0.8, 0.8]
    viewer._on_threshold(0.5)  # the stand-in's heat is above 0.5 within 3.5 voxels, not 5.4
    assert np.count_nonzero(heat_mask(screen(view))) < 0.7 * len(rows)


def test_re_analysing_a_point_replaces_its_row_and_cancel_stops_a_running_analysis(
    make_viewer,
):
    viewer = make_viewer()
    viewer.open_image(None)
    view = sized(axial_view(viewer))
    click(view, np.round(ras_to_xy(view, NODULE_CENTER_RAS)))
    run(viewer)
    first = viewer.state.rows[0]["Analyzed"]
    run(viewer)
    assert len(viewer.state.rows) == 1 and viewer.state.rows[0]["Analyzed"] >= first
    assert set(viewer.state.outputs) == {"result.json", "heatmap.nii.gz", "segmentation.nii.gz"}

    hanging = make_viewer("hang")
    hanging.open_image(None)
    view = sized(axial_view(hanging))
    click(view, np.round(ras_to_xy(view, NODULE_CENTER_RAS)))

    async def start_then_cancel() -> None:
        hanging.analyze_or_cancel()
        while "Starting" in hanging.state.stage or not hanging.state.stage:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        assert hanging.state.running
        hanging.analyze_or_cancel()  # the same button, now Cancel
        for _ in range(100):
            if not hanging.state.running:
                break
            await asyncio.sleep(0.05)

    asyncio.run(start_then_cancel())
    assert not hanging.state.running
    assert hanging.state.error == ""
    assert "cancelled" in hanging.state.message


def test_a_file_that_is_not_a_scan_says_so_and_leaves_the_scene_as_it_was(make_viewer, tmp_path):
    viewer = make_viewer()
    viewer.open_image(None)
    before = node_ids(viewer.slicer_app.scene)
    viewer._on_upload([{"name": "notes.txt", "content": b"not an image at all\n" * 50}])
    assert viewer.state.error == (
        "notes.txt is not an image MedCNN can read (a DICOM series or file, NIfTI, NRRD, "
        "MetaImage, PNG or JPEG); the scene is unchanged."
    )
    assert node_ids(viewer.slicer_app.scene) == before
    assert viewer.state.image_name == "Synthetic phantom"

    with pytest.raises(InputNotFoundError):
        viewer.open_image(tmp_path / "missing.nrrd")
    (tmp_path / "broken.nrrd").write_bytes(b"NRRD0004\ntype: short\n")
    with pytest.raises(UnreadableImageError):
        viewer.open_image(tmp_path / "broken.nrrd")
    assert node_ids(viewer.slicer_app.scene) == before


def test_a_radiograph_shows_in_one_view_and_needs_no_point(make_viewer, tmp_path):
    from slicer_test_support import write_nrrd

    rng = np.random.default_rng(0)
    film = (rng.random((128, 112, 1)) * 1000).astype(np.int16)
    path = write_nrrd(film, radiograph_matrix(), tmp_path / "film.nrrd")
    viewer = make_viewer()
    viewer.open_image(path)
    assert viewer.layout_manager.layout_id == web.SINGLE_VIEW_LAYOUTS["Coronal"]
    assert viewer.state.point_needed is False
    assert "no point is needed" in viewer.state.hint

    run(viewer)  # Analyze, no point: the whole radiograph
    assert viewer.state.error == ""
    (row,) = viewer.state.rows
    assert row["Model"] == "chest_xray_pneumonia" and row["Point"] == "" and row["R"] == ""
    coronal = viewer.slicer_app.view_manager.get_view("Green")
    heatmap_id = coronal.get_foreground_volume_id()
    assert (
        heatmap_id
        and viewer.slicer_app.scene.GetNodeByID(heatmap_id).GetAttribute("MedCNN.Role") == "heatmap"
    )


def test_an_uploaded_scan_replaces_the_image_and_its_points(make_viewer, tmp_path):
    from slicer_test_support import write_nrrd

    from medcnn.phantom import synthetic_chest

    volume = synthetic_chest()
    scan = write_nrrd(volume.array, volume.affine, tmp_path / "phantom.nrrd")
    viewer = make_viewer()
    viewer.open_image(None)
    view = sized(axial_view(viewer))
    click(view, np.round(ras_to_xy(view, NODULE_CENTER_RAS)))
    assert len(viewer.state.points) == 1
    old = viewer.image.node.GetID()
    viewer._on_upload([{"name": "../../phantom.nrrd", "content": scan.read_bytes()}])
    assert viewer.state.error == ""
    assert viewer.state.image_name.startswith("phantom") and viewer.state.image_note == ""
    assert viewer.slicer_app.scene.GetNodeByID(old) is None
    assert viewer.state.points == [] and viewer.state.rows == []
    assert (viewer.work_dir / "uploads" / "1" / "phantom.nrrd").is_file()  # no way out


def test_listening_beyond_this_machine_says_there_is_no_authentication():
    assert web.no_authentication_warning("127.0.0.1") is None
    warning = web.no_authentication_warning("0.0.0.0")
    assert warning is not None and "there is no authentication" in warning


@pytest.mark.parametrize(
    ("content", "code", "sentence"),
    [
        (None, 3, "does not exist."),
        (b"not an image\n", 4, "is not an image MedCNN can read"),
    ],
)
def test_medcnn_web_refuses_an_image_it_cannot_open_in_one_sentence(
    tmp_path, content, code, sentence
):
    import subprocess

    image = tmp_path / "scan.nrrd"
    if content is not None:
        image.write_bytes(content)
    done = subprocess.run(
        [sys.executable, "-m", "medcnn", "web", str(image), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == code, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("medcnn: error: ") and sentence in last


def test_the_wheel_scrolls_slices_and_a_drag_sets_window_level_when_not_placing(make_viewer):
    viewer = make_viewer()
    viewer.open_image(None)
    view = sized(axial_view(viewer))
    interactor = view.interactor()
    slice_node = view.get_view_node()
    offset = slice_node.GetSliceOffset()
    interactor.SetEventPosition(200, 180)
    interactor.InvokeEvent(vtkCommand.MouseWheelForwardEvent)
    assert slice_node.GetSliceOffset() != offset

    viewer.state.placing = False
    viewer._on_placing(False)
    display = viewer.image.node.GetScalarVolumeDisplayNode()
    window, level = display.GetWindow(), display.GetLevel()
    interactor.SetEventPosition(200, 180)
    interactor.InvokeEvent(vtkCommand.LeftButtonPressEvent)
    for step in range(1, 6):
        interactor.SetEventPosition(200 + 10 * step, 180 + 8 * step)
        interactor.InvokeEvent(vtkCommand.MouseMoveEvent)
    interactor.InvokeEvent(vtkCommand.LeftButtonReleaseEvent)
    assert (display.GetWindow(), display.GetLevel()) != (window, level)
    assert viewer.state.points == []  # no point placed by the drag


def test_the_engines_sentence_is_shown_when_it_refuses_a_point(make_viewer):
    viewer = make_viewer()
    viewer.open_image(None)
    view = sized(axial_view(viewer))
    click(view, (2, 2))  # the view's corner: beyond the phantom's edge
    (point,) = viewer.state.points
    run(viewer)
    assert viewer.state.error == (
        f"The point {[round(v, 1) for v in point['ras']]} (RAS mm) lies outside the scan."
    )
    assert viewer.state.rows == []


def test_medcnn_web_on_a_port_in_use_says_so_in_one_sentence():
    import socket
    import subprocess

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "medcnn", "web", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"medcnn: error: Port {port} on 127.0.0.1 is already in use; choose another with "
        "--port (0 picks a free one)."
    )


def test_a_dicom_folder_opens_where_the_engine_places_it(make_viewer):
    """The phantom's DICOM series, read by MRML's DICOM reader: the nodule's centre (RAS, as
    the engine places it) falls on the nodule's voxels (soft tissue, not lung)."""
    from medcnn.app.demo import ensure_phantom
    from medcnn.phantom import HU_LUNG, HU_NODULE

    viewer = make_viewer()
    viewer.open_image(Path(ensure_phantom()["dicom_dir"]))
    node = viewer.image.node
    matrix = vtkMatrix4x4()
    node.GetRASToIJKMatrix(matrix)
    ijk = [round(v) for v in matrix.MultiplyPoint((*NODULE_CENTER_RAS, 1.0))[:3]]
    value = node.GetImageData().GetScalarComponentAsDouble(*ijk, 0)
    assert abs(value - HU_NODULE) < abs(value - HU_LUNG), value
    assert viewer.state.point_needed is True


@pytest.mark.slow
def test_a_dicom_series_results_download_as_dicom_in_its_study(tmp_path):
    """With "Also as DICOM", the real worker reads the opened series' own files and its SEG,
    Parametric Map and SR are offered with the other outputs, in the source's study; a volume
    not opened from DICOM is refused in the logic's sentence."""
    import pydicom
    from trame.app.core import AVAILABLE_SERVERS

    from medcnn.app.demo import ensure_phantom

    phantom = ensure_phantom()
    viewer = web.WebViewer(server="medcnn-web-test-dicom", work_dir=tmp_path / "work")
    try:
        viewer.open_image(Path(phantom["dicom_dir"]))
        sources = sorted(Path(phantom["dicom_dir"]).glob("*.dcm"))
        marked = viewer.image.node.GetAttribute("DICOM.instanceUIDs").split()
        assert len(marked) == len(sources)
        viewer.state.save_dicom = True
        viewer._on_save_dicom(True)
        viewer.place_point(NODULE_CENTER_RAS)
        run(viewer, timeout=300)
        assert viewer.state.error == ""
        assert {"segmentation.dcm", "heatmap.dcm", "report.dcm"} <= set(viewer.state.outputs)
        source = pydicom.dcmread(sources[0], stop_before_pixels=True)
        for name in ("segmentation.dcm", "heatmap.dcm", "report.dcm"):
            written = pydicom.dcmread(viewer.outputs[name], stop_before_pixels=True)
            assert written.StudyInstanceUID == source.StudyInstanceUID, name
            assert written.SeriesInstanceUID != source.SeriesInstanceUID, name
            assert viewer.dicom_files.fileForInstance(written.SOPInstanceUID), name

        viewer.open_image(Path(phantom["nifti"]))  # not DICOM: refused, in one sentence
        viewer.place_point(NODULE_CENTER_RAS)
        viewer.analyze_or_cancel()
        assert "was not loaded from DICOM" in viewer.state.error
    finally:
        viewer.cleanup()
        AVAILABLE_SERVERS.pop(viewer.server.name, None)
        gc.collect()
