"""``read_radiograph``: every format it reads lands on the same pixels, brighter where denser, and
in the file's own world geometry; everything the X-ray model cannot judge is refused with one
sentence and its exit code. Fast: every file is written here, into ``tmp_path``."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import convert_color_space
from radiograph_files import write_dicom

from medcnn.errors import (
    InputNotFoundError,
    MedCNNError,
    NotRadiographError,
    ResourceLimitError,
    UnreadableImageError,
    UsageError,
)
from medcnn.reading import radiograph as reader
from medcnn.reading.radiograph import COLOUR_SPREAD_LIMIT, grey_from_channels, read_radiograph
from medcnn.volume import LPS_TO_RAS

ROWS, COLUMNS = 300, 200
BLOB = (90, 140)  # (row, column) of the bright blob: upper right, off every axis of symmetry
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


# --- helpers -----------------------------------------------------------------------------------


def radiograph_pixels(high: int = 4095, dtype=np.uint16) -> np.ndarray:
    """A synthetic frontal radiograph, 300 rows x 200 columns, brightest at BLOB."""
    rows, columns = np.mgrid[0:ROWS, 0:COLUMNS]
    texture = 0.2 + 0.1 * np.sin(rows / 23.0) * np.cos(columns / 17.0)
    blob = 0.7 * np.exp(-((rows - BLOB[0]) ** 2 + (columns - BLOB[1]) ** 2) / (2 * 4.0**2))
    return np.rint((texture + blob) * high).astype(dtype)


def brightest(pixels: np.ndarray) -> tuple[int, int]:
    """The (row, column) centre of the brightest spot: the blob, wherever lossy coding moved its
    single brightest pixel."""
    low, high = float(pixels.min()), float(pixels.max())
    rows, columns = np.nonzero(pixels > low + 0.8 * (high - low))
    return int(np.rint(rows.mean())), int(np.rint(columns.mean()))


def write_picture(path: Path, pixels: np.ndarray, **options) -> Path:
    Image.fromarray(pixels).save(path, **options)
    return path


def as_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, None], 3, axis=2)


def colourful(grey: np.ndarray) -> np.ndarray:
    """The grey image's brightness, its hue turning across the columns (a pseudocolour photo)."""
    hue = np.linspace(0, 2 * np.pi, grey.shape[1])[None, :, None]
    phases = np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
    rgb = grey[:, :, None] * (0.6 + 0.4 * np.cos(hue + phases))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def refused(error_type: type[MedCNNError], exit_code: int, path: Path | str) -> str:
    """Reading fails with this error and exit code, and one sentence; returns the sentence."""
    with pytest.raises(error_type) as caught:
        read_radiograph(path)
    message = str(caught.value)
    assert caught.value.exit_code == exit_code
    assert message.endswith(".") and "\n" not in message and "Traceback" not in message
    return message


def world(affine: np.ndarray, index: tuple[float, float, float]) -> np.ndarray:
    return affine[:3, :3] @ np.asarray(index, dtype=float) + affine[:3, 3]


def itk_ras(image: sitk.Image, index: tuple[int, ...]) -> np.ndarray:
    """Where SimpleITK puts an index, in RAS (a 2D image's point lies at z = 0)."""
    lps = np.zeros(3)
    lps[: image.GetDimension()] = image.TransformIndexToPhysicalPoint(index)
    return lps * np.array([-1.0, -1.0, 1.0])


# --- the same radiograph in every format ---------------------------------------------------------


