"""The scans the benchmark reads, built in a temporary folder from the real chest CT.

- ``ct141_dicom``: the real series, ``../shared/data/ct/chest_ct_dicom`` (512x512x141, 2 mm).
- ``ct141_nifti``: the same scan as compressed NIfTI, converted by SimpleITK.
- ``ct600_nifti`` and ``ct600_dicom``: a thin-slice CT of 512x512x600 covering the same body,
  made by linear interpolation along the slices (0.467 mm apart, as thin-slice reconstructions
  are); the DICOM series reuses the real series' header with the new positions and UIDs.

The point is the same world position in all four: a vessel cross-section of about 6 mm in the
right lung, as a click on a small nodule would be.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.uid import generate_uid

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CHEST_CT = SHARED_DATA / "ct" / "chest_ct_dicom"
LIDC = SHARED_DATA / "lidc_voi"
POINT_RAS = (-48.9, -79.7, 35.5)
THIN_SLICES = 600


def read_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames(sorted(str(p) for p in folder.glob("*.dcm")))
    return reader.Execute()


def thin_slice_version(image: sitk.Image, n_slices: int) -> sitk.Image:
    """The same field of view with ``n_slices`` slices, linearly interpolated between them."""
    size = list(image.GetSize())
    spacing = list(image.GetSpacing())
    extent = spacing[2] * (size[2] - 1)
    spacing[2] = extent / (n_slices - 1)
    size[2] = n_slices
    return sitk.Resample(
        image,
        size,
        sitk.Transform(),
        sitk.sitkLinear,
        image.GetOrigin(),
        spacing,
        image.GetDirection(),
        -1024,
        sitk.sitkInt16,
    )


def write_dicom_series(image: sitk.Image, template_file: Path, out_dir: Path) -> Path:
    """A CT series of ``image`` with the template slice's header (new UIDs and positions)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    template = pydicom.dcmread(template_file)
    intercept = float(template.RescaleIntercept)
    stored = sitk.GetArrayFromImage(image).astype(np.float64) - intercept  # HU -> stored values
    stored = np.clip(np.rint(stored), 0, 4095).astype(np.uint16)
    series_uid = generate_uid()
    origin = np.array(image.GetOrigin())
    normal = np.array(image.GetDirection()).reshape(3, 3)[:, 2]
    step = image.GetSpacing()[2]
    for k in range(stored.shape[0]):
        ds = copy.deepcopy(template)
        position = origin + k * step * normal
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.SliceLocation = f"{position[2]:.4f}"
        ds.SliceThickness = f"{step:.4f}"
        ds.SeriesDescription = f"benchmark thin-slice ({stored.shape[0]} slices)"
        ds.PixelData = stored[k].tobytes()
        ds.save_as(out_dir / f"slice{k:04d}.dcm", enforce_file_format=True)
    return out_dir


def build_scans(tmp: Path, thin_slices: int = THIN_SLICES) -> dict[str, Path]:
    """All four scans; the three made here go to ``tmp``."""
    tmp.mkdir(parents=True, exist_ok=True)
    image = read_series(CHEST_CT)
    nifti141 = tmp / "ct141.nii.gz"
    sitk.WriteImage(image, str(nifti141))
    thin = thin_slice_version(image, thin_slices)
    nifti600 = tmp / f"ct{thin_slices}.nii.gz"
    sitk.WriteImage(thin, str(nifti600))
    template = sorted(CHEST_CT.glob("*.dcm"))[0]
    dicom600 = write_dicom_series(thin, template, tmp / f"ct{thin_slices}_dicom")
    return {
        "ct141_dicom": CHEST_CT,
        "ct141_nifti": nifti141,
        f"ct{thin_slices}_nifti": nifti600,
        f"ct{thin_slices}_dicom": dicom600,
    }


def lidc_manifest(out: Path, limit: int | None = None) -> Path:
    """``image,r,a,s,id`` for the nodules of ``nodules.csv`` (the first ``limit``)."""
    import csv

    with open(LIDC / "nodules.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[:limit]
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image", "r", "a", "s"])
        for row in rows:
            writer.writerow(
                [
                    Path(row["image"]).name.replace(".nii.gz", ""),
                    str(LIDC / row["image"]),
                    row["center_r"],
                    row["center_a"],
                    row["center_s"],
                ]
            )
    return out
