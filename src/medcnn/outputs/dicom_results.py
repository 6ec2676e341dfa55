"""An analysis as DICOM, made with highdicom: for a nodule the segmentation (SEG), the heatmap
(Parametric Map) and the measurements (Comprehensive 3D SR, TID 1500 Measurement Report), for a
radiograph the heatmap and the report; each a new series in the source's study, its patient and
study attributes copied from the source.

The codes, and why each was chosen, are in the README ("Results as DICOM"). Every object lies on
the source series' own grid: the SEG's frames are whole source frames, the Parametric Map's the
heatmap's block of them, each placed at the source slice it was computed on.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid
from pydicom.valuerep import format_number_as_ds

import medcnn
from medcnn.outputs.dicom_source import DicomSource
from medcnn.outputs.result import Result
from medcnn.outputs.writing import DICOM_HEATMAP, DICOM_REPORT, DICOM_SEGMENTATION
from medcnn.volume import LPS_TO_RAS, Volume

MANUFACTURER = "MedCNN"
# Series numbers of the objects in the source's study (the source keeps its own).
SEG_SERIES_NUMBER, PM_SERIES_NUMBER, SR_SERIES_NUMBER = 9001, 9002, 9003

NODULE_CATEGORY = codes.SCT.MorphologicallyAbnormalStructure  # SCT 49755003
NODULE = codes.SCT.Nodule  # SCT 27925004
LUNG = codes.SCT.Lung  # SCT 39607008
THORAX = codes.SCT.Thorax  # SCT 816094009
SALIENCY = codes.DCM.Saliency  # DCM 130404
CHEST_CT = Code("24627-2", "LN", "CT Chest")
VOLUME = codes.SCT.Volume  # SCT 118565006
LONG_AXIS = codes.SCT.LongAxis  # SCT 103339001
CALCIFIED_PERCENT = codes.DCM.CalcificationExtentAsPercentOfVolume  # DCM 112019
PROBABILITY_OF_CANCER = codes.DCM.ProbabilityOfCancer  # DCM 111047
STANDARD_DEVIATION = codes.SCT.StandardDeviation  # SCT 386136009
NO_UNITS = codes.UCUM.NoUnits  # UCUM 1
MILLILITRE = Code("mL", "UCUM", "milliliter")
MILLIMETRE = codes.UCUM.Millimeter
PNEUMONIA = Code("233604007", "SCT", "Pneumonia")
PROBABILITY = codes.DCM.Probability  # DCM 122157
RADIOGRAPH = codes.cid100.XRUnspecifiedBodyRegion  # LN 43468-8
PERCENT = codes.UCUM.Percent
# A radiograph that has these is placed in the patient, and its map shares its frame of reference.
_RADIOGRAPH_PLACE = ("FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient")


@dataclass(frozen=True)
class DicomResults:
    """The objects of one analysis, in memory, ready to be saved (a radiograph's are the report
    alone)."""

    report: hd.sr.Comprehensive3DSR
    heatmap: hd.pm.ParametricMap | None = None
    segmentation: hd.seg.Segmentation | None = None


def with_dicom_files(
    result: Result, made: DicomResults
) -> tuple[Result, dict[str, Callable[[Path], object]]]:
    """The result naming the DICOM files, and a writer of each, for ``outputs.writing``'s files
    made in the hidden folder with the others."""
    made_files = {
        DICOM_SEGMENTATION: made.segmentation,
        DICOM_HEATMAP: made.heatmap,
        DICOM_REPORT: made.report,
    }
    files = {name: dataset for name, dataset in made_files.items() if dataset is not None}
    outputs = replace(
        result.outputs,
        dicom_segmentation=DICOM_SEGMENTATION if made.segmentation is not None else None,
        dicom_heatmap=DICOM_HEATMAP if made.heatmap is not None else None,
        dicom_report=DICOM_REPORT,
    )
    return replace(result, outputs=outputs), {name: saver(ds) for name, ds in files.items()}


def nodule_dicom_results(
    result: Result, segmentation: Volume, heatmap: Volume, source: DicomSource
) -> DicomResults:
    """The SEG, Parametric Map and SR of a nodule's analysis; ``segmentation`` and ``heatmap``
    are the blocks of the scan's grid written as NIfTI, ``source`` the slices under them."""
    equipment = _Equipment.of(result)
    tracking_uid = hd.UID()  # the nodule of this analysis: the SEG's segment, the SR's group
    seg = _segmentation(segmentation, source, equipment, tracking_uid)
    pm = _parametric_map(heatmap, source, equipment)
    for image in (seg, pm):
        _positive_slice_spacing(image, source)
    _add_frame_anatomy(pm)
    _frames_along_the_normal(pm)
    report = _report(result, seg, pm, source, equipment, tracking_uid)
    return DicomResults(report, pm, seg)


