"""The web viewer: Slicer's scene and views served by trame-slicer, with a panel that drives the
extension's ``MedCNNLogic`` exactly as the Slicer panel (``MedCNNLib.Widget``) does.

Only the widgets are new here. What a request needs, the worker, the stages, results into the
scene, the heat colours and the results table are the logic's (``MedCNNLib``); points are
placed by Slicer's own markups interaction in the slice views; the running task is advanced by
``poll`` from an asyncio loop instead of a Qt timer, so the server never waits for the engine.
"""

from __future__ import annotations

import asyncio
import errno
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

from medcnn.errors import MedCNNError, UsageError
from medcnn.phantom import NODULE_CENTER_RAS
from medcnn.web.images import LoadedImage, load_image, load_phantom, save_upload
from medcnn.web.setup import extension_library, use_offscreen_rendering

use_offscreen_rendering()

from slicer import vtkMRMLInteractionNode, vtkMRMLMarkupsNode  # noqa: E402
from trame.app import TrameApp  # noqa: E402
from trame.ui.vuetify3 import SinglePageWithDrawerLayout  # noqa: E402
from trame.widgets import html  # noqa: E402
from trame.widgets import vuetify3 as v3  # noqa: E402
from trame_server import Server  # noqa: E402
from trame_slicer import module as trame_slicer_module  # noqa: E402
from trame_slicer.core import LayoutManager, SlicerApp  # noqa: E402
from trame_slicer.rca_view import register_rca_factories  # noqa: E402
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition  # noqa: E402

extension_library()
from MedCNNLib.AnalysisLogic import AnalysisError, MedCNNLogic  # noqa: E402
from MedCNNLib.ResultImport import (  # noqa: E402
    ROLE_TABLE,
    TABLE_COLUMNS,
    removeNodeWithDependents,
)
from MedCNNLib.Runner import InferenceRunner  # noqa: E402
from MedCNNLib.TaskLogic import AnalysisTask, isTwoDimensional, pointsFromMarkups  # noqa: E402

from medcnn.web.dicom_files import DicomFiles  # noqa: E402

POLL_SECONDS = 0.1  # the Slicer panel polls every 100 ms too
ENGINE_WAIT_SECONDS = 60.0  # the models are awaited this long, then at each analysis
CT_LAYOUT = "Axial, 3D, coronal, sagittal"
# A radiograph is one slice: it is shown alone, in the view whose plane holds it.
SINGLE_VIEW_LAYOUTS = {
    "Axial": "Axial only",
    "Coronal": "Coronal only",
    "Sagittal": "Sagittal only",
}
OUTPUT_TYPES = {".json": "application/json", ".gz": "application/gzip", ".png": "image/png"}
# How the results table shows a number, by its column's unit (TABLE_COLUMNS)
NUMBER_FORMATS = {"mm": "{:.1f}", "mL": "{:.2f}", "": "{:.3f}"}
POINT_COLOR = (0.2, 0.8, 1.0)  # cyan: points stand apart from the heat and the nodule's green
DISCLAIMER = "Research software: not a medical device, not for clinical use or diagnosis."


def layouts() -> dict[str, Layout]:
    axial = ViewLayoutDefinition.axial_view()
    coronal = ViewLayoutDefinition.coronal_view()
    sagittal = ViewLayoutDefinition.sagittal_view()
    three_d = ViewLayoutDefinition.threed_view()
    single = {"Axial": axial, "Coronal": coronal, "Sagittal": sagittal}
    return {
        CT_LAYOUT: Layout(
            LayoutDirection.Horizontal,
            [axial, Layout(LayoutDirection.Vertical, [three_d, coronal, sagittal])],
        ),
        **{
            name: Layout(LayoutDirection.Vertical, [single[orientation]])
            for orientation, name in SINGLE_VIEW_LAYOUTS.items()
        },
    }


def format_cell(value: Any, unit: str) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else NUMBER_FORMATS.get(unit, "{:.3f}").format(value)
    return str(value)


