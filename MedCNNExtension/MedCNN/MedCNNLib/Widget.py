"""The module panel: inputs (volume, model, points), Analyze/Cancel, progress, display
settings, results table.

Deliberately thin: it reads the user's choices, hands them to ``MedCNNLogic`` and polls the
running task from a Qt timer, so Slicer's main thread never waits for the analysis. What the
model selector offers and whether the selected volume needs points are the logic's answers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import qt
import slicer

from .AnalysisLogic import AUTOMATIC, AnalysisError, MedCNNLogic
from .InstallLogic import InstallError, InstallLogic, unsupportedReason
from .Parameters import Parameters

UI_FILE = Path(__file__).resolve().parent.parent / "Resources" / "UI" / "MedCNN.ui"
POLL_INTERVAL_MS = 100
ENGINE_WAIT_POLLS = 300  # the models are awaited this many polls (30 s), then at each analysis
ERROR_STYLE = "color: #c62828;"


class Widget(qt.QWidget):
    def __init__(self, logic: MedCNNLogic | None = None, parent: qt.QWidget | None = None) -> None:
        super().__init__(parent)
        self.logic = logic or MedCNNLogic()
        self.settings = qt.QSettings()
        self.logic.parameters = Parameters.load(self.settings)
        self.task = None
        self._cleanedUp = False
        # One installer for the panel: it refuses a second install while one runs.
        self.installer = InstallLogic.forSlicer(
            confirm=lambda question: slicer.util.confirmOkCancelDisplay(question, "MedCNN"),
            log_=self.showInstallProgress,
            busy=slicer.util.WaitCursor,
        )

        uiWidget = slicer.util.loadUI(str(UI_FILE))
        layout = qt.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(self.logic.scene)

        self.ui.opacitySlider.value = self.logic.parameters.heatmapOpacity
        self.ui.thresholdSlider.value = self.logic.parameters.heatmapThreshold
        self.ui.saveDicomCheckBox.checked = self.logic.parameters.saveDicom
        self.ui.pointsPlaceWidget.placeMultipleMarkups = (
            slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups
        )
        self.ui.pointsPlaceWidget.setCurrentNode(self.ui.pointsSelector.currentNode())

        self.ui.pointsSelector.connect(
            "currentNodeChanged(vtkMRMLNode*)", self.ui.pointsPlaceWidget.setCurrentNode
        )
        self.ui.volumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateInputs)
        self.ui.modelSelector.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.saveDicomCheckBox.connect("toggled(bool)", self.onSaveDicomToggled)
        self.ui.analyzeButton.connect("clicked(bool)", self.onAnalyzeOrCancel)
        self.ui.opacitySlider.connect("valueChanged(double)", self.onOpacityChanged)
        self.ui.thresholdSlider.connect("valueChanged(double)", self.onThresholdChanged)

        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_INTERVAL_MS)
        self.timer.connect("timeout()", self.onPoll)
        self._sceneObserver = self.logic.scene.AddObserver(
            self.logic.scene.StartCloseEvent, self.onSceneClosing
        )

        # The engine lists its models at once, then loads them while the user places points;
        # in a Slicer that cannot run it, the panel says so at once and starts nothing.
        self.fillModelSelector()
        self.updateInputs()
        self._enginePolls = 0
        self.engineTimer = qt.QTimer()
        self.engineTimer.setInterval(POLL_INTERVAL_MS)
        self.engineTimer.connect("timeout()", self.onEngineUpdate)
        reason = unsupportedReason()
        if reason is not None:
            self.showStatus(reason, error=True)
        else:
            self.logic.startEngine()
            self.engineTimer.start()

    def cleanup(self) -> None:
        """Called when the module is closed or reloaded: stop the work and the worker."""
        if self._cleanedUp:
            return
        self._cleanedUp = True
        self.timer.stop()
        self.engineTimer.stop()
        if self.task is not None and not self.task.done:
            self.task.cancel()
        self.logic.scene.RemoveObserver(self._sceneObserver)
        self.logic.parameters.save(self.settings)
        self.logic.cleanup()

    # -- inputs --------------------------------------------------------------------------------

    def fillModelSelector(self) -> None:
        """The logic's model choices, the saved one selected (Automatic until it is listed)."""
        selector = self.ui.modelSelector
        wasBlocked = selector.blockSignals(True)
        selector.clear()
        for choice in self.logic.modelChoices():
            selector.addItem(choice.title, choice.id)
            selector.setItemData(selector.count - 1, choice.description, qt.Qt.ToolTipRole)
        selector.setCurrentIndex(max(selector.findData(self.logic.parameters.model), 0))
        selector.blockSignals(wasBlocked)

    def onEngineUpdate(self) -> None:
        self._enginePolls += 1
        if self.logic.updateEngine() or self._enginePolls > ENGINE_WAIT_POLLS:
            self.engineTimer.stop()
            self.fillModelSelector()
            self.updateInputs()

    def onModelChanged(self, index: int) -> None:
        self.logic.parameters.model = self.ui.modelSelector.itemData(index) or AUTOMATIC
        self.updateInputs()

    def onSaveDicomToggled(self, checked: bool) -> None:
        self.logic.parameters.saveDicom = bool(checked)
        self.updateInputs()

    def updateInputs(self, *_: object) -> None:
        """Points only where the selected volume and model take them (not for a radiograph);
        with Save as DICOM, why the volume's results cannot be saved so, if they cannot."""
        volume = self.ui.volumeSelector.currentNode()
        needed = self.logic.pointNeeded(volume)
        self.ui.pointsSelector.enabled = needed
        self.ui.pointsPlaceWidget.enabled = needed
        hint = self.logic.inputHint(volume)
        saveDicom = self.logic.parameters.saveDicom
        problem = self.logic.dicomResultsProblem(volume) if saveDicom else None
        self.ui.inputHintLabel.text = hint if problem is None else f"{hint} {problem}"

    # -- actions -------------------------------------------------------------------------------

    def onAnalyzeOrCancel(self) -> None:
        if self.task is not None and not self.task.done:
            self.task.cancel()
            self.onPoll()
            return
        if self.installer.installing:
            return  # the button is disabled meanwhile; a queued click does nothing
        self.showStatus("")
        self.ui.analyzeButton.enabled = False  # no second click while installing
        try:
            self.installer.ensure()
            self.task = self.logic.startAnalysis(
                self.ui.volumeSelector.currentNode(), self.ui.pointsSelector.currentNode()
            )
        except (AnalysisError, InstallError) as error:
            self.showStatus(str(error), error=True)
            return
        except Exception as error:  # whatever else: one sentence, never a stuck panel
            logging.exception("MedCNN could not start the analysis")
            self.showStatus(
                f"The analysis could not start ({type(error).__name__}: {error}); see the "
                "Python console's log.",
                error=True,
            )
            return
        finally:
            self.ui.analyzeButton.enabled = True
        self.ui.analyzeButton.text = "Cancel"
        self.ui.progressBar.value = 0
        self.ui.progressBar.format = self.task.statusText
        self.timer.start()

    def onPoll(self) -> None:
        task = self.task
        if task is None:
            self.timer.stop()
            return
        try:
            done = task.poll()
        except Exception as error:  # never leave the timer running on a broken task
            logging.exception("MedCNN analysis failed")
            task.cancel()
            self.finish(f"The analysis failed unexpectedly ({error}).", error=True)
            return
        self.ui.progressBar.value = int(round(task.progress * 1000))
        self.ui.progressBar.format = task.statusText
        if done:
            self.finish(task.message, error=bool(task.failed))

    def finish(self, message: str, error: bool = False) -> None:
        self.timer.stop()
        if self.ui.modelSelector.count != len(self.logic.modelChoices()):
            self.fillModelSelector()  # the engine listed its models with this analysis
            self.updateInputs()
        self.ui.analyzeButton.text = "Analyze"
        self.showStatus(message, error=error)
        task = self.task
        if task is not None and task.succeeded:
            tableID = task.succeeded[-1].nodeIDs.get("table")
            tableNode = self.logic.scene.GetNodeByID(tableID) if tableID else None
            if tableNode is not None:
                self.ui.resultsTableView.setMRMLTableNode(tableNode)
        self.ui.progressBar.format = task.statusText if task is not None else "Ready"

    def showStatus(self, text: str, error: bool = False) -> None:
        self.ui.statusLabel.text = text
        self.ui.statusLabel.styleSheet = ERROR_STYLE if error else ""

    def showInstallProgress(self, text: str) -> None:
        self.showStatus(text)
        slicer.app.processEvents()  # the install blocks; let the message show

    def onOpacityChanged(self, value: float) -> None:
        self.logic.setHeatmapOpacity(value)

    def onThresholdChanged(self, value: float) -> None:
        self.logic.setHeatmapThreshold(value)

    def onSceneClosing(self, caller: slicer.vtkMRMLScene, event: str) -> None:
        if self.task is not None and not self.task.done:
            self.task.cancel()
            self.onPoll()