def radiograph_dicom_results(result: Result, heatmap: Volume, source: Dataset) -> DicomResults:
    """The Parametric Map and SR of a radiograph's analysis: ``heatmap`` on the radiograph's
    pixels (as ``heatmap.nii.gz``), ``source`` the radiograph's header."""
    equipment = _Equipment.of(result)
    pm = _radiograph_parametric_map(heatmap, source, equipment)
    _add_frame_anatomy(pm)
    algorithm = equipment.sr_algorithm()
    judged = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="Radiograph"),
        finding_type=PNEUMONIA,
        finding_sites=[hd.sr.FindingSite(LUNG)],
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(PROBABILITY, result.probability, NO_UNITS, algorithm_id=algorithm),
            hd.sr.Measurement(
                PROBABILITY,
                result.uncertainty,
                NO_UNITS,
                derivation=STANDARD_DEVIATION,
                algorithm_id=algorithm,
            ),
        ],
        source_images=[
            hd.sr.SourceImageForMeasurementGroup.from_source_image(image) for image in (source, pm)
        ],
    )
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(equipment),
        procedure_reported=RADIOGRAPH,
        imaging_measurements=[judged],
    )
    return DicomResults(_document(report, [source, pm], equipment), pm)


@dataclass(frozen=True)
class _Equipment:
    """MedCNN and the model as the objects' equipment and algorithm."""

    model: str
    version: str
    weights_sha256: str

    @classmethod
    def of(cls, result: Result) -> _Equipment:
        model = result.model
        return cls(model.id or model.name, model.version, model.weights_sha256)

    @property
    def software_versions(self) -> str:
        return f"medcnn {medcnn.__version__}; {self.model} {self.version}"

    def algorithm(self) -> hd.AlgorithmIdentificationSequence:
        return hd.AlgorithmIdentificationSequence(
            name=f"MedCNN {self.model}",
            family=codes.cid7162.ArtificialIntelligence,
            version=self.version,
            source=MANUFACTURER,
            parameters={"weights_sha256": self.weights_sha256},
        )

    def sr_algorithm(self) -> hd.sr.AlgorithmIdentification:
        return hd.sr.AlgorithmIdentification(
            name=f"MedCNN {self.model}",
            version=self.version,
            parameters=[f"weights_sha256={self.weights_sha256}"],
        )

    def common(self) -> dict:
        """The equipment attributes every object carries; the weights' SHA-256 (64 hex digits,
        as long as the attribute allows) serves as the device's serial number."""
        return {
            "manufacturer": MANUFACTURER,
            "manufacturer_model_name": self.model,
            "software_versions": self.software_versions,
            "device_serial_number": self.weights_sha256,
        }