def table_rows(table_node: Any) -> list[dict[str, str]]:
    """The MRML results table as the browser shows it: one dict a row, keyed by column."""
    if table_node is None:
        return []
    table = table_node.GetTable()
    rows = []
    for row in range(table.GetNumberOfRows()):
        cells = {}
        for name, kind, unit, _ in TABLE_COLUMNS:
            column = table.GetColumnByName(name)
            if column is None:
                continue
            value = column.GetValue(row)
            cells[name] = format_cell(float(value) if kind == "double" else value, unit)
        rows.append(cells)
    return rows


def slice_orientation_of(volume_node: Any) -> str:
    """The slice view orientation whose plane holds a one-slice volume: the view's normal is
    the volume's thin axis."""
    dims = volume_node.GetImageData().GetDimensions()
    thin = dims.index(1) if 1 in dims else 2
    directions = [[0.0] * 3 for _ in range(3)]
    volume_node.GetIJKToRASDirections(directions)
    normal = [abs(directions[row][thin]) for row in range(3)]
    return ("Sagittal", "Coronal", "Axial")[normal.index(max(normal))]


class WebViewer(TrameApp):
    """MedCNN in the browser: one scene, its views, and the logic of the Slicer extension.

    ``runner`` replaces the persistent worker (tests); ``work_dir`` holds the exported volume
    and the outputs of each analysis (kept for download), a temporary folder by default.
    """

    def __init__(
        self,
        server: Server | str | None = None,
        runner: InferenceRunner | None = None,
        work_dir: Path | None = None,
    ) -> None:
        super().__init__(server)
        self.server.enable_module(trame_slicer_module)
        self.slicer_app = SlicerApp()
        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.layout_manager = LayoutManager(
            self.slicer_app.scene, self.slicer_app.view_manager, self.server
        )
        self.layout_manager.register_layout_dict(layouts())
        self.layout_manager.set_layout(CT_LAYOUT)

        self._owns_work_dir = work_dir is None
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="MedCNN-web-"))
        self.dicom_files = DicomFiles()  # what the DICOM results need: the original files
        self.logic = MedCNNLogic(
            self.slicer_app.scene,
            runner,
            workDir=self.work_dir / "logic",
            keepOutputs=True,
            dicomDatabase=self.dicom_files,
        )
        self.points = self.slicer_app.scene.AddNewNodeByClass(
            "vtkMRMLMarkupsFiducialNode", "Points"
        )
        self.points.CreateDefaultDisplayNodes()
        for set_color in ("SetColor", "SetSelectedColor"):  # apart from the heat's red-yellow
            getattr(self.points.GetDisplayNode(), set_color)(*POINT_COLOR)
        for event in (
            vtkMRMLMarkupsNode.PointPositionDefinedEvent,
            vtkMRMLMarkupsNode.PointModifiedEvent,
            vtkMRMLMarkupsNode.PointRemovedEvent,
        ):
            self.points.AddObserver(event, self._on_points_changed)
        self.image: LoadedImage | None = None
        self.task: AnalysisTask | None = None
        self.outputs: dict[str, Path] = {}
        self._uploads = 0

        parameters = self.logic.parameters
        self.state.update(
            {
                "image_name": "",
                "image_note": "",
                "hint": "",
                "error": "",
                "message": "",
                "running": False,
                "progress": 0,
                "stage": "",
                "points": [],
                "point_needed": True,
                "placing": True,
                "columns": [
                    {"name": name, "unit": unit, "description": description}
                    for name, _, unit, description in TABLE_COLUMNS
                ],
                "rows": [],
                "outputs": [],
                "models": [],
                "model": parameters.model,
                "opacity": parameters.heatmapOpacity,
                "threshold": parameters.heatmapThreshold,
                "save_dicom": parameters.saveDicom,
                "upload": None,
            }
        )
        self.state.change("opacity")(self._on_opacity)
        self.state.change("threshold")(self._on_threshold)
        self.state.change("model")(self._on_model)
        self.state.change("save_dicom")(self._on_save_dicom)
        self.state.change("placing")(self._on_placing)
        self.state.change("upload")(self._on_upload)
        self._build_ui()
        self.server.controller.on_server_ready.add(self._start_engine)

    # -- images --------------------------------------------------------------------------------

    def open_image(self, path: Path | None) -> None:
        """Show ``path`` (the phantom when None), replacing the image shown, its points and
        results; a failure raises and leaves the scene as it was."""
        if path is not None:
            self._show(
                load_image(
                    self.slicer_app, path, self.work_dir / "pictures", dicom_files=self.dicom_files
                )
            )
            return
        self._show(load_phantom(self.slicer_app, self.work_dir / "pictures"))
        self.jump_to(NODULE_CENTER_RAS)  # the phantom's nodule at every slice view's centre

    def _show(self, loaded: LoadedImage) -> None:
        if self.task is not None and not self.task.done:
            self.task.cancel()
        previous = self.image
        if previous is not None and previous.node is not loaded.node:
            self._remove_results(previous.node.GetID())
            self.slicer_app.scene.RemoveNode(previous.node)
        self.image = loaded
        self.points.RemoveAllControlPoints()
        self.slicer_app.display_manager.show_volume_in_slice_background(loaded.node)
        self.slicer_app.display_manager.show_volume_in_slice_foreground(None)
        two_d = isTwoDimensional(loaded.node)
        self.layout_manager.set_layout(
            SINGLE_VIEW_LAYOUTS[slice_orientation_of(loaded.node)] if two_d else CT_LAYOUT
        )
        for view in self.slicer_app.view_manager.get_slice_views():
            view.fit_view_to_content()
            view.set_visible_in_3d(True)  # the 3D view shows where the slices cut
        for view in self.slicer_app.view_manager.get_threed_views():
            view.reset_view()
        self.outputs = {}
        with self.state:
            self.state.image_name = loaded.name
            self.state.image_note = loaded.note
            self.state.rows = []
            self.state.outputs = []
            self.state.message = ""
        self._update_inputs()

    def place_point(self, ras: tuple[float, float, float]) -> None:
        """A point at ``ras`` (world mm), as a click there places it, the views centred on it."""
        self.points.AddControlPointWorld(*(float(v) for v in ras))
        self.jump_to(ras)
        self._update_inputs()

    def jump_to(self, ras: tuple[float, float, float]) -> None:
        """Every slice view through ``ras``, centred on it (as Slicer's Jump to point)."""
        import slicer

        slicer.vtkMRMLSliceNode.JumpAllSlices(
            self.slicer_app.scene, *ras, slicer.vtkMRMLSliceNode.CenteredJumpSlice
        )

    def _on_upload(self, upload: Any = None, **_: Any) -> None:
        if not upload:
            return
        files = upload if isinstance(upload, list) else [upload]
        self._uploads += 1
        folder = self.work_dir / "uploads" / str(self._uploads)
        with self.state:
            self.state.error = ""
            try:
                upload = save_upload(files, folder)
                self._show(
                    load_image(
                        self.slicer_app,
                        upload,
                        self.work_dir / "pictures",
                        dicom_files=self.dicom_files,
                    )
                )
            except MedCNNError as error:
                self.state.error = str(error)
                shutil.rmtree(folder, ignore_errors=True)
            self.state.upload = None

    # -- inputs ----------------------------------------------------------------------------------

    def _update_inputs(self) -> None:
        node = self.image.node if self.image is not None else None
        needed = self.logic.pointNeeded(node)
        with self.state:
            self.state.point_needed = needed
            self.state.hint = self.logic.inputHint(node)
            self.state.points = [
                {"label": point.label, "ras": [round(v, 2) for v in point.ras]}
                for point in pointsFromMarkups(self.points)
            ]
        self._set_place_mode(needed and self.state.placing)

    def _set_place_mode(self, placing: bool) -> None:
        """A left click places a point; otherwise a left drag sets window/level (Slicer's
        window/level mouse mode); the wheel scrolls the slices in both."""
        markups = self.slicer_app.markups_logic
        if placing:
            markups.place_node(self.points, persistent=True)
        else:
            markups.interaction_node.SetCurrentInteractionMode(
                vtkMRMLInteractionNode.AdjustWindowLevel
            )

    def _on_points_changed(self, *_: Any) -> None:
        self._update_inputs()

    def _on_placing(self, placing: bool = True, **_: Any) -> None:
        self._set_place_mode(bool(placing) and self.state.point_needed)

    def clear_points(self) -> None:
        self.points.RemoveAllControlPoints()
        self._update_inputs()

    def _on_save_dicom(self, save_dicom: bool = False, **_: Any) -> None:
        self.logic.parameters.saveDicom = bool(save_dicom)

    def _on_model(self, model: str = "", **_: Any) -> None:
        self.logic.parameters.model = model or ""
        self._update_inputs()

    def _start_engine(self, **_: Any) -> None:
        """Once serving: start the worker, which lists its models at once and then loads them
        while the user places points (a request starts it too, if it is not running)."""
        self.logic.startEngine()
        asyncio.ensure_future(self._watch_engine())

    async def _watch_engine(self) -> None:
        waited = 0.0
        while not self.logic.updateEngine() and waited < ENGINE_WAIT_SECONDS:
            await asyncio.sleep(POLL_SECONDS)
            waited += POLL_SECONDS
        with self.state:
            self.state.models = [
                {"title": choice.title, "value": choice.id} for choice in self.logic.modelChoices()
            ]
        self._update_inputs()

    # -- analysis --------------------------------------------------------------------------------

    def analyze_or_cancel(self) -> None:
        if self.task is not None and not self.task.done:
            self.task.cancel()
            return
        node = self.image.node if self.image is not None else None
        with self.state:
            self.state.error = ""
            self.state.message = ""
            try:
                self.task = self.logic.startAnalysis(node, self.points)
            except AnalysisError as error:
                self.state.error = str(error)
                return
            self.state.running = True
            self.state.progress = 0
            self.state.stage = self.task.statusText
        asyncio.ensure_future(self._follow(self.task))

    async def _follow(self, task: AnalysisTask) -> None:
        """Advance the task from the server's loop, as the panel's timer does in Slicer."""
        while True:
            done = task.poll()
            with self.state:
                self.state.progress = round(100 * task.progress)
                self.state.stage = task.statusText
                if done:
                    self._finished(task)
            if done:
                return
            await asyncio.sleep(POLL_SECONDS)

    def _finished(self, task: AnalysisTask) -> None:
        self.state.running = False
        self.state.message = task.message
        errors = [outcome.error for outcome in task.failed if not outcome.cancelled]
        self.state.error = "\n".join(str(error) for error in errors)
        self.state.rows = table_rows(self._table_node())
        kept = [outcome for outcome in task.succeeded if outcome.outputDir is not None]
        if kept:
            folder = Path(kept[-1].outputDir)
            self.outputs = {path.name: path for path in sorted(folder.iterdir()) if path.is_file()}
            self.state.outputs = list(self.outputs)

    def _table_node(self) -> Any:
        if self.image is None:
            return None
        volume_id = self.image.node.GetID()
        for node in self.logic.resultNodes(role=ROLE_TABLE):
            if node.GetAttribute("MedCNN.InputVolumeID") == volume_id:
                return node
        return None

    def clear_results(self) -> None:
        """Remove MedCNN's results of the image shown from the scene (heatmaps, segments,
        table); its points stay."""
        if (self.task is not None and not self.task.done) or self.image is None:
            return
        self._remove_results(self.image.node.GetID())
        self.outputs = {}
        with self.state:
            self.state.rows = []
            self.state.outputs = []
            self.state.message = ""

    def _remove_results(self, volume_id: str) -> None:
        for node in self.logic.resultNodes():
            if node.GetAttribute("MedCNN.InputVolumeID") == volume_id:
                removeNodeWithDependents(self.slicer_app.scene, node)

    def download(self, name: str) -> Any:
        """One output file of the latest analysis, as an attachment for the browser."""
        path = self.outputs.get(str(name))
        if path is None or not path.exists():
            return None
        return self.server.protocol.addAttachment(path.read_bytes())

    # -- display ---------------------------------------------------------------------------------

    def _on_opacity(self, opacity: float = 0.5, **_: Any) -> None:
        self.logic.setHeatmapOpacity(float(opacity))

    def _on_threshold(self, threshold: float = 0.2, **_: Any) -> None:
        self.logic.setHeatmapThreshold(float(threshold))

    # -- the page --------------------------------------------------------------------------------

    def _build_ui(self) -> None:
        download = self.server.controller.trigger_name(self.download)
        with SinglePageWithDrawerLayout(self.server, full_height=True) as layout:
            layout.title.set_text("MedCNN")
            with layout.toolbar:
                v3.VChip("{{ image_name }}", id="image-name", v_if="image_name", classes="mx-2")
                v3.VChip("{{ image_note }}", id="image-note", v_if="image_note", color="warning")
                v3.VSpacer()
                html.Span(DISCLAIMER, classes="text-caption mx-4")
            with layout.drawer as drawer:
                drawer.width = 380
                with html.Div(classes="pa-3 d-flex flex-column ga-3"):
                    v3.VFileInput(
                        v_model=("upload", None),
                        label="Open a scan or radiograph",
                        multiple=True,
                        density="compact",
                        hide_details=True,
                        id="upload",
                    )
                    v3.VSelect(
                        v_model=("model",),
                        items=("models",),
                        label="Model",
                        density="compact",
                        hide_details=True,
                        id="model",
                    )
                    html.Div("{{ hint }}", id="hint", classes="text-body-2")
                    with html.Div(v_if="point_needed", classes="d-flex align-center ga-2"):
                        v3.VSwitch(
                            v_model=("placing",),
                            label="Click places a point (off: drag sets window/level)",
                            density="compact",
                            hide_details=True,
                            id="placing",
                        )
                        v3.VBtn("Clear points", click=self.clear_points, size="small")
                    with html.Ol(v_if="point_needed", id="points", classes="text-body-2 ml-6"):
                        html.Li(
                            "{{ p.label }}: R {{ p.ras[0] }}, A {{ p.ras[1] }}, S {{ p.ras[2] }}",
                            v_for="p in points",
                            key="p.label",
                        )
                    v3.VCheckbox(
                        v_model=("save_dicom",),
                        label="Also as DICOM (SEG, Parametric Map, SR) of a DICOM series",
                        density="compact",
                        hide_details=True,
                        id="save-dicom",
                    )
                    v3.VBtn(
                        "{{ running ? 'Cancel' : 'Analyze' }}",
                        click=self.analyze_or_cancel,
                        color=("running ? 'error' : 'primary'",),
                        id="analyze",
                        block=True,
                    )
                    v3.VBtn(
                        "Clear results",
                        click=self.clear_results,
                        v_if="rows.length && !running",
                        size="small",
                        variant="text",
                        id="clear-results",
                    )
                    v3.VProgressLinear(
                        v_model=("progress",), v_show="running", height=8, id="progress"
                    )
                    html.Div("{{ stage }}", v_show="running", id="stage", classes="text-caption")
                    v3.VAlert(
                        "{{ error }}",
                        v_if="error",
                        type="error",
                        density="compact",
                        id="error",
                        style="white-space: pre-line;",
                    )
                    html.Div(
                        "{{ message }}",
                        v_if="message && !error",
                        id="message",
                        classes="text-body-2",
                        style="white-space: pre-line;",
                    )
                    for name in ("opacity", "threshold"):
                        v3.VSlider(
                            v_model=(name,),
                            min=0,
                            max=1,
                            step=0.05,
                            label=name.capitalize(),
                            density="compact",
                            hide_details=True,
                        )
                    with html.Div(v_if="outputs.length", id="downloads"):
                        v3.VBtn(
                            "{{ name }}",
                            v_for="name in outputs",
                            key="name",
                            size="small",
                            variant="tonal",
                            prepend_icon="mdi-download",
                            classes="ma-1",
                            click=(
                                f"utils.download(name, trigger('{download}', [name]), "
                                "'application/octet-stream')"
                            ),
                        )
            with layout.content:
                with html.Div(classes="d-flex flex-column", style="height: 100%;"):
                    with html.Div(style="flex: 1 1 auto; min-height: 0;"):
                        self.layout_manager.initialize_layout_grid(layout)
                    with html.Div(  # a fixed height: the views keep their size
                        style="flex: 0 0 150px; overflow: auto;",
                    ):
                        html.Div(
                            "Results appear here, one row a point (or a radiograph).",
                            v_if="!rows.length",
                            classes="text-caption pa-3",
                        )
                        with v3.VTable(v_if="rows.length", density="compact", id="results"):
                            with html.Thead(), html.Tr():
                                html.Th(
                                    "{{ c.name }}{{ c.unit ? ' (' + c.unit + ')' : '' }}",
                                    v_for="c in columns",
                                    key="c.name",
                                    title=("c.description",),
                                )
                            with html.Tbody(), html.Tr(v_for="(row, i) in rows", key="i"):
                                html.Td(
                                    "{{ row[c.name] }}",
                                    v_for="c in columns",
                                    key="c.name",
                                    raw_attrs=[':data-column="c.name"'],
                                )
        self.page = layout

    def cleanup(self) -> None:
        """Stop the analysis and the worker; remove the temporary files."""
        if self.task is not None and not self.task.done:
            self.task.cancel()
        self.logic.cleanup()
        for view in self.slicer_app.view_manager.get_views():
            view.finalize()  # release the offscreen windows' GL contexts now, not at exit
        if self._owns_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def no_authentication_warning(host: str) -> str | None:
    """The sentence printed when the server listens beyond this machine; None for local."""
    if host in LOCAL_HOSTS:
        return None
    return (
        f"medcnn web: warning: listening on {host}: anyone who can reach this machine can open "
        "the viewer, see its images and run analyses; there is no authentication."
    )


