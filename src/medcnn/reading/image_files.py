"""Single-file scans: NIfTI through nibabel (already RAS), NRRD and MetaImage through SimpleITK
(LPS, converted here once), each read only as far as a click's region needs when the file
allows it."""

from __future__ import annotations

import gzip
import os
import re
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from nibabel.openers import ImageOpener

from medcnn.errors import GeometryError, UnreadableImageError
from medcnn.reading.region import ScanRegion, slices_reached, volume_or_slab
from medcnn.reading.trust import check_grid, check_stored_bytes
from medcnn.reading.voxels import (
    array_from_sitk,
    check_size,
    first_line,
    hounsfield_array,
    scan_metadata,
    value_warnings,
)
from medcnn.volume import LPS_TO_RAS, Volume

_SUFFIX_FORMATS = {
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "mha",
    ".mhd": "mha",
}
_SLAB_DTYPES = {np.dtype(t) for t in ("int8", "uint8", "<i2", ">i2")}
_SLAB_PIXEL_IDS = {sitk.sitkInt8, sitk.sitkUInt8, sitk.sitkInt16}
_NRRD_PIXEL_DTYPES = {sitk.sitkInt8: "i1", sitk.sitkUInt8: "u1", sitk.sitkInt16: "i2"}
_NRRD_HEADER_LIMIT = 1 << 16
# Fields that put the voxels elsewhere than right after the header.
_NRRD_DETACHED_OR_SKIPPED = {
    "data file",
    "datafile",
    "line skip",
    "lineskip",
    "byte skip",
    "byteskip",
}


def format_of(path: Path) -> str | None:
    """ "nifti", "nrrd" or "mha" from a file's name; None for DICOM or anything else."""
    name = path.name.lower()
    for suffix, image_format in _SUFFIX_FORMATS.items():
        if name.endswith(suffix):
            return image_format
    return None


def read_nifti(path: Path, around: ScanRegion | None = None) -> Volume:
    try:
        image: Any = nib.load(path)  # Nifti1Image or Nifti2Image; nibabel types it as any file
        shape = tuple(int(n) for n in image.shape)
        header_dtype = np.dtype(image.get_data_dtype())
    except Exception as err:
        raise UnreadableImageError(
            f"{path} cannot be read as NIfTI ({first_line(err)}); the file is probably "
            "truncated or not NIfTI: copy or convert it again."
        ) from err
    shape3 = _three_dimensions(shape, path)
    check_size(int(np.prod(shape3)) * max(2, header_dtype.itemsize), str(path))
    affine = np.asarray(image.affine, dtype=float)
    stored = check_nifti_header(image.header, shape, path)
    # Without an sform the header's pixdim places the voxels: its numbers must be spacings.
    by_pixdim = int(stored["sform_code"]) == 0
    check_grid(affine, path.name, spacing=stored["pixdim"][1:4] if by_pixdim else None)
    slope, intercept = image.dataobj.slope, image.dataobj.inter
    unscaled = slope == 1 and intercept == 0
    # A region reads only its slab of the last (slowest) axis, when no voxel elsewhere can be
    # NaN or beyond the HU range (integer files within int16, unscaled); others are read whole.
    partial = unscaled and header_dtype in _SLAB_DTYPES
    first, count = slices_reached(around if partial else None, affine, shape3[2])
    try:
        if count < shape3[2]:
            array = np.asanyarray(image.dataobj[:, :, first : first + count])
        elif unscaled:
            array = np.asanyarray(image.dataobj)
        else:
            array = image.get_fdata(dtype=np.float32)
    except Exception as err:
        raise UnreadableImageError(
            f"The voxels of {path} cannot be read ({first_line(err)}); the file is probably "
            "truncated: copy or convert it again."
        ) from err
    array, low, high = hounsfield_array(array.reshape(*shape3[:2], count), copy=False)
    warnings = []
    if int(image.header["sform_code"]) == 0 and int(image.header["qform_code"]) == 0:
        warnings.append(
            f"{path.name} has no orientation (its qform and sform codes are 0), so world "
            "positions assume an arbitrary axis-aligned grid."
        )
    warnings += value_warnings(array, low, high, modality_known=False)
    metadata = scan_metadata(path, "nifti", None, warnings)
    return volume_or_slab(array, affine, metadata, first, shape3)


def check_nifti_header(header: Any, shape: tuple[int, ...], path: Path) -> Any:
    """Refuse a NIfTI header that disagrees with itself or its file: distances not in
    millimetres (nibabel's affine assumes them), a ``bitpix`` other than its data type's, or a
    file shorter than the voxels its header promises (a click reads only a slab, so a file cut
    after that slab would otherwise pass). Returns the header as stored: nibabel repairs some
    fields as it loads (a pixdim of 0 becomes 1), which would hide what the file says."""
    with ImageOpener(str(path)) as handle:
        header = type(header).from_fileobj(handle, check=False)
    units = header.get_xyzt_units()[0]
    if units not in ("unknown", "mm"):
        raise GeometryError(
            f"{path.name}'s header gives distances in {units}s, not millimetres; convert it to "
            "millimetres (for example with 3D Slicer or dcm2niix) and give that file."
        )
    dtype = np.dtype(header.get_data_dtype())
    if int(header["bitpix"]) != dtype.itemsize * 8:
        raise UnreadableImageError(
            f"{path.name}'s header contradicts itself: its data type {dtype} has "
            f"{dtype.itemsize * 8} bits a voxel, its bitpix says {int(header['bitpix'])}; the "
            "file is corrupt: copy or convert it again."
        )
    promised = int(header.get_data_offset()) + int(np.prod(shape)) * dtype.itemsize
    check_stored_bytes(path, promised, stored_bytes(path, promised))
    return header


