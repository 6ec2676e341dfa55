"""Files that cannot be trusted are not analysed (issue 26): a header that lies about the grid
(sizes, spacings, origins, directions, units) or about the file (truncated after the slab a click
reads), and paths that are not regular files, end in one sentence and a documented exit code,
never in an "unexpected" error, a silent wrong answer or a hang.

The issue's examples come first, then a generator of broken headers in every format that
hypothesis drives: whatever it writes, the reader either refuses with MedCNN's own error or
returns a volume whose grid is one a scan can have."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from radiograph_files import write_dicom
from reliability_support import assert_one_clear_sentence, run_cli

from medcnn.errors import GeometryError, MedCNNError, UnreadableImageError
from medcnn.phantom import write_dicom_series
from medcnn.reading import ScanRegion, read_scan
from medcnn.reading.dimensions import is_two_dimensional
from medcnn.reading.radiograph import read_radiograph
from medcnn.reading.trust import MAX_SPACING_MM, MIN_SPACING_MM
from medcnn.volume import MAX_COORDINATE_MM, Volume

SRC = Path(__file__).resolve().parents[2] / "src"
SHAPE = (24, 24, 40)
AFFINE = np.diag([0.8, 0.8, 1.0, 1.0])
POINT_RAS = (9.6, 9.6, 5.0)  # near the first slices: a click reads only those
AROUND = ScanRegion(np.array(POINT_RAS), 3.0)
HEADER_SETTINGS = settings(
    max_examples=int(os.environ.get("MEDCNN_FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def ct_array() -> np.ndarray:
    return np.random.default_rng(0).integers(-1000, 1500, size=SHAPE).astype(np.int16)


def nifti(path: Path, affine: np.ndarray = AFFINE, **header: object) -> Path:
    """A NIfTI file of the CT, its stored header then edited as given (nibabel would repair
    some fields on saving, so they are written into the file's own bytes)."""
    nib.save(nib.Nifti1Image(ct_array(), affine), path)
    if header:
        raw = path.read_bytes()
        stored = nib.Nifti1Header.from_fileobj(io.BytesIO(raw), check=False)
        for key, value in header.items():
            stored[key] = value
        path.write_bytes(stored.binaryblock + raw[len(stored.binaryblock) :])
    return path


def analyze(capsys, image: Path | str, bundle: Path, *point: str):
    point = point or tuple(map(str, POINT_RAS))
    return run_cli(
        capsys, "analyze", image, "--point", *point, "--out", Path(image).parent / "out",
        "--bundle", bundle, "--trust-bundle",
    )  # fmt: skip


def assert_sane_grid(volume: Volume) -> None:
    """What every volume a reader returns must be: a finite, orthogonal grid of sane spacing."""
    affine = volume.affine
    assert np.all(np.isfinite(affine))
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    assert np.all((spacing >= MIN_SPACING_MM) & (spacing <= MAX_SPACING_MM)), spacing
    directions = affine[:3, :3] / spacing
    assert np.abs(directions.T @ directions - np.eye(3)).max() <= 1e-3
    assert np.abs(affine[:3, 3]).max() <= MAX_COORDINATE_MM


# --- the examples -----------------------------------------------------------------------


def test_a_dicom_series_with_pixel_spacing_0_0_is_exit_7(
    tmp_bundle: Path, tmp_path: Path, capsys
) -> None:
    paths = write_dicom_series(Volume(ct_array(), AFFINE), tmp_path / "series")
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.PixelSpacing = [0, 0]
        ds.save_as(path)
    run = analyze(capsys, tmp_path / "series", tmp_bundle)
    assert_one_clear_sentence(run, 7, "are 0, 0, 1 mm", "between")
    assert not (tmp_path / "out").exists()


def test_a_sheared_nifti_is_exit_7(tmp_bundle: Path, tmp_path: Path, capsys) -> None:
    sheared = AFFINE.copy()
    sheared[0, 2] = 0.4  # each slice 0.4 mm further to the right: a sheared sform
    run = analyze(capsys, nifti(tmp_path / "sheared.nii.gz", sheared), tmp_bundle)
    assert_one_clear_sentence(run, 7, "not perpendicular", "sheared")


@pytest.mark.parametrize("name", ["cut.nii", "cut.nii.gz"])
def test_a_nifti_cut_after_the_slab_a_click_reads_is_exit_4(
    name: str, tmp_bundle: Path, tmp_path: Path, capsys
) -> None:
    path = nifti(tmp_path / name)
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 3 // 4])
    with pytest.raises(UnreadableImageError, match="truncated"):
        read_scan(path, around=AROUND)
    assert_one_clear_sentence(analyze(capsys, path, tmp_bundle), 4, "truncated")


def test_a_metaimage_cut_after_the_slab_is_refused(tmp_path: Path) -> None:
    image = sitk.GetImageFromArray(ct_array().transpose(2, 1, 0))
    for name in ("cut.mha", "cut.mhd"):
        path = tmp_path / name
        sitk.WriteImage(image, str(path))
        data = path if name.endswith(".mha") else path.with_suffix(".raw")
        data.write_bytes(data.read_bytes()[: data.stat().st_size * 3 // 4])
        with pytest.raises(UnreadableImageError, match="truncated"):
            read_scan(path, around=AROUND)


def finishes(call, *args: object) -> BaseException | None:
    """Run ``call`` with a time limit: what it raised, or a failure if it blocked."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            call(*args)
            outcome.append(None)
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(20)
    assert outcome, f"{call.__name__} blocked on {args}"
    return outcome[0]


@pytest.mark.parametrize("name", ["pipe.nii.gz", "pipe.nrrd", "pipe.png", "pipe"])
def test_a_named_pipe_is_refused_not_waited_on(name: str, tmp_path: Path) -> None:
    pipe = tmp_path / name
    os.mkfifo(pipe)
    for reader in (read_scan, read_radiograph):
        error = finishes(reader, pipe)
        assert isinstance(error, UnreadableImageError), error
        assert "not a regular file" in str(error)
    assert finishes(is_two_dimensional, pipe) is None


def test_dev_stdin_is_refused_too() -> None:
    if not Path("/dev/stdin").exists() or Path("/dev/stdin").resolve().is_file():
        pytest.skip("/dev/stdin is a regular file here")
    error = finishes(read_scan, "/dev/stdin")
    assert isinstance(error, UnreadableImageError) and "not a regular file" in str(error)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_slice_is_said_to_be_unreadable(tmp_path: Path) -> None:
    paths = write_dicom_series(Volume(ct_array(), AFFINE), tmp_path / "series")
    paths[5].chmod(0)
    with pytest.raises(UnreadableImageError, match="permission denied") as caught:
        read_scan(tmp_path / "series")
    assert "missing" not in str(caught.value) and "truncated" not in str(caught.value)


def test_a_slice_without_read_permission_is_said_so_even_for_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root reads any file, so the permission is taken away where MedCNN asks for it."""
    paths = write_dicom_series(Volume(ct_array(), AFFINE), tmp_path / "series")
    real_access = os.access
    monkeypatch.setattr(
        "medcnn.reading.trust.os.access",
        lambda path, mode: Path(path) != paths[5] and real_access(path, mode),
    )
    with pytest.raises(UnreadableImageError, match="permission denied") as caught:
        read_scan(tmp_path / "series")
    assert paths[5].name in str(caught.value) and "missing" not in str(caught.value)


def test_a_huge_rescale_slope_is_one_line_on_stderr(tmp_bundle: Path, tmp_path: Path) -> None:
    """The issue's example: RescaleSlope 1e39 ends with exit 4, and numpy's RuntimeWarning
    lines do not come first: nothing but MedCNN's sentence reaches stderr."""
    paths = write_dicom_series(Volume(ct_array(), AFFINE), tmp_path / "series")
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.RescaleSlope = "1e39"
        ds.save_as(path)
    run = subprocess.run(
        [
            sys.executable, "-m", "medcnn", "analyze", str(tmp_path / "series"),
            "--point", *map(str, POINT_RAS), "--out", str(tmp_path / "out"),
            "--bundle", str(tmp_bundle), "--trust-bundle",
        ],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert run.returncode == 4, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert run.stderr.startswith("medcnn: error: ")


@pytest.mark.parametrize("value", ["1e308", "1e300", "100001"])
def test_an_absurd_point_is_exit_2_and_said_as_given(
    value: str, tmp_bundle: Path, tmp_path: Path, capsys
) -> None:
    run = analyze(capsys, nifti(tmp_path / "ct.nii.gz"), tmp_bundle, value, "0", "0")
    assert_one_clear_sentence(run, 2, "three finite numbers")
    assert "inf" not in run.sentence


@pytest.mark.parametrize(
    ("header", "phrase", "error"),
    [
        ({"xyzt_units": 1}, "meters", GeometryError),  # metres: 1000 times too small
        ({"xyzt_units": 3}, "microns", GeometryError),
        ({"bitpix": 32}, "bitpix", UnreadableImageError),
        ({"sform_code": 0, "qform_code": 1, "pixdim": [1, 0, 0, 0, 1, 1, 1, 1]}, "0, 0, 0", None),
        ({"sform_code": 0, "qform_code": 1, "pixdim": [1, -1, 1, 1, 1, 1, 1, 1]}, "-1", None),
        ({"sform_code": 0, "qform_code": 0, "pixdim": [1, 1e9, 1, 1, 1, 1, 1, 1]}, "1e+09", None),
    ],
)
def test_header_fields_must_agree_with_the_data(
    header: dict, phrase: str, error: type[MedCNNError] | None, tmp_path: Path
) -> None:
    path = nifti(tmp_path / "ct.nii", **header)
    with pytest.raises(error or GeometryError) as caught:
        read_scan(path, around=AROUND)
    assert phrase in str(caught.value)


def test_a_nrrd_whose_spacing_itk_would_quietly_replace_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(ct_array().transpose(2, 1, 0)), str(path))
    text = path.read_bytes()
    start = text.index(b"space directions: ")
    end = text.index(b"\n", start)
    path.write_bytes(text[:start] + b"space directions: (1e300,0,0) (0,1,0) (0,0,1)" + text[end:])
    with pytest.raises(GeometryError, match="1e\\+300"):
        read_scan(path)


@pytest.mark.parametrize("spacing", [[0, 0], [-0.14, 0.14], [1e9, 1e9]])
def test_a_radiograph_s_spacing_that_cannot_be_true_is_refused(
    spacing: list, tmp_path: Path
) -> None:
    """Before, a PixelSpacing of 0 was taken for an absent one (1 mm assumed, in silence)."""
    pixels = np.random.default_rng(0).integers(0, 4095, size=(256, 256)).astype(np.uint16)
    path = write_dicom(tmp_path / "chest.dcm", pixels, bits_stored=12, PixelSpacing=spacing)
    with pytest.raises(GeometryError, match="PixelSpacing"):
        read_radiograph(path)


def test_a_one_slice_nifti_radiograph_with_zero_pixdim_is_refused(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 4095, size=(256, 256, 1)).astype(np.int16)
    nib.save(nib.Nifti1Image(pixels, np.eye(4)), tmp_path / "chest.nii")
    raw = (tmp_path / "chest.nii").read_bytes()
    stored = nib.Nifti1Header.from_fileobj(io.BytesIO(raw), check=False)
    stored["sform_code"], stored["pixdim"] = 0, [1, 0, 0, 1, 1, 1, 1, 1]
    (tmp_path / "chest.nii").write_bytes(stored.binaryblock + raw[len(stored.binaryblock) :])
    with pytest.raises(GeometryError, match="0, 0"):
        read_radiograph(tmp_path / "chest.nii")


# --- a generator of broken headers, driven by hypothesis ----------------------------------------

# Half the files whole, half cut short somewhere after their header.
KEEP = st.one_of(st.just(1.0), st.floats(0.3, 1.0))
ODD_NUMBERS = st.sampled_from(
    [0.0, -0.0, -1.0, 1e-9, 1e-3, 0.5, 1.0, 2.5, 1e3, 1e9, 1e300, float("nan"), float("inf")]
)


def read_or_refuse(path: Path, around: ScanRegion | None = AROUND) -> None:
    """The contract: MedCNN's own error, or a volume on a sane grid."""
    try:
        volume = read_scan(path, around=around)
    except MedCNNError:
        return
    assert_sane_grid(volume)


@pytest.fixture
def small_scan_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDCNN_MAX_SCAN_BYTES", str(64 * 2**20))  # mutated sizes stop early


NIFTI_EDITS = st.one_of(
    st.tuples(st.just("pixdim"), st.integers(1, 3), ODD_NUMBERS),
    st.tuples(st.sampled_from(["srow_x", "srow_y", "srow_z"]), st.integers(0, 3), ODD_NUMBERS),
    st.tuples(st.sampled_from(["qoffset_x", "quatern_b", "quatern_c"]), st.just(0), ODD_NUMBERS),
    st.tuples(st.just("dim"), st.integers(0, 4), st.integers(-1, 70).map(float)),
    st.tuples(st.just("xyzt_units"), st.just(0), st.sampled_from([0.0, 1.0, 2.0, 3.0, 24.0])),
    st.tuples(st.just("sform_code"), st.just(0), st.sampled_from([0.0, 1.0, 4.0])),
    st.tuples(st.just("qform_code"), st.just(0), st.sampled_from([0.0, 1.0])),
    st.tuples(st.just("datatype"), st.just(0), st.sampled_from([2.0, 4.0, 16.0, 64.0, 512.0])),
)


@HEADER_SETTINGS
@given(
    edits=st.lists(NIFTI_EDITS, min_size=1, max_size=4),
    keep=KEEP,
    gz=st.booleans(),
)
def test_broken_nifti_headers(
    edits: list, keep: float, gz: bool, tmp_path: Path, small_scan_limit: None
) -> None:
    image = nib.Nifti1Image(ct_array(), AFFINE)
    image.set_sform(AFFINE, code=1)
    path = tmp_path / ("broken.nii.gz" if gz else "broken.nii")
    stored = image.header.copy()
    stored["vox_offset"] = 352  # the voxels right after the header and its extension flag
    for field, index, value in edits:
        array = np.array(stored[field])
        if array.shape:
            array[index] = value
        else:
            array = np.array(value, dtype=array.dtype) if np.isfinite(value) else array
        with np.errstate(all="ignore"):
            stored[field] = array
    data = np.asanyarray(image.dataobj).tobytes(order="F")
    raw = stored.binaryblock + b"\0" * 4 + data
    raw = raw[: max(1, int(len(raw) * keep))]
    if gz:
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    read_or_refuse(path)


NRRD_EDITS = st.one_of(
    st.tuples(st.just(b"space directions"), ODD_NUMBERS, ODD_NUMBERS),
    st.tuples(st.just(b"space origin"), ODD_NUMBERS, ODD_NUMBERS),
    st.tuples(st.just(b"sizes"), st.integers(0, 80), st.integers(0, 80)),
)


@HEADER_SETTINGS
@given(edit=NRRD_EDITS, keep=KEEP)
def test_broken_nrrd_headers(edit: tuple, keep: float, tmp_path: Path, small_scan_limit) -> None:
    path = tmp_path / "broken.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(ct_array().transpose(2, 1, 0)), str(path))
    text = path.read_bytes()
    field, a, b = edit
    if field == b"space directions":
        value = f"({a!r},0,0) (0,{b!r},0) (0,0,1)"
    elif field == b"space origin":
        value = f"({a!r},{b!r},0)"
    else:
        value = f"{a} {b} {SHAPE[2]}"
    start = text.index(field + b": ")
    end = text.index(b"\n", start)
    text = text[:start] + field + b": " + value.encode() + text[end:]
    path.write_bytes(text[: max(1, int(len(text) * keep))])
    read_or_refuse(path)


METAIMAGE_EDITS = st.one_of(
    st.tuples(st.just("ElementSpacing"), ODD_NUMBERS, ODD_NUMBERS),
    st.tuples(st.just("Offset"), ODD_NUMBERS, ODD_NUMBERS),
    st.tuples(st.just("TransformMatrix"), ODD_NUMBERS, ODD_NUMBERS),
    st.tuples(st.just("DimSize"), st.integers(0, 80), st.integers(0, 80)),
)


@HEADER_SETTINGS
@given(edit=METAIMAGE_EDITS, keep=KEEP)
def test_broken_metaimage_headers(
    edit: tuple, keep: float, tmp_path: Path, small_scan_limit
) -> None:
    path = tmp_path / "broken.mha"
    sitk.WriteImage(sitk.GetImageFromArray(ct_array().transpose(2, 1, 0)), str(path))
    text = path.read_bytes()
    field, a, b = edit
    values = {
        "ElementSpacing": f"{a!r} {b!r} 1",
        "Offset": f"{a!r} {b!r} 0",
        "TransformMatrix": f"1 0 0 {a!r} 1 0 0 {b!r} 1",
        "DimSize": f"{a} {b} {SHAPE[2]}",
    }
    start = text.index(field.encode() + b" = ")
    end = text.index(b"\n", start)
    text = text[:start] + f"{field} = {values[field]}".encode() + text[end:]
    path.write_bytes(text[: max(1, int(len(text) * keep))])
    read_or_refuse(path)


DICOM_EDITS = st.one_of(
    st.tuples(st.just("PixelSpacing"), st.lists(ODD_NUMBERS, min_size=2, max_size=2)),
    st.tuples(st.just("ImagePositionPatient"), st.lists(ODD_NUMBERS, min_size=3, max_size=3)),
    st.tuples(st.just("ImageOrientationPatient"), st.lists(ODD_NUMBERS, min_size=6, max_size=6)),
    st.tuples(st.just("Rows"), st.integers(0, 64)),
    st.tuples(st.just("RescaleSlope"), ODD_NUMBERS),
)


@HEADER_SETTINGS
@given(edit=DICOM_EDITS, every=st.booleans(), cut=st.booleans())
def test_broken_dicom_headers(
    edit: tuple, every: bool, cut: bool, tmp_path: Path, small_scan_limit
) -> None:
    folder = tmp_path / "series"
    if folder.exists():
        for old in folder.iterdir():
            old.unlink()
    paths = write_dicom_series(Volume(ct_array()[:, :, :8], AFFINE), folder)
    name, value = edit
    if isinstance(value, list):  # as a DICOM DS string holds them
        value = [f"{v:.6g}" for v in value]
    elif isinstance(value, float):
        value = f"{value:.6g}"
    for path in paths if every else paths[3:4]:
        ds = pydicom.dcmread(path)
        setattr(ds, name, value)
        ds.save_as(path)
    if cut:
        paths[5].write_bytes(paths[5].read_bytes()[:-100])
    read_or_refuse(folder, around=None)