def serve(
    image: Path | None,
    host: str = "127.0.0.1",
    port: int = 8080,
    point: tuple[float, float, float] | None = None,
) -> int:
    """Open ``image`` (the phantom when None), with a point placed at ``point`` (RAS mm) if
    given, and serve the viewer until interrupted."""
    import logging
    import sys

    if not logging.getLogger().isEnabledFor(logging.INFO):  # medcnn --verbose keeps them
        from vtkmodules.vtkCommonCore import vtkObject

        vtkObject.GlobalWarningDisplayOff()  # trame-slicer's VTK 9.6 deprecation notices
    viewer = WebViewer()
    try:
        viewer.open_image(image)
        if point is not None:
            viewer.place_point(point)
        warning = no_authentication_warning(host)
        if warning:
            print(warning, file=sys.stderr, flush=True)

        def announce(**_: Any) -> None:
            shown = "127.0.0.1" if host in LOCAL_HOSTS else host
            print(
                f"MedCNN web viewer: open http://{shown}:{viewer.server.port}/ in a browser "
                "(Ctrl+C stops it).",
                flush=True,
            )

        viewer.server.controller.on_server_ready.add(announce)
        sys.argv = sys.argv[:1]  # trame reads its own options from the command line
        try:
            viewer.server.start(
                host=host, port=port, open_browser=False, show_connection_info=False, timeout=0
            )
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise
            raise UsageError(
                f"Port {port} on {host} is already in use; choose another with --port (0 picks "
                "a free one)."
            ) from error
    finally:
        viewer.cleanup()
    return 0
