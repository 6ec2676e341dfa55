"""Radiographs in: one 2D image, brighter where denser, on its own pixel grid.

``read_radiograph`` is the one way in. It reads

- DICOM, one file or a folder holding exactly one DICOM image: a CR, DX or secondary capture
  (Modality CR, DX, RG, OT or SC, or none). pydicom decodes the stored values (GDCM, through
  SimpleITK, when pydicom cannot decode a compressed file) and applies the modality
  LUT (rescale), then the VOI LUT sequence or else the window centre and width; MONOCHROME1 is
  then inverted, so that denser is brighter whatever the file's convention. The spacing is
  PixelSpacing, else the detector's ImagerPixelSpacing. The pixels sit where
  ImagePositionPatient and ImageOrientationPatient put them, as ITK and 3D Slicer place them;
  without both, at origin 0 with identity orientation, as ITK places a DX without position.
  ``spacing_known`` says whether PixelSpacing or ImagerPixelSpacing was there.
- PNG and JPEG through Pillow: grey (8 or 16 bit), or RGB whose channels agree (a grey
  radiograph saved as colour), placed as ITK and Slicer place a picture: origin 0, spacing 1 mm.
- NIfTI (nibabel), NRRD and MetaImage (SimpleITK): a 2D image, or a volume of one slice as 3D
  Slicer saves a radiograph. The file's own geometry is kept, so a heatmap written on ``grid``
  overlays it exactly; values are as stored (no Hounsfield units here). The plane is the two
  axes longer than one, in the file's order, so a file of (i, j, 1) is ``grid`` as it is.
  ``spacing_known`` is False when every spacing is 1 mm, the default a converted picture has.

Refused with ``NotRadiographError`` (exit 14): CT, MR and other modalities that are not a
radiograph, a volume of several slices, several frames, a lateral view, a colour image, an image
without contrast, and one smaller than ``MIN_SIDE_PIXELS`` a side. More than ``MAX_PIXELS`` is a
``ResourceLimitError``; a corrupt or truncated file, NaN or infinite pixels and any other format
are an ``UnreadableImageError``. ``metadata`` never holds a patient identifier.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk
from PIL import Image, UnidentifiedImageError
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

try:  # pydicom 3
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut
except ImportError:  # pydicom 2.4, which 3D Slicer 5.10 ships (the extension never replaces it)
    from pydicom.pixel_data_handlers.util import (  # type: ignore[no-redef]
        apply_color_lut,
        apply_modality_lut,
        apply_voi_lut,
    )

from medcnn.errors import (
    InputNotFoundError,
    MedCNNError,
    NotRadiographError,
    ResourceLimitError,
    UnreadableImageError,
    UsageError,
)
from medcnn.reading.dicom import (
    float_or,
    int_or,
    plane_lps_affine,
    scan_folder,
    tag_floats,
    tag_value,
    what_modality,
)
from medcnn.reading.image_files import check_nifti_header, format_of, lps_affine, nrrd_spacings
from medcnn.reading.trust import check_grid, check_regular_file, check_spacing
from medcnn.reading.voxels import first_line
from medcnn.volume import LPS_TO_RAS, Volume

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")
# The network sees a radiograph at 128 x 128 pixels (the founding baseline at 64 x 64): a smaller
# image is a thumbnail or an icon, and enlarging it would only invent the detail being judged.
MIN_SIDE_PIXELS = 64
# 10,000 x 10,000 pixels: a 43 cm detector at 0.1 mm is 18 megapixels, so more is a mosaic or a
# mistake, and its float32 copies alone would take gigabytes.
MAX_PIXELS = 100_000_000
# Colour is real when an RGB image's channels differ, on average (the mean absolute difference
# between two channels of a pixel), by more than this share of the intensity range. A grey
# radiograph saved as RGB measures 0 through JPEG (its chroma is zero), 1.3 % with independent
# noise of 3 grey levels in each channel, 1.7 % with a red marker over 2.5 % of the image; the
# same radiograph tinted with a turning hue measures 9 %, and a colour photograph more
# (tests/test_radiograph_reader.py measures each).
COLOUR_SPREAD_LIMIT = 0.03

RADIOGRAPH_MODALITIES = {"CR", "DX", "RG", "OT", "SC"}
VOLUME_MODALITIES = {"CT", "MR", "PT", "NM", "US"}
LATERAL_VIEWS = {"LL", "RL", "LLD", "RLD", "LLO", "RLO", "LAT", "LATERAL"}
_GREY_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2")
_GREY_PICTURE_MODES = ("L", "I", "I;16", "I;16B", "I;16L", "F")
_ACCEPTED = (
    "give a DICOM radiograph (CR or DX), a PNG or JPEG picture, or a NIfTI, NRRD or MetaImage "
    "file of one slice."
)


@dataclass(frozen=True)
class Radiograph:
    """A radiograph on its own pixel grid.

    ``grid.array`` is (columns, rows, 1), the axis order of ITK and 3D Slicer (i along a row,
    j down the columns), and ``grid.affine`` maps those indices to RAS mm exactly as the input
    file places them (for a PNG or JPEG, as ITK and Slicer do: origin 0, spacing 1 mm unless
    known, i to the patient's left in LPS). Values are brighter where denser, float32.
    """

    grid: Volume
    source_format: str
    spacing_known: bool = False
    metadata: dict = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def pixels(self) -> np.ndarray:
        """(rows, columns) as displayed, row 0 at the top."""
        return self.grid.array[:, :, 0].T

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns)."""
        columns, rows, _ = self.grid.shape
        return rows, columns


def picture_affine(row_spacing: float = 1.0, column_spacing: float = 1.0) -> np.ndarray:
    """Where ITK (and so 3D Slicer) puts a 2D picture: origin 0, identity direction in LPS."""
    return LPS_TO_RAS @ np.diag([column_spacing, row_spacing, 1.0, 1.0])


def from_pixels(pixels: np.ndarray, affine: np.ndarray, source_format: str, **kwargs) -> Radiograph:
    """A ``Radiograph`` of (rows, columns) pixels placed by ``affine``."""
    grid = np.ascontiguousarray(np.asarray(pixels, dtype=np.float32).T[:, :, None])
    return Radiograph(grid=Volume(grid, affine), source_format=source_format, **kwargs)


def read_radiograph(path: Path | str) -> Radiograph:
    """The radiograph at ``path`` (DICOM file or folder, PNG, JPEG, NIfTI, NRRD or MetaImage),
    refused with an error the user can act on when the X-ray model cannot judge it."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputNotFoundError(f"{path} does not exist; check the path to the radiograph.")
    if not path.is_dir():
        check_regular_file(path)  # a pipe or device would block the reader forever
    if path.is_dir() or path.name.upper() == "DICOMDIR":
        radiograph = read_dicom_radiograph(
            single_dicom_image(path if path.is_dir() else path.parent)
        )
    elif path.suffix.lower() in PICTURE_SUFFIXES:
        radiograph = read_picture(path)
    elif (image_format := format_of(path)) is not None:
        radiograph = read_image_file(path, image_format)
    else:
        radiograph = read_dicom_radiograph(path)
    check_grid(radiograph.grid.affine, path.name, axes=2)
    check_values(radiograph.pixels, path.name)
    return radiograph


# --- checks every format shares ------------------------------------------------------------------


def check_pixel_count(rows: int, columns: int, name: str) -> None:
    """Refuse, before decoding, an image too small to judge or too large to hold."""
    if rows * columns > MAX_PIXELS:
        raise ResourceLimitError(
            f"{name} has {rows} x {columns} pixels, more than the {MAX_PIXELS // 10**6} "
            "megapixels a radiograph can have; downsample it (a chest radiograph needs no more "
            "than about 4000 pixels a side)."
        )
    if min(rows, columns) < MIN_SIDE_PIXELS:
        raise NotRadiographError(
            f"{name} is too small to judge: {rows} x {columns} pixels; give the original "
            "radiograph."
        )


def check_values(pixels: np.ndarray, name: str) -> None:
    """Refuse pixels that are corrupt (not finite) or hold no image (one value everywhere)."""
    low, high = float(np.min(pixels)), float(np.max(pixels))
    if not (np.isfinite(low) and np.isfinite(high)):
        raise UnreadableImageError(
            f"{name} contains NaN or infinite pixels, so it is corrupt; export the radiograph "
            "again."
        )
    if low == high:
        raise NotRadiographError(
            f"{name} has no contrast (every pixel is {low:g}), so it holds no radiograph; give "
            "the radiograph itself."
        )


def grey_from_channels(channels: np.ndarray, intensity_range: float, name: str) -> np.ndarray:
    """The grey of colour channels (the last axis), refusing an image whose colour is real:
    a radiograph saved as RGB carries its grey in three equal channels."""
    colour = channels[..., :3]
    # Of three values, the mean absolute difference of the pairs is 2/3 of max - min.
    mean_high = np.mean(colour.max(axis=-1), dtype=np.float64)
    mean_low = np.mean(colour.min(axis=-1), dtype=np.float64)
    spread = float(2 / 3 * (mean_high - mean_low)) / max(intensity_range, 1.0)
    if spread > COLOUR_SPREAD_LIMIT:
        raise NotRadiographError(
            f"{name} is a colour image (its colour channels differ by {spread:.0%} of the "
            "intensity range on average), not a radiograph; give the grey radiograph itself."
        )
    return colour.mean(axis=-1, dtype=np.float32)


def _intensity_range(values: np.ndarray) -> float:
    """The full range of the values' type (255 for 8 bit), or their own range for floats."""
    if np.issubdtype(values.dtype, np.integer):
        return float(np.iinfo(values.dtype).max)
    return float(np.ptp(values))


# --- PNG and JPEG --------------------------------------------------------------------------------


def read_picture(path: Path | str) -> Radiograph:
    """A PNG or JPEG radiograph: grey as stored (8 or 16 bit), RGB as the grey its channels
    share (a colour image is refused)."""
    path = Path(path)
    values, mode = _picture_values(path)
    pixels = values if values.ndim == 2 else grey_from_channels(values, 255.0, path.name)
    suffix = path.suffix.lower().lstrip(".")
    return from_pixels(pixels, picture_affine(), suffix, metadata={"format": suffix, "mode": mode})


def _picture_values(path: Path) -> tuple[np.ndarray, str]:
    """Grey (rows, columns) or RGB (rows, columns, 3) values, and Pillow's mode."""
    try:
        with warnings.catch_warnings():
            # MAX_PIXELS is the limit that applies; Pillow's own bomb check only warns below it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                check_pixel_count(image.height, image.width, path.name)
                image.load()
                if image.mode in _GREY_PICTURE_MODES:
                    return np.asarray(image), image.mode
                return np.asarray(image.convert("RGB")), image.mode
    except Image.DecompressionBombError as error:
        raise ResourceLimitError(
            f"{path.name} has more than {MAX_PIXELS // 10**6} megapixels, more than a "
            "radiograph can have; downsample it (a chest radiograph needs no more than about "
            "4000 pixels a side)."
        ) from error
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise UnreadableImageError(
            f"{path} cannot be read as a PNG or JPEG image ({first_line(error)}); the file is "
            "probably truncated or not a picture: export it again."
        ) from error


# --- NIfTI, NRRD and MetaImage -------------------------------------------------------------------


def read_image_file(path: Path, image_format: str) -> Radiograph:
    """A NIfTI, NRRD or MetaImage radiograph: a 2D image, or a volume of one slice."""
    if image_format == "nifti":
        array, affine = _nifti_values(path)
    else:
        array, affine = _itk_values(path, image_format)
        check_spacing(nrrd_spacings(path) or [1.0], path.name)  # as written: ITK may replace
    plane, plane_affine = _one_plane(array, affine)
    spacing = np.linalg.norm(plane_affine[:3, :2], axis=0)
    return from_pixels(
        plane.T,
        plane_affine,
        image_format,
        # A picture converted by 3D Slicer carries ITK's default of 1 mm, which says nothing.
        spacing_known=not np.allclose(spacing, 1.0),
        metadata={"format": image_format},
    )


def _plane_shape(shape: tuple[int, ...], name: str) -> tuple[int, int, int]:
    """A file's shape as 3D, refused unless it holds one plane (two axes longer than one)."""
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 3:
        raise NotRadiographError(
            f"{name} is a {len(shape)}D image of shape {shape}, not a radiograph; give a single "
            "2D radiograph."
        )
    padded = (*shape, 1, 1, 1)
    shape3 = (padded[0], padded[1], padded[2])
    if min(shape3) > 1:
        raise NotRadiographError(
            f"{name} is a volume of {shape3[2]} slices (a CT or MR scan), not a radiograph; the "
            "CT model takes such a volume with a point (--point), the X-ray model one radiograph."
        )
    columns, rows = (n for axis, n in enumerate(shape3) if axis != _flat_axis(shape3))
    check_pixel_count(rows, columns, name)
    return shape3


def _flat_axis(shape3: tuple[int, ...]) -> int:
    """The axis across the plane: the last of length one."""
    return max(axis for axis, n in enumerate(shape3) if n == 1)


def _one_plane(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The plane of a 3D array of one slice as (i, j) in the file's order, and the affine with
    its columns reordered alike, so that every pixel keeps its world position."""
    flat = _flat_axis(array.shape)
    order = [axis for axis in range(3) if axis != flat] + [flat]
    return array.transpose(order)[:, :, 0], affine[:, [*order, 3]]


def _nifti_values(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The voxels (scaled as the header says) as float32 (i, j, k), and the RAS affine."""
    try:
        image: Any = nib.load(path)  # a NIfTI image; nibabel types it as any file
        stored = check_nifti_header(image.header, image.shape, path)
        if int(stored["sform_code"]) == 0:  # pixdim places the pixels: spacings, as stored
            in_plane = [n > 1 for n in tuple(image.shape)[:3]]
            check_spacing(np.asarray(stored["pixdim"][1:4])[: len(in_plane)][in_plane], path.name)
        shape3 = _plane_shape(tuple(int(n) for n in image.shape), path.name)
        array = np.asanyarray(image.dataobj)
    except MedCNNError:
        raise
    except Exception as err:
        raise UnreadableImageError(
            f"{path} cannot be read as NIfTI ({first_line(err)}); the file is probably "
            "truncated or not NIfTI: copy or convert it again."
        ) from err
    return _grey_levels(array, path.name).reshape(shape3), np.asarray(image.affine, dtype=float)


def _itk_values(path: Path, image_format: str) -> tuple[np.ndarray, np.ndarray]:
    """The voxels of an NRRD or MetaImage as float32 (i, j, k), and ITK's geometry as RAS."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        shape3 = _plane_shape(tuple(int(n) for n in reader.GetSize()), path.name)
        image = reader.Execute()
    except MedCNNError:
        raise
    except Exception as err:
        raise UnreadableImageError(
            f"{path} cannot be read as {image_format.upper()} ({first_line(err)}); the file is "
            "probably truncated or corrupt: copy or convert it again."
        ) from err
    if image.GetDimension() == 4:
        image = image[:, :, :, 0]
    components = image.GetNumberOfComponentsPerPixel()
    array = sitk.GetArrayFromImage(image)  # (k, j, i) or (j, i), channels last
    if components in (3, 4):
        array = grey_from_channels(array, _intensity_range(array), path.name)
    elif components != 1:
        raise NotRadiographError(
            f"{path.name} holds {components} values per pixel (a vector image), not a "
            "radiograph; give a grey radiograph."
        )
    grey = _grey_levels(array, path.name).T.reshape(shape3)
    return grey, LPS_TO_RAS @ lps_affine(image)


def _grey_levels(array: np.ndarray, name: str) -> np.ndarray:
    """Numbers as float32; anything else (labels, RGB records) is not a grey image."""
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number):
        raise UnreadableImageError(
            f"{name} holds values of type {array.dtype}, not grey levels; give a grey-level "
            "radiograph."
        )
    if np.iscomplexobj(array):
        raise UnreadableImageError(
            f"{name} holds complex values, not grey levels; give a grey-level radiograph."
        )
    return np.asarray(array, dtype=np.float32)


# --- DICOM ---------------------------------------------------------------------------------------


def single_dicom_image(folder: Path) -> Path:
    """The one DICOM image a folder holds (searched recursively, as for a CT series)."""
    scan = scan_folder(folder, recursive=True)
    images = [s for series in scan.series for s in series.slices if min(s.size) > 0]
    if not images and scan.unreadable_files:
        raise UnreadableImageError(
            f"{folder} holds {scan.unreadable_files} file(s) that look like DICOM but cannot be "
            "read; copy the radiograph again from the archive."
        )
    if not images:
        raise InputNotFoundError(f"{folder} holds no DICOM image; {_ACCEPTED}")
    if len(images) == 1:
        return images[0].path
    volume = sorted({str(s.modality) for s in images} & VOLUME_MODALITIES)
    if volume:
        raise NotRadiographError(
            f"{folder} holds {len(images)} DICOM images of a {'/'.join(volume)} series, not a "
            "radiograph; the CT model takes a CT series with a point (--point), the X-ray model "
            "one radiograph."
        )
    raise UsageError(
        f"{folder} holds {len(images)} DICOM images; give the file of the one radiograph to "
        "analyse."
    )


def read_dicom_radiograph(path: Path) -> Radiograph:
    """One DICOM radiograph, refused from its header, before decoding, when it cannot be one."""
    ds = _dicom_dataset(path)
    _refuse_non_radiograph(ds, path.name)
    rows, columns = int_or(tag_value(ds, "Rows"), 0), int_or(tag_value(ds, "Columns"), 0)
    check_pixel_count(rows, columns, path.name)
    stored = _stored_values(ds, path)
    grey = _text(ds, "PhotometricInterpretation") in _GREY_PHOTOMETRIC
    if stored.shape[:2] != (rows, columns) or stored.ndim != (2 if grey else 3):
        raise UnreadableImageError(
            f"The pixels of {path.name} decoded to shape {stored.shape}, not its {rows} x "
            f"{columns}; the file is corrupt: copy it again from the archive."
        )
    pixels, voi, voi_warnings = _brighter_where_denser(ds, stored, path.name)
    affine, spacing_source, geometry_warnings = _dicom_geometry(ds)
    return from_pixels(
        pixels,
        affine,
        "dicom",
        spacing_known=spacing_source is not None,
        # the file itself, which DICOM results (--dicom) reference and copy from
        metadata={**_dicom_metadata(ds, spacing_source, voi), "source_file": str(path)},
        warnings=tuple(voi_warnings + geometry_warnings),
    )


def _dicom_dataset(path: Path) -> Dataset:
    """The whole file: a radiograph is one image, and its pixels are needed anyway."""
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError as err:
        raise UnreadableImageError(
            f"{path.name} is not an image MedCNN can read; {_ACCEPTED}"
        ) from err
    except Exception as err:
        raise UnreadableImageError(
            f"{path.name} looks like DICOM but cannot be read ({first_line(err)}); the file is "
            "probably truncated or corrupt: copy it again from the archive."
        ) from err


def _text(ds: Dataset, name: str) -> str | None:
    """A tag as stripped text, None when absent or empty."""
    value = tag_value(ds, name)
    return None if value is None else (str(value).strip() or None)


def _refuse_non_radiograph(ds: Dataset, name: str) -> None:
    """Refuse, from the header, what the X-ray model cannot judge."""
    modality = (_text(ds, "Modality") or "").upper() or None
    if modality in VOLUME_MODALITIES:
        raise NotRadiographError(
            f"{name} is {what_modality(modality)} (Modality {modality}), not a radiograph; the "
            "CT model takes CT series with a point (--point), the X-ray model a CR or DX chest "
            "radiograph."
        )
    if modality is not None and modality not in RADIOGRAPH_MODALITIES:
        raise NotRadiographError(
            f"{name} is {what_modality(modality)} (Modality {modality}), not a chest "
            "radiograph; give a CR or DX chest radiograph."
        )
    frames = int_or(tag_value(ds, "NumberOfFrames"), 1)
    if frames > 1:
        raise NotRadiographError(
            f"{name} holds {frames} frames (a multi-frame object), not one radiograph; export "
            "the single frontal image to analyse."
        )
    view = _lateral_view(ds)
    if view is not None:
        raise NotRadiographError(
            f"{name} is a lateral view ({view}), and the X-ray model judges frontal chest "
            "radiographs only; give the study's PA or AP radiograph."
        )
    if "PixelData" not in ds:
        raise UnreadableImageError(
            f"{name} holds no pixel data (it is truncated, or not an image); copy it again from "
            f"the archive, or {_ACCEPTED}"
        )


def _lateral_view(ds: Dataset) -> str | None:
    """How the header says the view is lateral (ViewPosition or the view code), else None."""
    view = (_text(ds, "ViewPosition") or "").upper()
    if view in LATERAL_VIEWS or "LAT" in view:
        return f"ViewPosition {view}"
    codes: Any = tag_value(ds, "ViewCodeSequence") or []
    for code in codes:
        meaning = str(code.get("CodeMeaning", "")).strip()
        if "lateral" in meaning.lower():
            return f"view code '{meaning}'"
    return None


def _stored_values(ds: Dataset, path: Path) -> np.ndarray:
    """The stored pixel values: decoded by pydicom, or by GDCM when pydicom cannot decode a
    compressed file (it lacks JPEG lossless here, a compression common in CR archives)."""
    try:
        stored = ds.pixel_array
        if _text(ds, "PhotometricInterpretation") == "PALETTE COLOR":
            stored = apply_color_lut(stored, ds)
        return stored
    except Exception as err:
        meta: Any = getattr(ds, "file_meta", None)
        syntax = meta.get("TransferSyntaxUID") if meta is not None else None
        problem = err
    if syntax is not None and syntax.is_compressed:
        try:
            return _stored_values_by_gdcm(ds, path)
        except Exception as err:
            problem = err
    raise UnreadableImageError(
        f"The pixels of {path.name} cannot be decoded ({first_line(problem)}); the file is "
        "truncated or uses an unsupported compression: copy it again from the archive."
    ) from problem


def _stored_values_by_gdcm(ds: Dataset, path: Path) -> np.ndarray:
    """GDCM's pixels taken back to the stored values.

    GDCM applies the rescale and turns MONOCHROME1 into MONOCHROME2 (2^BitsStored - 1 minus the
    stored value); both are undone here, so that the modality and VOI LUTs then apply exactly
    as to pydicom's pixels.
    """
    values = sitk.GetArrayFromImage(sitk.ReadImage(str(path), imageIO="GDCMImageIO"))[0]
    photometric = _text(ds, "PhotometricInterpretation")
    if photometric not in _GREY_PHOTOMETRIC:
        return values
    slope = float_or(tag_value(ds, "RescaleSlope"), 1.0)
    intercept = float_or(tag_value(ds, "RescaleIntercept"), 0.0)
    stored = (values.astype(np.float64) - intercept) / slope
    if photometric == "MONOCHROME1":
        stored = (2 ** int_or(tag_value(ds, "BitsStored"), 16) - 1) - stored
    return np.rint(stored).astype(np.int64)


def _brighter_where_denser(
    ds: Dataset, stored: np.ndarray, name: str
) -> tuple[np.ndarray, str | None, list[str]]:
    """Grey levels as the file asks them displayed, denser brighter; the VOI used; warnings."""
    photometric = _text(ds, "PhotometricInterpretation")
    if photometric not in _GREY_PHOTOMETRIC:
        return grey_from_channels(stored, _colour_range(ds, stored), name), None, []
    values = apply_modality_lut(stored, ds)
    values, voi, warnings = _apply_voi(values, ds, name)
    values = np.asarray(values, dtype=np.float32)
    if photometric == "MONOCHROME1":  # lower is denser: mirror within the image's own range
        values = values.max() + values.min() - values
    return values, voi, warnings


def _colour_range(ds: Dataset, stored: np.ndarray) -> float:
    """The intensity range of colour samples: BitsStored's, or a palette's output type's."""
    if _text(ds, "PhotometricInterpretation") == "PALETTE COLOR":
        return _intensity_range(stored)
    return float(2 ** int_or(tag_value(ds, "BitsStored"), 8) - 1)


def _apply_voi(
    values: np.ndarray, ds: Dataset, name: str
) -> tuple[np.ndarray, str | None, list[str]]:
    """The VOI LUT sequence, else the window centre and width, else the values unchanged."""
    items: Any = tag_value(ds, "VOILUTSequence") or []
    if items and "LUTDescriptor" in items[0] and "LUTData" in items[0]:
        voi = "VOI LUT sequence"
    elif tag_value(ds, "WindowCenter") is not None and tag_value(ds, "WindowWidth") is not None:
        voi = "window centre and width"
    else:
        return values, None, []
    if np.issubdtype(values.dtype, np.floating) and np.array_equal(values, np.rint(values)):
        values = values.astype(np.int64)  # a LUT is indexed by integers
    try:
        return apply_voi_lut(values, ds), voi, []
    except Exception as err:
        return (
            values,
            None,
            [
                f"{name}'s {voi} cannot be applied ({first_line(err)}), so its values are used "
                "as the modality LUT gives them."
            ],
        )


def _dicom_geometry(ds: Dataset) -> tuple[np.ndarray, str | None, list[str]]:
    """The RAS affine, the tag the spacing came from (None: 1 mm assumed), and warnings."""
    spacing, source = _dicom_spacing(ds)
    warnings = []
    if source == "ImagerPixelSpacing":
        warnings.append(
            "The pixel spacing is the detector's (ImagerPixelSpacing), not corrected for "
            "magnification, so sizes in the patient are slightly smaller than measured."
        )
    orientation = tag_floats(tag_value(ds, "ImageOrientationPatient"), 6)
    position = tag_floats(tag_value(ds, "ImagePositionPatient"), 3)
    if orientation is not None and position is not None:
        if _orthonormal(orientation):
            return LPS_TO_RAS @ plane_lps_affine(orientation, spacing, position), source, warnings
        warnings.append(
            "ImageOrientationPatient is not two perpendicular unit vectors, so the image is "
            "placed at origin 0 without orientation."
        )
    return picture_affine(*spacing), source, warnings


def _dicom_spacing(ds: Dataset) -> tuple[tuple[float, float], str | None]:
    """(row spacing, column spacing) in mm and the tag it came from; 1 mm and None if unknown.
    A spacing that is there but cannot be true (0, negative, absurd) is refused, not ignored."""
    for name in ("PixelSpacing", "ImagerPixelSpacing"):
        spacing = tag_floats(tag_value(ds, name), 2)
        if spacing is not None:
            check_spacing(spacing, f"The radiograph's {name}")
            return (float(spacing[0]), float(spacing[1])), name
    return (1.0, 1.0), None


def _orthonormal(orientation: np.ndarray) -> bool:
    row, column = orientation[:3], orientation[3:]
    unit = np.allclose([np.linalg.norm(row), np.linalg.norm(column)], 1.0, atol=1e-3)
    return bool(unit and abs(row @ column) < 1e-3)


def _dicom_metadata(ds: Dataset, spacing_source: str | None, voi: str | None) -> dict:
    """Where the pixels came from, for provenance: no patient identifier."""
    return {
        "format": "dicom",
        "modality": _text(ds, "Modality"),
        "photometric_interpretation": _text(ds, "PhotometricInterpretation"),
        "bits_stored": int_or(tag_value(ds, "BitsStored"), 0) or None,
        "signed": int_or(tag_value(ds, "PixelRepresentation"), 0) == 1,
        "view_position": _text(ds, "ViewPosition"),
        "body_part_examined": _text(ds, "BodyPartExamined"),
        "rows": int_or(tag_value(ds, "Rows"), 0),
        "columns": int_or(tag_value(ds, "Columns"), 0),
        "spacing_source": spacing_source,
        "voi": voi,
    }