def _segmentation(
    segmentation: Volume, source: DicomSource, equipment: _Equipment, tracking_uid: str
) -> hd.seg.Segmentation:
    """A BINARY SEG of whole source frames (rows and columns as the source's), one frame per
    source slice that holds part of the nodule, each referencing that slice.

    Only those slices are given to highdicom (it would leave out the empty frames anyway, after
    working out every slice's place): all of them when nothing is segmented, so that the SEG
    still says where it looked."""
    rows, columns = int(source.first.Rows), int(source.first.Columns)
    mask = np.asarray(segmentation.array, dtype=np.uint8).transpose(2, 1, 0)
    holding = np.flatnonzero(mask.any(axis=(1, 2)))
    if holding.size == 0:
        holding = np.arange(len(source.slices))
    frames = np.zeros((holding.size, rows, columns), dtype=np.uint8)
    ni, nj, _ = segmentation.shape
    frames[
        :,
        source.first_row : source.first_row + nj,
        source.first_column : source.first_column + ni,
    ] = mask[holding]
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Nodule",
        segmented_property_category=NODULE_CATEGORY,
        segmented_property_type=NODULE,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=equipment.algorithm(),
        tracking_uid=tracking_uid,
        tracking_id="Nodule 1",
        anatomic_regions=[LUNG],
    )
    return hd.seg.Segmentation(
        source_images=[source.slices[int(k)] for k in holding],
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=hd.UID(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        series_description=f"MedCNN {equipment.model}: nodule segmentation",
        **equipment.common(),
    )


def _parametric_map(
    heatmap: Volume, source: DicomSource, equipment: _Equipment
) -> hd.pm.ParametricMap:
    """The heatmap's block as float32 frames, each placed at its source slice's position."""
    lps = LPS_TO_RAS @ heatmap.affine
    positions = [
        hd.PlanePositionSequence(
            coordinate_system="PATIENT",
            image_position=(lps[:3, :3] @ np.array([0.0, 0.0, float(k)]) + lps[:3, 3]).tolist(),
        )
        for k in range(heatmap.shape[2])
    ]
    return hd.pm.ParametricMap(
        source_images=list(source.slices),
        pixel_array=np.ascontiguousarray(heatmap.array.astype(np.float32).transpose(2, 1, 0)),
        plane_positions=positions,
        plane_orientation=hd.PlaneOrientationSequence(
            coordinate_system="PATIENT",
            image_orientation=[float(v) for v in source.first.ImageOrientationPatient],
        ),
        pixel_measures=_pixel_measures(source),
        **_heatmap_attributes(equipment, "malignancy"),
    )


def _radiograph_parametric_map(
    heatmap: Volume, source: Dataset, equipment: _Equipment
) -> hd.pm.ParametricMap:
    """The heatmap as one float32 frame, pixel for pixel the radiograph's (each pixel of the
    map is the radiograph's pixel at the same row and column; the frame references it).

    The Parametric Map IOD requires a Frame of Reference and the frame's plane, which a
    projection radiograph need not have. The map is placed as ``heatmap.nii.gz`` is, by the
    reader's grid (the radiograph's own ImagePositionPatient, ImageOrientationPatient and
    spacing where it has them, else origin 0 and identity orientation, as ITK places a DX), in
    the radiograph's Frame of Reference where it has one with that position, else in a new one
    of its own, which no other object shares and which so claims no place in the patient.
    highdicom 0.28 takes the frame of reference and the plane only from the source image, so it
    is given a copy of the radiograph's header that carries them (the copy goes nowhere else)."""
    lps = LPS_TO_RAS @ heatmap.affine
    along_row, down_column = (float(v) for v in np.linalg.norm(lps[:3, :2], axis=0))
    orientation = [*(lps[:3, 0] / along_row), *(lps[:3, 1] / down_column)]
    position = lps[:3, 3].tolist()
    spacing = [down_column, along_row]  # DICOM's order: between rows, then between columns
    placed = copy.deepcopy(source)
    if not _placed_by_its_own_plane(source, position, orientation):
        placed.FrameOfReferenceUID = hd.UID()
        placed.PositionReferenceIndicator = ""
    placed.ImagePositionPatient = [format_number_as_ds(v) for v in position]
    placed.ImageOrientationPatient = [format_number_as_ds(v) for v in orientation]
    placed.PixelSpacing = [format_number_as_ds(v) for v in spacing]
    placed.SliceThickness = None  # a projection has none
    rows, columns = int(source.Rows), int(source.Columns)
    frame = np.ascontiguousarray(heatmap.array[:, :, 0].T, dtype=np.float32)
    if frame.shape != (rows, columns):
        raise ValueError(f"The heatmap {frame.shape} is not on the radiograph's pixels.")
    return hd.pm.ParametricMap(
        source_images=[placed],
        pixel_array=frame[None],
        plane_positions=[hd.PlanePositionSequence("PATIENT", position)],
        plane_orientation=hd.PlaneOrientationSequence("PATIENT", orientation),
        pixel_measures=hd.PixelMeasuresSequence(spacing, None),
        **_heatmap_attributes(equipment, "pneumonia"),
    )


def _placed_by_its_own_plane(
    source: Dataset, position: list[float], orientation: list[float]
) -> bool:
    """Whether the radiograph has a frame of reference and the map lies where its own
    position and orientation put it (the reader places it otherwise when they are unusable)."""
    if not all(str(source.get(name, "") or "").strip() for name in _RADIOGRAPH_PLACE):
        return False
    own_position = np.asarray(source.ImagePositionPatient, dtype=float)
    own_orientation = np.asarray(source.ImageOrientationPatient, dtype=float)
    return bool(
        own_position.shape == (3,)
        and own_orientation.shape == (6,)
        and np.allclose(own_position, position, atol=1e-3)
        and np.allclose(own_orientation, orientation, atol=1e-4)
    )


def _observation_context(equipment: _Equipment) -> hd.sr.ObservationContext:
    """The model as the observing device: the same UID for the same weights, everywhere."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=["medcnn", equipment.model, equipment.weights_sha256]),
        name=f"MedCNN {equipment.model}",
        manufacturer_name=MANUFACTURER,
        model_name=equipment.model,
        serial_number=equipment.weights_sha256,
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def _heatmap_attributes(equipment: _Equipment, finding: str) -> dict:
    """What every heatmap's Parametric Map says of its values: Grad-CAM saliency, 0 to 1."""
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="saliency",
        lut_explanation=f"Grad-CAM relevance for {finding}, 0 to 1",
        unit=NO_UNITS,
        value_range=(0.0, 1.0),
        slope=1.0,
        intercept=0.0,
        quantity_definition=SALIENCY,
    )
    return {
        "series_instance_uid": hd.UID(),
        "series_number": PM_SERIES_NUMBER,
        "sop_instance_uid": hd.UID(),
        "instance_number": 1,
        "contains_recognizable_visual_features": False,
        "real_world_value_mappings": [mapping],
        "voi_lut_transformations": [hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
        "content_label": "HEATMAP",
        "content_description": f"MedCNN {equipment.model}: heatmap (Grad-CAM) for {finding}",
        "series_description": f"MedCNN {equipment.model}: heatmap",
        **equipment.common(),
    }


def _report(
    result: Result,
    seg: hd.seg.Segmentation,
    pm: hd.pm.ParametricMap,
    source: DicomSource,
    equipment: _Equipment,
    tracking_uid: str,
) -> hd.sr.Comprehensive3DSR:
    nodule = result.nodule
    algorithm = equipment.sr_algorithm()
    tracking = hd.sr.TrackingIdentifier(uid=tracking_uid, identifier="Nodule 1")
    size = [
        hd.sr.Measurement(VOLUME, nodule.volume_ml, MILLILITRE, algorithm_id=algorithm),
        hd.sr.Measurement(LONG_AXIS, nodule.diameter_mm, MILLIMETRE, algorithm_id=algorithm),
    ]
    if nodule.calcified_share is not None:
        size.append(
            hd.sr.Measurement(
                CALCIFIED_PERCENT,
                round(nodule.calcified_share * 100.0, 6),
                PERCENT,
                algorithm_id=algorithm,
            )
        )
    # The segmented nodule and what was measured on it (TID 1411).
    measured = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=1,
            source_series=hd.sr.SourceSeriesForSegmentation(str(source.first.SeriesInstanceUID)),
        ),
        finding_type=NODULE,
        finding_sites=[hd.sr.FindingSite(LUNG)],
        algorithm_id=algorithm,
        measurements=size,
    )
    # The same nodule (same tracking UID) as the network judged it at the point, with the
    # heatmap it looked through (TID 1501: TID 1411 allows no coordinates on a measurement).
    seed = hd.sr.CoordinatesForMeasurement3D(
        graphic_type=hd.sr.GraphicTypeValues3D.POINT,
        graphic_data=np.asarray([nodule.point.lps], dtype=float),
        frame_of_reference_uid=source.frame_of_reference_uid,
    )
    judged = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        finding_type=NODULE,
        finding_sites=[hd.sr.FindingSite(LUNG)],
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(
                PROBABILITY_OF_CANCER,
                result.probability,
                NO_UNITS,
                algorithm_id=algorithm,
                referenced_coordinates=[seed],
            ),
            hd.sr.Measurement(
                PROBABILITY_OF_CANCER,
                result.uncertainty,
                NO_UNITS,
                derivation=STANDARD_DEVIATION,
                algorithm_id=algorithm,
            ),
        ],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(pm)],
    )
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(equipment),
        procedure_reported=CHEST_CT,
        imaging_measurements=[measured, judged],
    )
    return _document(report, [*source.slices, seg, pm], equipment)


