"""One answer of the engine into the scene: heatmap volume, nodule segmentation (for a model
that segments) and a row of the results table, each carrying where it came from and which model
answered, all made before any is kept, so a failure leaves the scene as it was. Speaks only
MRML.

The heatmap and segmentation files lie on the exported volume's own grid (a CT's sub-grid around
the point; a radiograph's whole grid), so read back through MRML's storage nodes they overlay
the volume voxel for voxel. How they look is ``Display``'s job.
"""

from __future__ import annotations

import datetime
import json
import logging
from pathlib import Path

import slicer
import vtk

from .Display import ATTRIBUTE, ResultDisplay
from .TaskLogic import AnalysisError, PointSpec

log = logging.getLogger("MedCNN.ResultImport")

ROLE_HEATMAP, ROLE_SEGMENTATION, ROLE_TABLE = "heatmap", "segmentation", "table"
NODULE_SEGMENT_NAME = "Nodule"
NODULE_COLOR = (0.12, 0.85, 0.45)
# DICOM category / type / anatomic region codes (SNOMED CT): morphologically altered structure,
# nodule, lung; in the serialised form Slicer's terminology module reads.
NODULE_TERMINOLOGY = (
    "Segmentation category and type - DICOM master list"
    "~SCT^49755003^Morphologically Altered Structure"
    "~SCT^27925004^Nodule"
    "~^^"
    "~Anatomic codes - DICOM master list"
    "~SCT^39607008^Lung"
    "~^^"
)
DISCLAIMER = "Research use only; not for clinical use."
# (name, kind, unit, description): one row a point, or a whole radiograph, and model; a model
# without a point or a segmentation leaves those columns empty (NaN)
TABLE_COLUMNS = (
    ("Point", "string", "", "Label of the analysed point (empty for a whole radiograph)"),
    ("Model", "string", "", "The model that answered (its id; medcnn models lists them)"),
    (
        "Probability",
        "double",
        "",
        "Probability of the model's finding, malignancy or pneumonia (mean of the ensemble "
        "members)",
    ),
    ("Label", "string", "", "The model's decision at its threshold (e.g. malignant or benign)"),
    ("Uncertainty", "double", "", "Standard deviation of the ensemble members' probabilities"),
    ("Probability low", "double", "", "Lowest probability among the ensemble members"),
    ("Probability high", "double", "", "Highest probability among the ensemble members"),
    ("Diameter", "double", "mm", "Longest axial diameter of the segmented nodule"),
    ("Volume", "double", "mL", "Volume of the segmented nodule"),
    ("Calcified", "double", "", "Share of the segmented voxels above 200 HU (calcium)"),
    ("R", "double", "mm", "Point, right (RAS)"),
    ("A", "double", "mm", "Point, anterior (RAS)"),
    ("S", "double", "mm", "Point, superior (RAS)"),
    ("Analyzed", "string", "", "When the analysis ran (UTC)"),
)