OBLIQUE_RAS = np.array(
    [
        [0.0, -0.5, 0.0, 12.5],
        [0.7 * np.cos(0.3), 0.0, -np.sin(0.3), -40.0],
        [0.7 * np.sin(0.3), 0.0, np.cos(0.3), 101.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def test_the_blob_is_at_the_same_pixel_in_every_format(tmp_path):
    pixels = radiograph_pixels()
    eight_bit = radiograph_pixels(high=255, dtype=np.uint8)
    files = {
        "png": write_picture(tmp_path / "chest.png", eight_bit),
        "dicom": write_dicom(
            tmp_path / "chest.dcm", pixels, bits_stored=12, PixelSpacing=[0.5, 0.7]
        ),
        "nifti": tmp_path / "chest.nii.gz",
        "nrrd": tmp_path / "chest.nrrd",
    }
    nib.save(nib.Nifti1Image(pixels.T[:, :, None].astype(np.int16), OBLIQUE_RAS), files["nifti"])
    image = sitk.GetImageFromArray(pixels[None].astype(np.int16))  # ITK size (200, 300, 1)
    lps = LPS_TO_RAS @ OBLIQUE_RAS
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    image.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    sitk.WriteImage(image, str(files["nrrd"]))

    for name, path in files.items():
        radiograph = read_radiograph(path)
        assert radiograph.shape == (ROWS, COLUMNS), name
        assert radiograph.grid.shape == (COLUMNS, ROWS, 1), name
        assert radiograph.grid.array.dtype == np.float32, name
        assert brightest(radiograph.pixels) == BLOB, name

    blob_index = (BLOB[1], BLOB[0], 0)  # (i, j, k): i along a row, j down the columns
    nifti = read_radiograph(files["nifti"])
    expected = world(nib.load(files["nifti"]).affine, blob_index)
    np.testing.assert_allclose(world(nifti.grid.affine, blob_index), expected, atol=1e-4)
    nrrd = read_radiograph(files["nrrd"])
    expected = itk_ras(sitk.ReadImage(str(files["nrrd"])), blob_index)
    np.testing.assert_allclose(world(nrrd.grid.affine, blob_index), expected, atol=1e-4)
    np.testing.assert_allclose(world(nrrd.grid.affine, blob_index), world(OBLIQUE_RAS, blob_index))
    np.testing.assert_array_equal(nifti.pixels, read_radiograph(files["dicom"]).pixels)


def test_monochrome1_is_inverted_so_the_blob_stays_bright(tmp_path):
    pixels = radiograph_pixels()
    monochrome2 = read_radiograph(write_dicom(tmp_path / "m2.dcm", pixels, bits_stored=12))
    stored_inverted = (4095 - pixels).astype(np.uint16)
    monochrome1 = read_radiograph(
        write_dicom(tmp_path / "m1.dcm", stored_inverted, "MONOCHROME1", 12, modality="CR")
    )
    assert brightest(monochrome1.pixels) == BLOB
    difference = monochrome1.pixels - monochrome2.pixels
    assert np.ptp(difference) == 0  # the same image, up to an offset
    assert monochrome1.metadata["photometric_interpretation"] == "MONOCHROME1"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_compressed_monochrome1_that_only_gdcm_decodes_reads_like_the_uncompressed_one(tmp_path):
    """JPEG lossless, common in CR archives, which pydicom here cannot decode: GDCM decodes it,
    inverting and rescaling on the way, and the reader undoes both before its own LUTs."""
    pixels = radiograph_pixels()
    stored = (4095 - pixels).astype(np.uint16)  # MONOCHROME1 (GDCM writes 16 bits stored)
    path = tmp_path / "jpeg_lossless.dcm"
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")
    writer.SetFileName(str(path))
    writer.SetUseCompression(True)
    writer.SetCompressor("JPEG")
    writer.Execute(sitk.GetImageFromArray(stored))
    ds = pydicom.dcmread(path)
    assert not pydicom.pixels.get_decoder(ds.file_meta.TransferSyntaxUID).is_available
    ds.PhotometricInterpretation, ds.Modality = "MONOCHROME1", "CR"
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    ds.WindowCenter, ds.WindowWidth = 4000, 6000  # of rescaled values, as the standard says
    ds.save_as(path)
    plain = write_dicom(
        tmp_path / "plain.dcm",
        stored,
        "MONOCHROME1",
        16,
        modality="CR",
        RescaleSlope=2,
        RescaleIntercept=-100,
        WindowCenter=4000,
        WindowWidth=6000,
    )
    compressed = read_radiograph(path)
    np.testing.assert_allclose(compressed.pixels, read_radiograph(plain).pixels)
    assert brightest(compressed.pixels) == BLOB and compressed.metadata["voi"] is not None
    path.write_bytes(path.read_bytes()[:-2000])  # pydicom warns, and drops the cut pixel data
    assert "truncated" in refused(UnreadableImageError, 4, path)


# --- DICOM values ------------------------------------------------------------------------------


def test_a_voi_lut_sequence_is_applied_to_16_bit_unsigned_pixels(tmp_path):
    pixels = radiograph_pixels()
    lut = np.rint(65535 * np.sqrt(np.arange(4096) / 4095)).astype(np.uint16)
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 16])  # LUT Descriptor: entries, first value, bits
    item.add_new(0x00283006, "US", lut.tolist())  # LUT Data
    path = write_dicom(
        tmp_path / "voi.dcm",
        pixels,
        bits_stored=16,
        VOILUTSequence=[item],
        WindowCenter=100,  # the LUT is preferred over a window, as pydicom and viewers do
        WindowWidth=50,
    )
    radiograph = read_radiograph(path)
    np.testing.assert_array_equal(radiograph.pixels, lut[pixels])
    assert radiograph.metadata["voi"] == "VOI LUT sequence"


def test_12_bits_in_16_with_a_window_centre_and_width(tmp_path):
    pixels = radiograph_pixels()
    center, width = 2048.0, 1024.0
    path = write_dicom(
        tmp_path / "window.dcm", pixels, bits_stored=12, WindowCenter=center, WindowWidth=width
    )
    radiograph = read_radiograph(path)
    # DICOM's LINEAR window (PS3.3 C.11.2.1.2.1) onto the 12-bit output range.
    linear = ((pixels - (center - 0.5)) / (width - 1) + 0.5) * 4095
    np.testing.assert_allclose(radiograph.pixels, np.clip(linear, 0, 4095), atol=0.01)
    assert radiograph.metadata["voi"] == "window centre and width"
    assert radiograph.metadata["bits_stored"] == 12


def test_signed_pixels_with_a_rescale(tmp_path):
    signed = (radiograph_pixels() - 2048).astype(np.int16)
    path = write_dicom(
        tmp_path / "signed.dcm", signed, bits_stored=12, RescaleSlope=0.5, RescaleIntercept=10
    )
    radiograph = read_radiograph(path)
    np.testing.assert_allclose(radiograph.pixels, signed * 0.5 + 10)
    assert radiograph.metadata["signed"] is True
    assert brightest(radiograph.pixels) == BLOB


@pytest.mark.parametrize("photometric", ["RGB", "YBR_FULL"])
def test_a_colour_secondary_capture_of_a_grey_radiograph_reads_and_a_colourful_one_is_refused(
    tmp_path, photometric
):
    grey = radiograph_pixels(high=255, dtype=np.uint8)

    def write(name: str, rgb: np.ndarray) -> Path:
        stored = convert_color_space(rgb, "RGB", photometric) if photometric != "RGB" else rgb
        return write_dicom(tmp_path / name, stored, photometric, 8, "OT", SECONDARY_CAPTURE)

    np.testing.assert_allclose(read_radiograph(write("sc.dcm", as_rgb(grey))).pixels, grey, atol=1)
    assert "colour image" in refused(NotRadiographError, 14, write("photo.dcm", colourful(grey)))


# --- DICOM geometry ----------------------------------------------------------------------------


@pytest.mark.parametrize("tag", ["PixelSpacing", "ImagerPixelSpacing"])
def test_spacing_is_rows_then_columns(tmp_path, tag):
    path = write_dicom(tmp_path / "spaced.dcm", radiograph_pixels(), **{tag: [0.5, 0.7]})
    radiograph = read_radiograph(path)
    np.testing.assert_allclose(radiograph.grid.spacing, [0.7, 0.5, 1.0])  # i across columns
    np.testing.assert_allclose(radiograph.grid.affine, reader.picture_affine(0.5, 0.7))
    assert radiograph.spacing_known and radiograph.metadata["spacing_source"] == tag
    assert any("ImagerPixelSpacing" in w for w in radiograph.warnings) == (tag != "PixelSpacing")


def test_without_spacing_the_picture_geometry_is_assumed(tmp_path):
    radiograph = read_radiograph(write_dicom(tmp_path / "bare.dcm", radiograph_pixels()))
    assert not radiograph.spacing_known
    np.testing.assert_allclose(radiograph.grid.affine, reader.picture_affine())


def test_position_and_orientation_place_the_pixels_where_itk_does(tmp_path):
    path = write_dicom(
        tmp_path / "placed.dcm",
        radiograph_pixels(),
        ImagerPixelSpacing=[0.5, 0.7],  # the spacing GDCM reads for a DX
        ImagePositionPatient=[-150.0, -120.5, 600.0],
        ImageOrientationPatient=[1, 0, 0, 0, 0, -1],  # a frontal view: rows down the patient
    )
    radiograph = read_radiograph(path)
    image = sitk.ReadImage(str(path), imageIO="GDCMImageIO")
    for index in [(0, 0, 0), (BLOB[1], BLOB[0], 0), (COLUMNS - 1, ROWS - 1, 0)]:
        np.testing.assert_allclose(world(radiograph.grid.affine, index), itk_ras(image, index))


# --- DICOM refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize("view", ["LL", "RL", "LLD", "LATERAL"])
def test_a_lateral_view_is_refused(tmp_path, view):
    path = write_dicom(tmp_path / "lateral.dcm", radiograph_pixels(), ViewPosition=view)
    assert "lateral view" in refused(NotRadiographError, 14, path)


def test_a_lateral_view_code_is_refused(tmp_path):
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "R-10232", "SRT", "lateral"
    path = write_dicom(tmp_path / "lateral.dcm", radiograph_pixels(), ViewCodeSequence=[code])
    assert "lateral" in refused(NotRadiographError, 14, path)


def test_a_frontal_view_reads_with_its_provenance_and_no_identifiers(tmp_path):
    path = write_dicom(
        tmp_path / "pa.dcm",
        radiograph_pixels(),
        bits_stored=12,
        ViewPosition="PA",
        BodyPartExamined="CHEST",
        PatientName="Doe^Jane",
        PatientID="12345",
    )
    metadata = read_radiograph(path).metadata
    assert metadata["view_position"] == "PA" and metadata["body_part_examined"] == "CHEST"
    assert (metadata["rows"], metadata["columns"]) == (ROWS, COLUMNS)
    assert "Doe" not in str(metadata) and "12345" not in str(metadata)


def test_multi_frame_is_refused(tmp_path):
    frames = np.stack([radiograph_pixels()] * 2)
    path = write_dicom(tmp_path / "cine.dcm", frames)
    assert "2 frames" in refused(NotRadiographError, 14, path)


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_ct_and_mr_images_are_refused_pointing_at_the_ct_model(tmp_path, modality):
    path = write_dicom(
        tmp_path / "slice.dcm", radiograph_pixels(), modality=modality, sop_class=CT_STORAGE
    )
    message = refused(NotRadiographError, 14, path)
    assert f"Modality {modality}" in message and "--point" in message


def test_truncated_pixel_data_is_unreadable(tmp_path):
    path = write_dicom(tmp_path / "cut.dcm", radiograph_pixels())
    path.write_bytes(path.read_bytes()[:-5000])
    assert "cannot be decoded" in refused(UnreadableImageError, 4, path)


def test_a_folder_with_one_dicom_image_reads_it(tmp_path):
    folder = tmp_path / "study"
    (folder / "deep").mkdir(parents=True)
    write_dicom(folder / "deep" / "image", radiograph_pixels())
    (folder / "notes.txt").write_text("not DICOM")
    assert brightest(read_radiograph(folder).pixels) == BLOB


def test_folders_of_several_images_or_none_are_refused(tmp_path):
    ct = tmp_path / "ct"
    ct.mkdir()
    for k in range(3):
        write_dicom(ct / f"{k}.dcm", radiograph_pixels(), modality="CT", sop_class=CT_STORAGE)
    assert "--point" in refused(NotRadiographError, 14, ct)
    two = tmp_path / "two"
    two.mkdir()
    write_dicom(two / "pa.dcm", radiograph_pixels())
    write_dicom(two / "ap.dcm", radiograph_pixels())
    assert "2 DICOM images" in refused(UsageError, 2, two)
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(InputNotFoundError, 3, empty)


# --- PNG and JPEG ------------------------------------------------------------------------------


def test_an_rgb_png_of_a_grey_radiograph_reads_as_its_grey(tmp_path):
    grey = radiograph_pixels(high=255, dtype=np.uint8)
    radiograph = read_radiograph(write_picture(tmp_path / "rgb.png", as_rgb(grey)))
    np.testing.assert_array_equal(radiograph.pixels, grey)
    assert radiograph.source_format == "png" and not radiograph.spacing_known
    np.testing.assert_allclose(radiograph.grid.affine, reader.picture_affine())


def spread(path: Path) -> float:
    """The reader's colour measure of a picture: mean |channel difference| / 255."""
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=float)
    pairs = [(0, 1), (1, 2), (0, 2)]
    return float(np.mean([np.abs(rgb[..., a] - rgb[..., b]).mean() for a, b in pairs])) / 255


