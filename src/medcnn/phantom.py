"""A SYNTHETIC chest-CT-like phantom with one nodule at a known place: test data with an answer.

Real scans cannot be shipped with the code, and none says where its nodule is to the tenth of a
millimetre. The phantom does: a body of soft tissue and fat, a spine, two lungs with noise and
vessel-like tubes, and one lobulated solid nodule of about 12 mm at ``NODULE_CENTER_RAS``. It is
written twice, as a DICOM series (CT Image Storage, LPS positions, stored values with a rescale
intercept, as scanners do) and as NIfTI (RAS affine), so the readers of both formats can be held to
the same world geometry and the same HU. Everything is deterministic. Every file says it is
synthetic: PatientName ``SYNTHETIC^PHANTOM``, a series description that says "not a patient".
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from medcnn.volume import LPS_TO_RAS, Volume

SERIES_DESCRIPTION = "MedCNN synthetic phantom - not a patient"
PATIENT_NAME = "SYNTHETIC^PHANTOM"
SEED = 20240611

SHAPE = (160, 160, 80)
SPACING_MM = (0.8, 0.8, 1.5)
# Standard axial DICOM: i runs to the patient's left, j to posterior, k to superior (LPS +x, +y,
# +z), from an origin that is deliberately not zero.
ORIGIN_LPS = (-63.6, -45.2, -170.25)
NODULE_CENTER_RAS = (25.3, -12.1, -103.9)
NODULE_DIAMETER_MM = 12.0

HU_AIR = -1000.0
HU_FAT = -100.0
HU_SOFT_TISSUE = 40.0
HU_LUNG = -850.0
HU_VESSEL = 40.0
HU_NODULE = 30.0
HU_BONE = 500.0
NOISE_HU = 15.0

_BODY_CENTER_RAS = (0.0, -18.4)
_BODY_SEMI_AXES_MM = (60.0, 46.0)
_FAT_LAYER_MM = 6.0
_SPINE_CENTER_RAS, _SPINE_RADIUS_MM = (0.0, -50.0), 9.0
_LUNG_CENTERS_RAS = ((28.0, -14.0, -108.0), (-28.0, -14.0, -108.0))
_LUNG_SEMI_AXES_MM = (22.0, 34.0, 50.0)
# Vessels: (start, end, radius at start, radius at end), RAS mm, fanning out from each hilum and
# passing the nodule at more than 2.5 mm.
_VESSELS = (
    ((12.0, -14.0, -105.0), (44.0, 10.0, -134.0), 2.0, 0.8),
    ((12.0, -14.0, -105.0), (40.0, -40.0, -88.0), 1.8, 0.8),
    ((12.0, -14.0, -110.0), (30.0, -2.0, -148.0), 1.6, 0.7),
    ((12.0, -14.0, -100.0), (20.0, -30.0, -68.0), 1.6, 0.7),
    ((-12.0, -14.0, -105.0), (-44.0, 6.0, -128.0), 2.0, 0.8),
    ((-12.0, -14.0, -105.0), (-38.0, -36.0, -80.0), 1.8, 0.8),
    ((-12.0, -14.0, -108.0), (-30.0, 10.0, -90.0), 1.6, 0.7),
)
# The nodule: a core sphere with lobes on its surface (centre offsets in mm, radius in mm),
# balanced so its centroid stays within 0.05 mm of NODULE_CENTER_RAS; about 850 mm3, 11-12 mm
# across.
_NODULE_CORE_RADIUS_MM = 5.7
_NODULE_LOBES = (
    ((3.9, 0.0, 0.0), 2.8),
    ((-2.3, 3.2, 0.6), 3.0),
    ((-1.4, -3.0, 3.0), 2.8),
    ((0.5, 1.2, -3.9), 2.8),
    ((-0.4, -2.2, -2.2), 2.6),
)
_EDGE_MM = 0.8  # width of the partial-volume ramp at nodule and vessel borders


def examples_cache() -> Path:
    """Where generated examples are kept between runs (``$XDG_CACHE_HOME/medcnn``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "medcnn"


def phantom_affine() -> np.ndarray:
    """The phantom's voxel-to-RAS affine."""
    lps = np.eye(4)
    lps[:3, :3] = np.diag(SPACING_MM)
    lps[:3, 3] = ORIGIN_LPS
    return LPS_TO_RAS @ lps


def synthetic_chest() -> Volume:
    """The phantom as an int16 HU Volume (no file involved)."""
    affine = phantom_affine()
    # Axis-aligned grid: each RAS coordinate depends on one index, so broadcast 1D axes.
    x = (affine[0, 0] * np.arange(SHAPE[0]) + affine[0, 3])[:, None, None]
    y = (affine[1, 1] * np.arange(SHAPE[1]) + affine[1, 3])[None, :, None]
    z = (affine[2, 2] * np.arange(SHAPE[2]) + affine[2, 3])[None, None, :]
    shape = np.broadcast_shapes(x.shape, y.shape, z.shape)

    hu = np.full(shape, HU_AIR, dtype=np.float32)
    body = _ellipse(x, y, _BODY_CENTER_RAS, _BODY_SEMI_AXES_MM)
    inner = _ellipse(x, y, _BODY_CENTER_RAS, tuple(a - _FAT_LAYER_MM for a in _BODY_SEMI_AXES_MM))
    hu[np.broadcast_to(body, shape)] = HU_FAT
    hu[np.broadcast_to(inner, shape)] = HU_SOFT_TISSUE
    spine = (x - _SPINE_CENTER_RAS[0]) ** 2 + (y - _SPINE_CENTER_RAS[1]) ** 2 <= _SPINE_RADIUS_MM**2
    hu[np.broadcast_to(spine, shape)] = HU_BONE

    lungs = np.zeros(shape, dtype=bool)
    for center in _LUNG_CENTERS_RAS:
        lungs |= (
            ((x - center[0]) / _LUNG_SEMI_AXES_MM[0]) ** 2
            + ((y - center[1]) / _LUNG_SEMI_AXES_MM[1]) ** 2
            + ((z - center[2]) / _LUNG_SEMI_AXES_MM[2]) ** 2
        ) <= 1.0
    hu[lungs] = HU_LUNG
    for start, end, radius_start, radius_end in _VESSELS:
        fill = _tube_fill(x, y, z, start, end, radius_start, radius_end)
        hu = np.where(lungs, hu + fill * (HU_VESSEL - hu), hu)
    nodule = _nodule_fill(x, y, z)
    hu += nodule * (HU_NODULE - hu)

    rng = np.random.default_rng(SEED)
    hu += rng.normal(0.0, NOISE_HU, size=shape).astype(np.float32)
    array = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return Volume(array, affine, {"synthetic": True, "description": SERIES_DESCRIPTION})


def _ellipse(
    x: np.ndarray, y: np.ndarray, center: tuple[float, float], semi_axes: tuple[float, ...]
) -> np.ndarray:
    return ((x - center[0]) / semi_axes[0]) ** 2 + ((y - center[1]) / semi_axes[1]) ** 2 <= 1.0


def _ramp(signed_distance: np.ndarray) -> np.ndarray:
    """Fraction of a voxel inside a shape, from its signed distance to the border."""
    return np.clip(0.5 - signed_distance / _EDGE_MM, 0.0, 1.0).astype(np.float32)


def _tube_fill(
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    start: tuple[float, ...],
    end: tuple[float, ...],
    radius_start: float,
    radius_end: float,
) -> np.ndarray:
    """A tapering vessel along a segment: the distance to the segment against the local radius."""
    a, b = np.asarray(start), np.asarray(end)
    axis = b - a
    t = ((x - a[0]) * axis[0] + (y - a[1]) * axis[1] + (z - a[2]) * axis[2]) / (axis @ axis)
    t = np.clip(t, 0.0, 1.0)
    distance = np.sqrt(
        (x - a[0] - t * axis[0]) ** 2
        + (y - a[1] - t * axis[1]) ** 2
        + (z - a[2] - t * axis[2]) ** 2
    )
    return _ramp(distance - (radius_start + t * (radius_end - radius_start)))


def _nodule_fill(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """The lobulated nodule: a union of spheres, its border softened by partial volume."""
    cx, cy, cz = NODULE_CENTER_RAS
    spheres = [((0.0, 0.0, 0.0), _NODULE_CORE_RADIUS_MM), *_NODULE_LOBES]
    signed = None
    for (dx, dy, dz), radius in spheres:
        distance = np.sqrt((x - cx - dx) ** 2 + (y - cy - dy) ** 2 + (z - cz - dz) ** 2) - radius
        signed = distance if signed is None else np.minimum(signed, distance)
    assert signed is not None  # the core sphere is always there
    return _ramp(signed)


def write_dicom_series(
    volume: Volume,
    out_dir: Path,
    *,
    series_description: str = SERIES_DESCRIPTION,
    uid_seed: str = "medcnn-phantom",
    series_number: int = 1,
    rescale_slope: float = 1.0,
    rescale_intercept: float = -1024.0,
) -> list[Path]:
    """Write an HU volume as one CT Image Storage file per k slice, geometry in LPS.

    Stored values are ``(HU - intercept) / slope`` as unsigned 16 bit, as scanners write them, so
    a reader that forgets the rescale is caught. The slice positions follow ``volume.affine`` as
    it is: a sheared affine gives a tilted series, which is how tests make broken geometry. UIDs
    derive from ``uid_seed``, so the same call writes the same files.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lps = LPS_TO_RAS @ volume.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    orientation = np.concatenate([lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]])
    stored = np.rint((volume.array.astype(np.float64) - rescale_intercept) / rescale_slope)
    if stored.min() < 0 or stored.max() > 65535:
        raise ValueError("the volume's HU do not fit 16 bit unsigned with this rescale")
    stored = stored.astype(np.uint16)

    def uid(*parts: object) -> UID:
        return generate_uid(entropy_srcs=[uid_seed, *map(str, parts)])

    study_uid, series_uid, frame_uid = uid("study"), uid("series"), uid("frame")
    paths = []
    for k in range(volume.shape[2]):
        ds = _ct_slice_dataset(
            pixels=np.ascontiguousarray(stored[:, :, k].T),  # rows run along j, columns along i
            position=lps[:3, :3] @ (0.0, 0.0, float(k)) + lps[:3, 3],
            orientation=orientation,
            pixel_spacing=(spacing[1], spacing[0]),
            slice_thickness=spacing[2],
        )
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid("image", k)
        ds.SeriesDescription = series_description
        ds.SeriesNumber = series_number
        ds.InstanceNumber = k + 1
        ds.RescaleSlope = format_number_as_ds(float(rescale_slope))
        ds.RescaleIntercept = format_number_as_ds(float(rescale_intercept))
        path = out_dir / f"slice{k:04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


def _ct_slice_dataset(
    pixels: np.ndarray,
    position: np.ndarray,
    orientation: np.ndarray,
    pixel_spacing: tuple[float, float],
    slice_thickness: float,
) -> Dataset:
    """One CT Image Storage slice, labelled synthetic; the caller fills in the UIDs."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Manufacturer = "MedCNN synthetic phantom"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = "SYNTHETIC-PHANTOM"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20000101", "000000", "PHANTOM"  # fixed: reproducible
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.ImageComments = "SYNTHETIC phantom generated by MedCNN; not patient data"
    ds.BurnedInAnnotation = "NO"
    ds.ImagePositionPatient = [format_number_as_ds(float(v)) for v in position]
    ds.ImageOrientationPatient = [format_number_as_ds(float(v)) for v in orientation]
    ds.PixelSpacing = [format_number_as_ds(float(v)) for v in pixel_spacing]
    ds.SliceThickness = format_number_as_ds(float(slice_thickness))
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 0
    ds.RescaleType = "HU"
    ds.PixelData = pixels.astype("<u2").tobytes()
    return ds


def write_nifti(volume: Volume, path: Path) -> Path:
    """Write a volume as NIfTI with its RAS affine as both qform and sform (scanner space)."""
    image = nib.Nifti1Image(volume.array, volume.affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(volume.affine, code=1)
    image.set_sform(volume.affine, code=1)
    nib.save(image, path)
    return Path(path)


def make_phantom(out_dir: Path) -> dict:
    """Write the phantom as DICOM (``out_dir/dicom``) and NIfTI (``out_dir/phantom.nii.gz``).

    Returns ``{"dicom_dir", "nifti", "nodule_center_ras", "nodule_diameter_mm"}``.
    """
    out_dir = Path(out_dir)
    volume = synthetic_chest()
    dicom_dir = out_dir / "dicom"
    write_dicom_series(volume, dicom_dir)
    nifti = write_nifti(volume, out_dir / "phantom.nii.gz")
    return {
        "dicom_dir": dicom_dir,
        "nifti": nifti,
        "nodule_center_ras": NODULE_CENTER_RAS,
        "nodule_diameter_mm": NODULE_DIAMETER_MM,
    }