class ResultImporter:
    """Result nodes in ``scene``: adding one answer's, finding them by point and role."""

    def __init__(self, scene: slicer.vtkMRMLScene, display: ResultDisplay) -> None:
        self.scene = scene
        self.display = display
        ensureSegmentationConverterRules()

    def importResult(
        self, volumeNode: slicer.vtkMRMLVolumeNode, point: PointSpec, outDir: Path, result: dict
    ) -> dict[str, str]:
        """Add the heatmap, the segmentation (when the answer has one) and the table row of one
        answer; all or nothing. Earlier results of the same model for the same point (or the
        same whole image) are replaced. Returns the new nodes' IDs by role."""
        key = resultKey(volumeNode, point, result)
        when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        outputs = result.get("outputs", {})
        created: list = []
        newNodes: dict[str, slicer.vtkMRMLNode] = {}
        try:
            newNodes[ROLE_HEATMAP] = self._addHeatmap(
                volumeNode, point, Path(outDir) / outputs.get("heatmap", "heatmap.nii.gz"), created
            )
            if outputs.get("segmentation"):
                newNodes[ROLE_SEGMENTATION] = self._addSegmentation(
                    volumeNode, point, Path(outDir) / outputs["segmentation"], created
                )
            table = self._resultsTable(volumeNode, created)
            for role, node in newNodes.items():
                setProvenance(node, result, volumeNode, point, role, key, when)
            self._setTableRow(table, key, point, result, when)
            setProvenance(table, result, volumeNode, point, ROLE_TABLE, "", when)
        except Exception as error:
            for node in reversed(created):
                removeNodeWithDependents(self.scene, node)
            if isinstance(error, AnalysisError):
                raise
            log.exception("importing the results failed")
            raise AnalysisError(
                f"The results could not be loaded into the scene ({error}).", "internal_error"
            ) from error
        placeBesideVolume(self.scene, volumeNode, [*newNodes.values(), table])
        newIDs = {role: node.GetID() for role, node in newNodes.items()}
        for node in self.resultNodes(key):
            if node.GetID() not in newIDs.values():
                removeNodeWithDependents(self.scene, node)
        newIDs[ROLE_TABLE] = table.GetID()
        return newIDs

    def resultNodes(self, key: str | None = None, role: str | None = None) -> list:
        """Result nodes in the scene, of one analysis (``key``: volume, point, model) and/or
        one role."""
        nodes = []
        for index in range(self.scene.GetNumberOfNodes()):
            node = self.scene.GetNthNode(index)
            nodeRole = node.GetAttribute(ATTRIBUTE + "Role")
            if nodeRole is None:
                continue
            if key is not None and node.GetAttribute(ATTRIBUTE + "Key") != key:
                continue
            if role is not None and nodeRole != role:
                continue
            nodes.append(node)
        return nodes

    def _readVolume(self, path: Path, node: slicer.vtkMRMLVolumeNode) -> None:
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(path))
        storage.SetSingleFile(1)
        if not path.exists() or not storage.ReadData(node):
            raise AnalysisError(
                f"The analysis output {path.name} could not be read.", "unreadable_image"
            )

    def _addHeatmap(
        self, volumeNode: slicer.vtkMRMLVolumeNode, point: PointSpec, path: Path, created: list
    ) -> slicer.vtkMRMLScalarVolumeNode:
        heatmap = slicer.vtkMRMLScalarVolumeNode()
        self._readVolume(path, heatmap)
        heatmap.SetName(resultName(volumeNode, point, "heatmap"))
        self.scene.AddNode(heatmap)
        created.append(heatmap)
        created.append(self.display.addHeatmapDisplay(heatmap))
        heatmap.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        return heatmap

    def _addSegmentation(
        self, volumeNode: slicer.vtkMRMLVolumeNode, point: PointSpec, path: Path, created: list
    ) -> slicer.vtkMRMLSegmentationNode:
        label = slicer.vtkMRMLLabelMapVolumeNode()
        self._readVolume(path, label)
        labelmap = slicer.vtkOrientedImageData()
        labelmap.ShallowCopy(label.GetImageData())
        matrix = vtk.vtkMatrix4x4()
        label.GetIJKToRASMatrix(matrix)
        labelmap.SetImageToWorldMatrix(matrix)

        segmentation = slicer.vtkMRMLSegmentationNode()
        segmentation.SetName(resultName(volumeNode, point, "nodule"))
        self.scene.AddNode(segmentation)
        created.append(segmentation)
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentation.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        segmentId = segmentation.AddSegmentFromBinaryLabelmapRepresentation(
            labelmap, NODULE_SEGMENT_NAME, list(NODULE_COLOR)
        )
        if not segmentId:
            raise AnalysisError("The nodule segmentation could not be added to the scene.")
        segment = segmentation.GetSegmentation().GetSegment(segmentId)
        if hasattr(segment, "SetTerminology"):
            segment.SetTerminology(NODULE_TERMINOLOGY)
        else:  # older Slicer versions keep the terminology only as a tag
            segment.SetTag(segment.GetTerminologyEntryTagName(), NODULE_TERMINOLOGY)
        segment.SetNameAutoGenerated(False)
        segment.SetColorAutoGenerated(False)
        self.display.styleSegmentation(segmentation)
        return segmentation

    def _resultsTable(
        self, volumeNode: slicer.vtkMRMLVolumeNode, created: list
    ) -> slicer.vtkMRMLTableNode:
        for node in self.resultNodes(role=ROLE_TABLE):
            if node.GetAttribute(ATTRIBUTE + "InputVolumeID") == volumeNode.GetID():
                addMissingColumns(node)  # a table of an earlier version, from a saved scene
                return node
        table = slicer.vtkMRMLTableNode()
        table.SetName(f"{volumeNode.GetName()} MedCNN results")
        addMissingColumns(table)
        table.SetAttribute(ATTRIBUTE + "RowKeys", "[]")
        table.SetAttribute(ATTRIBUTE + "Role", ROLE_TABLE)
        table.SetAttribute(ATTRIBUTE + "InputVolumeID", volumeNode.GetID())
        self.scene.AddNode(table)
        created.append(table)
        return table

    def _setTableRow(
        self, table: slicer.vtkMRMLTableNode, key: str, point: PointSpec, result: dict, when: str
    ) -> None:
        keys = json.loads(table.GetAttribute(ATTRIBUTE + "RowKeys") or "[]")
        if key in keys:
            row = keys.index(key)
        else:
            row = table.AddEmptyRow()
            keys.append(key)
        ras = pointOf(result, point) or [None, None, None]
        interval = result.get("probability_interval", [None, None])
        values = {
            "Point": "" if point.wholeImage else point.label,
            "Model": modelId(result),
            "Probability": result["probability"],
            "Label": result["label"],
            "Uncertainty": result["uncertainty"],
            "Probability low": interval[0],
            "Probability high": interval[1],
            "Diameter": result.get("diameter_mm"),
            "Volume": result.get("volume_ml"),
            "Calcified": result.get("calcified_share"),
            "R": ras[0],
            "A": ras[1],
            "S": ras[2],
            "Analyzed": when,
        }
        data = table.GetTable()
        for name, kind, _, _ in TABLE_COLUMNS:
            value = values[name]
            if kind == "string":
                data.GetColumnByName(name).SetValue(row, "" if value is None else str(value))
            else:
                data.GetColumnByName(name).SetValue(row, float("nan") if value is None else value)
        table.SetAttribute(ATTRIBUTE + "RowKeys", json.dumps(keys))
        table.Modified()