def test_the_colour_threshold_passes_grey_jpegs_and_refuses_colour(tmp_path):
    """The measurements behind COLOUR_SPREAD_LIMIT (3 %): grey saved as RGB, even noisy or
    annotated, stays below 2 %; a colour image is well above."""
    rng = np.random.default_rng(0)
    grey = radiograph_pixels(high=255, dtype=np.uint8)
    jpeg = write_picture(tmp_path / "grey.jpg", as_rgb(grey), quality=75)
    noisy = np.clip(as_rgb(grey) + rng.normal(0, 3, (ROWS, COLUMNS, 3)), 0, 255)
    noisy_png = write_picture(tmp_path / "noisy.png", noisy.astype(np.uint8))
    marked = as_rgb(grey)
    marked[10:40, 10:60] = (255, 0, 0)  # a red marker over 2.5 % of the image
    marked_jpeg = write_picture(tmp_path / "marked.jpg", marked, quality=75)
    photo = write_picture(tmp_path / "photo.jpg", colourful(grey), quality=75)

    for path in (jpeg, noisy_png, marked_jpeg):
        assert spread(path) < 0.02, path.name  # a third below the limit
        radiograph = read_radiograph(path)
        assert brightest(radiograph.pixels) == BLOB
        np.testing.assert_allclose(radiograph.pixels[100:], grey[100:], atol=8)
    assert spread(photo) > 2 * COLOUR_SPREAD_LIMIT
    assert "colour image" in refused(NotRadiographError, 14, photo)