def _document(
    report: hd.sr.MeasurementReport, evidence: list[Dataset], equipment: _Equipment
) -> hd.sr.Comprehensive3DSR:
    """The report as an SR document in the evidence's study (the source, the SEG, the map)."""
    return hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=hd.UID(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        series_description=f"MedCNN {equipment.model}: measurement report",
        is_complete=True,
    )


def _pixel_measures(source: DicomSource) -> hd.PixelMeasuresSequence:
    """The source's pixel spacing and slice thickness, and the distance between its slices."""
    first = source.first
    return hd.PixelMeasuresSequence(
        pixel_spacing=[float(v) for v in first.PixelSpacing],
        slice_thickness=float(first.get("SliceThickness") or source.slice_spacing_mm),
        spacing_between_slices=source.slice_spacing_mm,
    )


def _positive_slice_spacing(image: Dataset, source: DicomSource) -> None:
    """Where highdicom copied the source's pixel measures, put in the distance between slices
    as the reader measured it: some scanners write SpacingBetweenSlices negative (the real
    chest CT of the tests does), which DICOM forbids and dciodvfy reports as an error."""
    measures = image.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    if "SpacingBetweenSlices" in measures:
        measures.SpacingBetweenSlices = format_number_as_ds(source.slice_spacing_mm)