def addMissingColumns(table: slicer.vtkMRMLTableNode) -> None:
    """Every column of ``TABLE_COLUMNS`` that the table lacks, empty in its existing rows."""
    rows = table.GetNumberOfRows()
    for name, kind, unit, description in TABLE_COLUMNS:
        if table.GetTable().GetColumnByName(name) is not None:
            continue
        array = vtk.vtkStringArray() if kind == "string" else vtk.vtkDoubleArray()
        array.SetName(name)
        array.SetNumberOfValues(rows)
        for row in range(rows):
            array.SetValue(row, "" if kind == "string" else float("nan"))
        table.AddColumn(array)
        table.SetColumnDescription(name, description)
        if unit:
            table.SetColumnUnitLabel(name, unit)


def modelId(result: dict) -> str:
    """The id of the model that answered (``model.id``; its name for an engine before 0.5)."""
    model = result.get("model", {})
    return str(model.get("id") or model.get("name") or "")


def pointOf(result: dict, point: PointSpec) -> list[float] | None:
    """The point analysed, in the exported volume's RAS as ``result.json`` says it, else as it
    was placed; None for a whole image."""
    if point.wholeImage:
        return None
    return result.get("point", {}).get("ras", list(point.ras))


def resultKey(volumeNode: slicer.vtkMRMLVolumeNode, point: PointSpec, result: dict) -> str:
    """What identifies one analysis across re-runs: the volume, the point (or the whole image)
    and the model; a re-run of the same replaces its nodes and its row."""
    return f"{volumeNode.GetID()}|{point.key}|{modelId(result)}"