def stored_bytes(path: Path, promised: int) -> int:
    """The bytes a NIfTI file holds once decompressed. A gzip file's last four bytes give its
    length modulo 2**32, so a whole file is told at once; a file whose trailer does not match
    (cut short, or written in several gzip members) is counted by decompressing it."""
    if not path.name.lower().endswith(".gz"):
        return path.stat().st_size
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() >= 18:
            handle.seek(-4, os.SEEK_END)
            if int.from_bytes(handle.read(4), "little") == promised % 2**32:
                return promised
    held = 0
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(1 << 20):
                held += len(chunk)
    except (OSError, EOFError, zlib.error):
        pass  # cut short: what came out before the cut is what the file holds
    return held


def read_itk_image(path: Path, image_format: str, around: ScanRegion | None = None) -> Volume:
    """NRRD or MetaImage through ITK, whose LPS geometry becomes RAS here.

    A region is read as the slab of the last axis it reaches, for 3D files of integers within
    int16 (as for NIfTI): uncompressed NRRD, what 3D Slicer hands to MedCNN, straight from disk
    (``_raw_nrrd_slab``); MetaImage and other NRRD through ITK's streaming extraction, which
    reads an uncompressed MetaImage only there and still decompresses a compressed file whole.
    """
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except Exception as err:
        raise UnreadableImageError(
            f"{path} cannot be read as {image_format.upper()} ({first_line(err)}); the file "
            "is probably truncated or corrupt: copy or convert it again."
        ) from err
    size = tuple(int(n) for n in reader.GetSize())
    if reader.GetNumberOfComponents() != 1:
        raise GeometryError(
            f"{path.name} holds {reader.GetNumberOfComponents()} values per voxel (a 4D, vector "
            "or colour image); MedCNN needs a single grey-level 3D CT volume."
        )
    shape3 = _three_dimensions(size, path)
    if image_format == "mha":
        check_metaimage_bytes(path)
    if len(size) == 3:
        check_grid(lps_affine(reader), path.name, spacing=reader.GetSpacing())
        check_grid(lps_affine(reader), path.name, spacing=nrrd_spacings(path))
    voxel_bytes = sitk.GetArrayFromImage(sitk.Image([1, 1, 1], reader.GetPixelID())).itemsize
    check_size(int(np.prod(shape3)) * max(2, voxel_bytes), str(path))
    first, count = 0, shape3[2]
    if len(size) == 3 and reader.GetPixelID() in _SLAB_PIXEL_IDS:
        affine = LPS_TO_RAS @ lps_affine(reader)
        first, count = slices_reached(around, affine, shape3[2])
    raw = _raw_nrrd_slab(path, reader, first, count) if image_format == "nrrd" else None
    if raw is not None:
        array, low, high = hounsfield_array(raw, copy=False)
    else:
        if count < shape3[2]:
            reader.SetExtractIndex([0, 0, first])
            reader.SetExtractSize([shape3[0], shape3[1], count])
        try:
            image = reader.Execute()
        except Exception as err:
            raise UnreadableImageError(
                f"The voxels of {path} cannot be read ({first_line(err)}); the file is "
                "probably truncated or corrupt: copy or convert it again."
            ) from err
        if image.GetDimension() == 4:
            image = image[:, :, :, 0]
            check_grid(lps_affine(image), path.name, spacing=image.GetSpacing())
        array, low, high = array_from_sitk(image)
    warnings = value_warnings(array, low, high, modality_known=False)
    metadata = scan_metadata(path, image_format, None, warnings)
    if count < shape3[2]:
        return volume_or_slab(array, affine, metadata, first, shape3)
    return Volume(array, LPS_TO_RAS @ lps_affine(image), metadata)


def _raw_nrrd_slab(
    path: Path, reader: sitk.ImageFileReader, first: int, count: int
) -> np.ndarray | None:
    """Slices ``first .. first + count`` of an uncompressed NRRD, straight from the file.

    ITK's NRRD reader reads a file whole even to extract a region, and 3D Slicer hands MedCNN
    exactly such files, one per click. When the header (parsed here only to find the voxels;
    the geometry is ITK's) says raw voxels follow it in the same file, and the file's size
    agrees to the byte, the slab is mapped from disk. Anything else returns None, for ITK.
    """
    size = tuple(int(n) for n in reader.GetSize())
    if count >= size[2]:
        return None
    header = nrrd_header(path)
    if header is None:
        return None
    fields, offset = header
    if fields.get("encoding") != "raw" or _NRRD_DETACHED_OR_SKIPPED & set(fields):
        return None
    dtype = np.dtype(_NRRD_PIXEL_DTYPES[reader.GetPixelID()])
    dtype = dtype.newbyteorder("<" if fields.get("endian", "little") == "little" else ">")
    if path.stat().st_size != offset + int(np.prod(size)) * dtype.itemsize:
        return None
    voxels = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=size[::-1])
    slab = np.array(voxels[first : first + count], dtype=dtype.newbyteorder("="))
    del voxels
    return slab.transpose(2, 1, 0)