def test_grey_from_channels_measures_the_mean_channel_difference():
    channels = np.zeros((64, 64, 3), dtype=np.uint8)
    channels[..., 0] = 30  # every pixel: |R-G| = |R-B| = 30, |G-B| = 0, so 20 of 255 on average
    with pytest.raises(NotRadiographError, match="8%"):
        grey_from_channels(channels, 255.0, "x.png")


def test_a_16_bit_png_keeps_its_values(tmp_path):
    pixels = radiograph_pixels(high=60000)
    pixels[0, 0] = 65535  # the whole 16-bit range
    path = write_picture(tmp_path / "sixteen.png", pixels)
    assert Image.open(path).mode.startswith("I")
    radiograph = read_radiograph(path)
    np.testing.assert_array_equal(radiograph.pixels, pixels)
    assert radiograph.pixels.max() == 65535


def test_a_grey_jpeg_reads(tmp_path):
    grey = radiograph_pixels(high=255, dtype=np.uint8)
    radiograph = read_radiograph(write_picture(tmp_path / "chest.jpeg", grey, quality=90))
    assert radiograph.source_format == "jpeg" and radiograph.metadata["mode"] == "L"
    assert brightest(radiograph.pixels) == BLOB


# --- NIfTI, NRRD and MetaImage -----------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_single_slice_and_2d_itk_files_read_in_their_own_geometry(tmp_path, suffix):
    pixels = radiograph_pixels()
    for name, image in {
        "slice": sitk.GetImageFromArray(pixels[None].astype(np.float32)),
        "plane": sitk.GetImageFromArray(pixels.astype(np.uint16)),
    }.items():
        image.SetSpacing([0.7, 0.5, 2.0][: image.GetDimension()])
        image.SetOrigin([10.0, -20.0, 30.0][: image.GetDimension()])
        path = tmp_path / f"{name}{suffix}"
        sitk.WriteImage(image, str(path))
        radiograph = read_radiograph(path)
        assert radiograph.shape == (ROWS, COLUMNS) and brightest(radiograph.pixels) == BLOB
        np.testing.assert_array_equal(radiograph.pixels, pixels)
        index = (BLOB[1], BLOB[0], 0)
        reread = sitk.ReadImage(str(path))
        np.testing.assert_allclose(
            world(radiograph.grid.affine, index), itk_ras(reread, index[: image.GetDimension()])
        )
        assert radiograph.spacing_known and radiograph.source_format == suffix[1:]