def _add_frame_anatomy(pm: Dataset) -> None:
    """The Parametric Map IOD requires the Frame Anatomy functional group (highdicom does not
    write it; dcmqi's reader, which 3D Slicer uses, fails without it): the block lies in the
    thorax, an unpaired region (laterality U)."""
    anatomy = Dataset()
    anatomy.AnatomicRegionSequence = [hd.sr.CodedConcept.from_code(THORAX)]
    anatomy.FrameLaterality = "U"
    pm.SharedFunctionalGroupsSequence[0].FrameAnatomySequence = [anatomy]


def _frames_along_the_normal(pm: Dataset) -> None:
    """Put the map's frames in the order they advance along the slice normal (row x column).

    highdicom stores them the other way round; both are valid, each frame being placed by its
    own position, but dcmqi's Parametric Map reader (3D Slicer's) lays frame n at the n-th
    position from the lowest and would show the heatmap upside down. Each frame keeps its own
    functional groups; only the order of frames changes."""
    row, column = np.asarray(
        pm.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient,
        dtype=float,
    ).reshape(2, 3)
    frames = pm.PerFrameFunctionalGroupsSequence
    distances = [
        float(
            np.asarray(f.PlanePositionSequence[0].ImagePositionPatient, float)
            @ np.cross(row, column)
        )
        for f in frames
    ]
    order = np.argsort(distances, kind="stable")
    if np.array_equal(order, np.arange(len(order))):
        return
    pixels = np.frombuffer(pm.FloatPixelData, dtype="<f4").reshape(len(order), -1)
    pm.FloatPixelData = np.ascontiguousarray(pixels[order]).tobytes()
    pm.PerFrameFunctionalGroupsSequence = [frames[int(n)] for n in order]


def saver(dataset: Dataset) -> Callable[[Path], None]:
    """A writer of ``dataset`` at a path, for ``outputs.writing``'s files made in place."""

    def save(path: Path) -> None:
        dataset.save_as(path, enforce_file_format=True)

    return save