# Bytes of a MetaImage element type.
_MET_BYTES = {
    "MET_CHAR": 1,
    "MET_UCHAR": 1,
    "MET_SHORT": 2,
    "MET_USHORT": 2,
    "MET_INT": 4,
    "MET_UINT": 4,
    "MET_FLOAT": 4,
    "MET_LONG_LONG": 8,
    "MET_ULONG_LONG": 8,
    "MET_DOUBLE": 8,
}


def check_metaimage_bytes(path: Path) -> None:
    """Refuse an uncompressed MetaImage whose voxels (in the file, or the one data file it
    names) are fewer than its header promises; ITK's streaming reads only a click's slab."""
    fields, start = {}, 0
    with open(path, "rb") as handle:
        for raw in iter(lambda: handle.readline(4096), b""):
            key, equals, value = raw.decode("latin-1").partition("=")
            if equals:
                fields[key.strip().lower()] = value.strip()
            if key.strip().lower() == "elementdatafile":
                start = handle.tell()
                break
    try:
        element = _MET_BYTES[fields["elementtype"].upper()]
        voxels = int(np.prod([int(n) for n in fields["dimsize"].split()]))
        channels = int(fields.get("elementnumberofchannels", "1"))
        source = fields["elementdatafile"]
    except (KeyError, ValueError):
        return  # ITK says what is wrong with such a header
    compressed = fields.get("compresseddata", "false").lower() == "true"
    if compressed or fields.get("headersize", "0") != "0" or " " in source or "%" in source:
        return  # compressed data are checked as they are decompressed; lists are ITK's
    promised = voxels * element * channels
    if source.upper() == "LOCAL":
        check_stored_bytes(path, start + promised, path.stat().st_size)
    else:
        data = path.parent / source
        check_stored_bytes(data, promised, data.stat().st_size if data.is_file() else 0)


def nrrd_header(path: Path) -> tuple[dict[str, str], int] | None:
    """An attached NRRD header's fields (names and values in lower case) and where the voxels
    start; None when the file does not begin with one."""
    with open(path, "rb") as handle:
        head = handle.read(_NRRD_HEADER_LIMIT)
    end = head.find(b"\n\n")
    if not head.startswith(b"NRRD") or end < 0:
        return None
    fields = {}
    for line in head[:end].decode("latin-1").split("\n")[1:]:
        key, colon, value = line.partition(": ")
        if colon and not line.startswith("#"):
            fields[key.strip().lower()] = value.strip().lower()
    return fields, end + 2


def nrrd_spacings(path: Path) -> list[float] | None:
    """The spacings an NRRD header states (the lengths of its space directions, or its
    ``spacings``), as written: ITK quietly replaces some it cannot use (1e300 by 1)."""
    header = nrrd_header(path) if path.name.lower().endswith(".nrrd") else None
    if header is None:
        return None
    fields = header[0]
    try:
        if "space directions" in fields:
            vectors = re.findall(r"\(([^)]*)\)", fields["space directions"])
            return [
                float(np.hypot.reduce([float(v) for v in vector.split(",")])) for vector in vectors
            ]
        if "spacings" in fields:
            return [float(v) for v in fields["spacings"].split() if v != "nan"]
    except ValueError:
        return None  # ITK says what is wrong with such a header
    return None


def lps_affine(source: sitk.Image | sitk.ImageFileReader) -> np.ndarray:
    """ITK's geometry (a 2D or 3D image or file) as an LPS affine: direction @ diag(spacing),
    origin. A 2D image lies in the plane z = 0, 1 mm thick, as ITK and 3D Slicer place it."""
    dimension = len(source.GetOrigin())
    direction, spacing = np.eye(3), np.ones(3)
    direction[:dimension, :dimension] = np.reshape(source.GetDirection(), (dimension, dimension))
    spacing[:dimension] = source.GetSpacing()
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing
    lps[:dimension, 3] = source.GetOrigin()
    return lps


def _three_dimensions(shape: tuple[int, ...], path: Path) -> tuple[int, int, int]:
    """The image's 3D shape; trailing axes of length 1 are dropped, 2D and 4D are refused."""
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 3:
        raise GeometryError(
            f"{path.name} is a {len(shape)}D image of shape {shape} (a time series or several "
            "volumes); MedCNN needs one 3D CT volume: extract the volume to analyse."
        )
    if len(shape) < 3 or min(shape) < 2:
        raise GeometryError(
            f"{path.name} is a 2D image of shape {shape}, not a 3D volume; MedCNN needs the "
            "whole CT series."
        )
    return shape[0], shape[1], shape[2]