def test_a_nifti_whose_slice_axis_is_in_the_middle_keeps_every_pixel_in_place(tmp_path):
    pixels = radiograph_pixels()
    path = tmp_path / "coronal.nii"
    nib.save(nib.Nifti1Image(pixels.T[:, None, :].astype(np.float32), OBLIQUE_RAS), path)
    radiograph = read_radiograph(path)
    np.testing.assert_array_equal(radiograph.pixels, pixels)
    file_index, plane_index = (BLOB[1], 0, BLOB[0]), (BLOB[1], BLOB[0], 0)
    np.testing.assert_allclose(
        world(radiograph.grid.affine, plane_index), world(OBLIQUE_RAS, file_index)
    )


def test_a_volume_of_three_slices_is_refused_pointing_at_the_ct_model(tmp_path):
    volume = np.stack([radiograph_pixels().T] * 3, axis=2).astype(np.int16)
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.eye(4)), path)
    message = refused(NotRadiographError, 14, path)
    assert "volume of 3 slices" in message and "--point" in message


def test_nan_pixels_are_unreadable(tmp_path):
    pixels = radiograph_pixels().astype(np.float32)
    pixels[5, 5] = np.nan
    path = tmp_path / "nan.nii"
    nib.save(nib.Nifti1Image(pixels.T[:, :, None], np.eye(4)), path)
    assert "NaN" in refused(UnreadableImageError, 4, path)