def resultName(volumeNode: slicer.vtkMRMLVolumeNode, point: PointSpec, what: str) -> str:
    """A result node's name: the volume's, the point's label where there is a point, and what
    it is."""
    parts = [volumeNode.GetName() or "", "" if point.wholeImage else point.label]
    return " ".join(part for part in (*parts, "MedCNN", what) if part)


def setProvenance(
    node: slicer.vtkMRMLNode,
    result: dict,
    volumeNode: slicer.vtkMRMLVolumeNode,
    point: PointSpec,
    role: str,
    key: str,
    when: str,
) -> None:
    """Where a result node came from, as node attributes (saved with the scene)."""
    model = result.get("model", {})
    software = result.get("software", {})
    ras = pointOf(result, point)
    attributes = {
        "Role": role,
        "ModelID": modelId(result),
        "ModelName": model.get("name", ""),
        "ModelVersion": model.get("version", ""),
        "WeightsSHA256": model.get("weights_sha256", ""),
        "EngineVersion": software.get("medcnn", ""),
        "InputVolume": volumeNode.GetName() or "",
        "InputVolumeID": volumeNode.GetID(),
        "Point": "" if point.wholeImage else point.label,
        "PointRAS": "" if ras is None else ",".join(f"{float(v):.4f}" for v in ras),
        "Time": when,
        "Disclaimer": DISCLAIMER,
    }
    if key:
        attributes["Key"] = key
        attributes["Result"] = json.dumps(result, sort_keys=True)
    for name, value in attributes.items():
        node.SetAttribute(ATTRIBUTE + name, str(value))


def placeBesideVolume(
    scene: slicer.vtkMRMLScene, volumeNode: slicer.vtkMRMLVolumeNode, nodes: list
) -> None:
    """Put result nodes in the subject hierarchy (the Data module's tree) where their volume
    is: under the CT's study for a CT loaded from DICOM, not at the top of the tree. A volume
    without an item there (bare MRML) leaves the nodes where they are."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if hierarchy is None:
        return
    invalid = hierarchy.GetInvalidItemID()
    volumeItem = hierarchy.GetItemByDataNode(volumeNode)
    if volumeItem == invalid:
        return
    parent = hierarchy.GetItemParent(volumeItem)
    for node in nodes:
        item = hierarchy.GetItemByDataNode(node)
        if item == invalid:
            hierarchy.CreateItem(parent, node)
        elif hierarchy.GetItemParent(item) != parent:
            hierarchy.SetItemParent(item, parent)


def removeNodeWithDependents(scene: slicer.vtkMRMLScene, node: slicer.vtkMRMLNode | None) -> None:
    """Remove a node and the display and storage nodes that exist only for it."""
    if node is None or scene.GetNodeByID(node.GetID() or "") is None:
        return
    dependents = []
    if node.IsA("vtkMRMLDisplayableNode"):
        dependents += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    if node.IsA("vtkMRMLStorableNode"):
        dependents += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
    scene.RemoveNode(node)
    for dependent in dependents:
        if dependent is not None and scene.GetNodeByID(dependent.GetID() or "") is not None:
            scene.RemoveNode(dependent)


def ensureSegmentationConverterRules() -> None:
    """Slicer's Segmentations module registers these; bare MRML (slicer-core) does not."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    present = {rule.GetClassName() for rule in factory.GetConverterRules()}
    for ruleClass in (
        slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule,
        slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule,
    ):
        if ruleClass.__name__ not in present:
            factory.RegisterConverterRule(ruleClass())