# --- every format ------------------------------------------------------------------------------


def test_too_small_is_refused(tmp_path):
    small = radiograph_pixels(high=255, dtype=np.uint8)[:50, :80]
    message = refused(NotRadiographError, 14, write_picture(tmp_path / "icon.png", small))
    assert "too small to judge: 50 x 80 pixels" in message
    path = write_dicom(tmp_path / "small.dcm", radiograph_pixels()[:63])
    assert "63 x 200" in refused(NotRadiographError, 14, path)


def test_an_image_without_contrast_is_refused(tmp_path):
    flat = np.full((100, 100), 128, dtype=np.uint8)
    assert "no contrast" in refused(NotRadiographError, 14, write_picture(tmp_path / "f.png", flat))
    path = write_dicom(tmp_path / "flat.dcm", np.full((100, 100), 7, dtype=np.uint16))
    assert "no contrast" in refused(NotRadiographError, 14, path)


def test_more_than_the_pixel_limit_is_refused_before_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr(reader, "MAX_PIXELS", 1000 * 1000 - 1)
    big = np.zeros((1000, 1000), dtype=np.uint8)
    big[0, 0] = 1
    refused(ResourceLimitError, 10, write_picture(tmp_path / "big.png", big))
    refused(ResourceLimitError, 10, write_dicom(tmp_path / "big.dcm", big))


def test_unknown_formats_garbage_and_missing_paths(tmp_path):
    garbage = tmp_path / "scan.xyz"
    garbage.write_bytes(b"\x00\x01 not an image" * 100)
    message = refused(UnreadableImageError, 4, garbage)
    assert all(name in message for name in ("DICOM", "PNG", "JPEG", "NIfTI", "NRRD"))
    fake_png = tmp_path / "fake.png"
    fake_png.write_text("hello")
    refused(UnreadableImageError, 4, fake_png)
    truncated = tmp_path / "cut.nii.gz"
    nib.save(nib.Nifti1Image(radiograph_pixels().T[:, :, None], np.eye(4)), truncated)
    truncated.write_bytes(truncated.read_bytes()[:400])
    refused(UnreadableImageError, 4, truncated)
    refused(InputNotFoundError, 3, tmp_path / "nowhere.dcm")
