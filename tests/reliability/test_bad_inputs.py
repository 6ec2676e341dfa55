"""Every bad input of issue 5, as a user meets it: ``medcnn analyze`` answers with the documented
exit code and one sentence that says what to do, shows no traceback, leaves no file (nor hidden
partial folder) behind and changes nothing it read; then, in the same process, the next analysis
works normally.

``read_scan``'s own refusals are tested in ``tests/test_reading.py``; here each one is followed to
the edge the user sees. The real broken series come from ``../shared/data/dicom_edge``; the rest
is generated into ``tmp_path`` (shared data is only ever copied, never modified).
"""

from __future__ import annotations

import csv
import gzip
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import SecondaryCaptureImageStorage
from readme_tables import readme_table
from reliability_support import assert_one_clear_sentence, run_cli, snapshot

from medcnn.app.analysis import Analyzer
from medcnn.app.batch import BatchRunner
from medcnn.errors import BatchIncompleteError
from medcnn.phantom import NODULE_CENTER_RAS, synthetic_chest, write_dicom_series, write_nifti
from medcnn.volume import Volume

NODULE = tuple(str(v) for v in NODULE_CENTER_RAS)
AIR_OUTSIDE_THE_BODY = ("55.0", "35.0", "-110.0")
CORNER = ("63.6", "45.2", "-170.25")  # the phantom's first voxel: a corner of the scan


@dataclass(frozen=True)
class Sources:
    phantom: dict
    shared: Path | None


@dataclass(frozen=True)
class BadInput:
    """One bad input: how to make it, and what the user must be told."""

    name: str
    code: int
    phrases: tuple[str, ...]
    make: Callable[[Path, Sources], tuple[Path, tuple[str, str, str]]]
    needs_data: bool = False


# --- inputs made from the phantom or written here ----------------------------------------------


def small_ct(
    shape: tuple[int, int, int] = (24, 24, 8), spacing: float = 1.0, seed: int = 0
) -> Volume:
    rng = np.random.default_rng(seed)
    array = rng.integers(-1000, 1500, size=shape).astype(np.int16)
    return Volume(array, np.diag([0.8, 0.8, spacing, 1.0]))


def small_series(folder: Path, **kwargs: object) -> list[Path]:
    return write_dicom_series(small_ct(), folder, **kwargs)


def set_tags(paths: list[Path], **tags: object) -> None:
    for path in paths:
        ds = pydicom.dcmread(path)
        for name, value in tags.items():
            if value is None:
                delattr(ds, name)
            else:
                setattr(ds, name, value)
        ds.save_as(path)


def phantom_nifti(folder: Path, array: np.ndarray, name: str = "scan.nii.gz") -> Path:
    chest = synthetic_chest()
    return write_nifti(Volume(array, chest.affine), folder / name)


def missing_path(tmp: Path, src: Sources) -> tuple[Path, tuple[str, str, str]]:
    return tmp / "no_such_scan.nii.gz", NODULE


def text_file(tmp: Path, src: Sources) -> tuple[Path, tuple[str, str, str]]:
    path = tmp / "report.txt"
    path.write_text("Chest CT, 3 nodules, see images.\n")
    return path, NODULE


def empty_folder(tmp: Path, src: Sources) -> tuple[Path, tuple[str, str, str]]:
    (tmp / "empty").mkdir()
    return tmp / "empty", NODULE


def unrelated_files(tmp: Path, src: Sources) -> tuple[Path, tuple[str, str, str]]:
    folder = tmp / "downloads"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("nothing to see\n")
    (folder / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    (folder / "sub" / "IM0001").write_bytes(bytes(300))
    (folder / "archive.zip").write_bytes(b"PK\x03\x04" + bytes(100))
    return folder, NODULE


def two_series_tie(tmp: Path, src: Sources) -> tuple[Path, tuple[str, str, str]]:
    for name in ("first", "second"):
        write_dicom_series(small_ct(), tmp / "tie" / name, uid_seed=name, series_description=name)
    return tmp / "tie", NODULE


def missing_slice(tmp: Path, src: Sources) -> tuple[Path, tuple[str, str, str]]:
    paths = small_series(tmp / "gap")
    paths[4].unlink()
    return tmp / "gap", NODULE


def uneven_spacing(tmp: Path, src: Sources) -> tuple[Path, tuple[str, str, str]]:
    paths = small_series(tmp / "uneven")
    x, y, z = (float(v) for v in pydicom.dcmread(paths[3]).ImagePositionPatient)
    set_tags([paths[3]], ImagePositionPatient=[x, y, z + 0.4])
    return tmp / "uneven", NODULE


def sheared_grid(tmp: Path, src: Sources) -> tuple[Path, tuple[str, str, str]]:
    sheared = np.diag([0.8, 0.8, 1.5, 1.0])
    sheared[1, 2] = 0.4  # each slice 0.4 mm further sideways: a tilted gantry
    write_dicom_series(Volume(small_ct().array, sheared), tmp / "sheared")
    return tmp / "sheared", NODULE


def mixed_orientations(tmp: Path, src: Sources) -> tuple[Path, tuple[str, str, str]]:
    paths = small_series(tmp / "mixed")
    set_tags([paths[2]], ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    return tmp / "mixed", NODULE


def secondary_capture(tmp: Path, src: Sources) -> tuple[Path, tuple[str, str, str]]:
    paths = small_series(tmp / "screenshots")
    set_tags(paths, SOPClassUID=SecondaryCaptureImageStorage)
    return tmp / "screenshots", NODULE


def mr_like_nifti(tmp: Path, src: Sources) -> tuple[Path, tuple[str, str, str]]:
    intensities = (synthetic_chest().array.astype(np.float32) + 1024.0) * 1.7
    return phantom_nifti(tmp, intensities, "t1.nii.gz"), NODULE


def four_d_nifti(tmp: Path, src: Sources) -> tuple[Path, tuple[str, str, str]]:
    frame = small_ct().array
    path = tmp / "perfusion.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([frame, frame, frame], -1), np.eye(4)), path)
    return path, ("5", "5", "3")


def thin_slab(tmp: Path, src: Sources) -> tuple[Path, tuple[str, str, str]]:
    chest = synthetic_chest()
    k = int(round(chest.world_to_index(np.array([NODULE_CENTER_RAS]))[0, 2]))
    affine = chest.affine.copy()
    affine[2, 2] = 0.7  # two 0.7 mm slices through the nodule
    affine[2, 3] = NODULE_CENTER_RAS[2] - 0.35
    path = write_nifti(Volume(chest.array[:, :, k : k + 2].copy(), affine), tmp / "slab.nii.gz")
    return path, NODULE


def point_outside(tmp: Path, src: Sources) -> tuple[Path, tuple[str, str, str]]:
    return Path(src.phantom["nifti"]), ("300.0", "0.0", "-100.0")


def point_in_a_corner(tmp: Path, src: Sources) -> tuple[Path, tuple[str, str, str]]:
    return Path(src.phantom["nifti"]), CORNER


def point_in_air(tmp: Path, src: Sources) -> tuple[Path, tuple[str, str, str]]:
    return Path(src.phantom["nifti"]), AIR_OUTSIDE_THE_BODY


def point_mirrored_by_lps(tmp: Path, src: Sources) -> tuple[Path, tuple[str, str, str]]:
    """The nodule's LPS coordinates given as RAS: the mirror point is in air."""
    r, a, s = NODULE_CENTER_RAS
    return Path(src.phantom["nifti"]), (str(-r), str(-a), str(s))


def nan_coordinate(tmp: Path, src: Sources) -> tuple[Path, tuple[str, str, str]]:
    return Path(src.phantom["nifti"]), ("nan", NODULE[1], NODULE[2])


def infinite_coordinate(tmp: Path, src: Sources) -> tuple[Path, tuple[str, str, str]]:
    return Path(src.phantom["nifti"]), (NODULE[0], "inf", NODULE[2])


def no_rescale_dicom(tmp: Path, src: Sources) -> tuple[Path, tuple[str, str, str]]:
    folder = Path(shutil.copytree(src.phantom["dicom_dir"], tmp / "raw"))
    set_tags(sorted(folder.glob("*.dcm")), RescaleIntercept=None, RescaleSlope=None)
    return folder, NODULE


def absurd_values(tmp: Path, src: Sources) -> tuple[Path, tuple[str, str, str]]:
    return phantom_nifti(tmp, synthetic_chest().array.astype(np.float32) * 1000.0), NODULE


def nan_voxels(tmp: Path, src: Sources) -> tuple[Path, tuple[str, str, str]]:
    array = synthetic_chest().array.astype(np.float32)
    array[10, 20, 30] = np.nan
    return phantom_nifti(tmp, array), NODULE


def corrupt_nifti_header(tmp: Path, src: Sources) -> tuple[Path, tuple[str, str, str]]:
    raw = bytearray(gzip.decompress(Path(src.phantom["nifti"]).read_bytes()))
    raw[344:348] = b"xx\x00\x00"  # the magic "n+1": nothing says NIfTI any more
    path = tmp / "corrupt.nii"
    path.write_bytes(bytes(raw))
    return path, NODULE


def too_large(tmp: Path, src: Sources) -> tuple[Path, tuple[str, str, str]]:
    """A header that claims 8 GiB of voxels and has none: refusing it proves nothing was read."""
    header = nib.Nifti1Header()
    header.set_data_shape((2048, 2048, 1024))
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    path = tmp / "huge.nii"
    path.write_bytes(header.binaryblock + bytes(4))
    return path, ("0", "0", "0")


# --- inputs from the real archive cases ---------------------------------------------------------


def real_folder(name: str) -> Callable[[Path, Sources], tuple[Path, tuple[str, str, str]]]:
    def make(tmp: Path, src: Sources) -> tuple[Path, tuple[str, str, str]]:
        return src.shared / "dicom_edge" / name, ("0", "0", "0")

    return make


def real_file(name: str) -> Callable[[Path, Sources], tuple[Path, tuple[str, str, str]]]:
    def make(tmp: Path, src: Sources) -> tuple[Path, tuple[str, str, str]]:
        return src.shared / "dicom_edge" / "single_files" / name, ("0", "0", "0")

    return make


def cut(data: bytes, seed: int, low: float = 0.1, high: float = 0.9) -> bytes:
    """The bytes cut at a random (seeded) offset between ``low`` and ``high`` of their length."""
    offset = int(np.random.default_rng(seed).uniform(low, high) * len(data))
    return data[:offset]


def truncated_real_nifti(tmp: Path, src: Sources) -> tuple[Path, tuple[str, str, str]]:
    image = sorted((src.shared / "lidc_voi" / "images").glob("*.nii.gz"))[0]
    path = tmp / image.name
    path.write_bytes(cut(image.read_bytes(), seed=5))
    return path, ("0", "0", "0")


def truncated_real_nrrd(tmp: Path, src: Sources) -> tuple[Path, tuple[str, str, str]]:
    image = src.shared / "ct" / "lung1" / "lung1_image.nrrd"
    path = tmp / image.name
    path.write_bytes(cut(image.read_bytes(), seed=7))
    return path, ("21.86", "120.54", "-611.5")


def truncated_real_dicom(tmp: Path, src: Sources) -> tuple[Path, tuple[str, str, str]]:
    """Four slices of the real chest CT, one cut inside its pixel data."""
    slices = sorted((src.shared / "ct" / "chest_ct_dicom").glob("*.dcm"))[60:64]
    folder = tmp / "chest"
    folder.mkdir()
    for path in slices:
        shutil.copy(path, folder)
    victim = folder / slices[1].name
    data = victim.read_bytes()
    victim.write_bytes(cut(data, seed=11, low=0.6, high=0.95))
    return folder, ("0", "0", "0")


BAD_INPUTS = [
    BadInput("missing path", 3, ("does not exist", "check the path"), missing_path),
    BadInput("not an image", 4, ("not an image", "give a DICOM series"), text_file),
    BadInput("empty folder", 3, ("holds no DICOM files", "give a folder"), empty_folder),
    BadInput("unrelated files", 3, ("holds no DICOM files", "give a folder"), unrelated_files),
    BadInput("several series, a tie", 5, ("2 CT series", "pass the UID"), two_series_tie),
    BadInput("missing slice", 7, ("missing slices", "export the complete series"), missing_slice),
    BadInput("uneven spacing", 7, ("unevenly spaced", "uniform spacing"), uneven_spacing),
    BadInput("sheared grid", 7, ("gantry tilt", "dcm2niix"), sheared_grid),
    BadInput("mixed orientations", 7, ("orientations", "single orientation"), mixed_orientations),
    BadInput("secondary capture", 6, ("not CT image data", "CT image series"), secondary_capture),
    BadInput("MR intensities in NIfTI", 6, ("not HU", "Hounsfield units"), mr_like_nifti),
    BadInput("4D volume", 7, ("4D", "extract the volume"), four_d_nifti),
    BadInput("too thin around the point", 7, ("1.4 mm thick", "whole CT series"), thin_slab),
    BadInput("point outside", 8, ("outside the scan", "place it on a nodule"), point_outside),
    BadInput("point at a corner", 8, ("very edge", "whole nodule"), point_in_a_corner),
    BadInput("point in air", 12, ("in air or lung", "place it on the nodule"), point_in_air),
    BadInput("LPS point as RAS", 12, ("in air or lung", "--lps"), point_mirrored_by_lps),
    BadInput("NaN coordinate", 2, ("three finite numbers",), nan_coordinate),
    BadInput("infinite coordinate", 2, ("three finite numbers",), infinite_coordinate),
    BadInput("no HU rescale", 6, ("missing rescale", "Hounsfield units"), no_rescale_dicom),
    BadInput("absurd value range", 6, ("not HU", "Hounsfield units"), absurd_values),
    BadInput("NaN voxels", 4, ("NaN", "export the scan again"), nan_voxels),
    BadInput("corrupt NIfTI header", 4, ("cannot be read as NIfTI", "copy"), corrupt_nifti_header),
    BadInput("too large", 10, ("GiB", "MEDCNN_MAX_SCAN_BYTES"), too_large),
    BadInput("gantry tilt", 7, ("gantry tilt", "dcm2niix"), real_folder("gantrytilting_001"), True),
    BadInput("not a volume", 7, ("same position", "choose"), real_folder("notavolume_001"), True),
    BadInput("slice gap", 7, ("missing slices", "export"), real_folder("sliceincrement_001"), True),
    BadInput("MR", 6, ("MR image", "CT scans only"), real_file("MR_small.dcm"), True),
    BadInput("DICOM SEG", 6, ("segmentation", "CT scans only"), real_file("liver.dcm"), True),
    BadInput("2D slice", 7, ("2D image", "at least 3 slices"), real_file("CT_small.dcm"), True),
    BadInput(
        "enhanced CT", 4, ("multi-frame", "single-frame"), real_file("eCT_Supplemental.dcm"), True
    ),
    BadInput("truncated NIfTI", 4, ("truncated", "copy"), truncated_real_nifti, True),
    BadInput("truncated NRRD", 4, ("truncated", "copy"), truncated_real_nrrd, True),
    BadInput("truncated DICOM", 4, ("truncated", "copy the series"), truncated_real_dicom, True),
]


@pytest.fixture(scope="module")
def sources(phantom: dict, shared_data_or_none: Path | None) -> Sources:
    return Sources(phantom, shared_data_or_none)


@pytest.mark.parametrize("bad", BAD_INPUTS, ids=[b.name for b in BAD_INPUTS])
def test_bad_input_is_one_sentence_an_exit_code_and_no_files(
    bad: BadInput, sources: Sources, tmp_bundle: Path, tmp_path: Path, capsys
) -> None:
    if bad.needs_data and sources.shared is None:
        pytest.skip("real data not found (set MEDCNN_SHARED_DATA to point at it)")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    image, point = bad.make(inputs, sources)
    before = snapshot(tmp_path)
    out = tmp_path / "out"
    run = run_cli(
        capsys, "analyze", image, "--point", *point, "--out", out, "--bundle", tmp_bundle,
        "--trust-bundle",
    )  # fmt: skip
    assert_one_clear_sentence(run, bad.code, *bad.phrases)
    assert run.stdout == ""
    assert snapshot(tmp_path) == before  # no output, no hidden partial folder, inputs untouched


def test_verbose_shows_the_traceback_that_is_otherwise_hidden(
    phantom: dict, tmp_bundle: Path, tmp_path: Path, capsys
) -> None:
    args = ["analyze", phantom["nifti"], "--point", *AIR_OUTSIDE_THE_BODY, "--out", tmp_path / "o"]
    args += ["--bundle", tmp_bundle, "--trust-bundle"]
    quiet = run_cli(capsys, *args)
    verbose = run_cli(capsys, "--verbose", *args)
    assert quiet.code == verbose.code == 12
    assert "Traceback" not in quiet.stderr and "Traceback" in verbose.stderr
    assert verbose.stderr.strip().endswith(quiet.stderr.strip())


def test_after_every_bad_input_the_next_analysis_works_normally(
    sources: Sources, tmp_analyzer: Analyzer, tmp_path: Path
) -> None:
    """One long-lived process (as the batch runner and the Slicer worker are): a good case, every
    bad input, the good case again. Each bad row fails with the sentence the command line gives;
    the last good row gives bit-identical outputs to the first."""
    good = (Path(sources.phantom["nifti"]), NODULE)
    rows = [("good_first", *good, "")]
    for n, bad in enumerate(BAD_INPUTS):
        if bad.needs_data and sources.shared is None:
            continue
        folder = tmp_path / "inputs" / f"{n:02d}"
        folder.mkdir(parents=True)
        image, point = bad.make(folder, sources)
        rows.append((bad.name, image, point, bad.phrases[0]))
    rows.append(("good_last", *good, ""))
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image", "r", "a", "s"])
        writer.writerows([name, str(image), *point] for name, image, point, _ in rows)
    out = tmp_path / "out"
    with pytest.raises(BatchIncompleteError, match=f"{len(rows) - 2} of {len(rows)} cases failed"):
        BatchRunner(tmp_analyzer, manifest, out, progress=False).run()
    with open(out / "predictions.csv", newline="") as handle:
        predictions = list(csv.DictReader(handle))
    assert [p["id"] for p in predictions] == [name for name, *_ in rows]
    for prediction, (_, _, _, phrase) in zip(predictions[1:-1], rows[1:-1], strict=True):
        assert phrase in prediction["error"] and not prediction["output_dir"]
    first, last = predictions[0], predictions[-1]
    assert first["error"] == last["error"] == ""
    assert first["probability"] == last["probability"]
    for name in ("heatmap.nii.gz", "segmentation.nii.gz"):
        a = nib.load(out / first["output_dir"] / name)
        b = nib.load(out / last["output_dir"] / name)
        np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
        np.testing.assert_array_equal(a.affine, b.affine)
    # only the two good cases wrote anything, and nothing is left half-written
    assert sorted(p.name for p in (out / "cases").iterdir()) == sorted(
        Path(p["output_dir"]).name for p in (first, last)
    )
    assert [p.name for p in out.rglob(".*")] == []


def test_the_exit_codes_the_program_lists_are_the_readmes(capsys: pytest.CaptureFixture) -> None:
    """Scripts branch on these codes: ``medcnn exit-codes`` and the README's table must agree."""
    run = run_cli(capsys, "exit-codes")
    assert run.code == 0
    listed = [line.split(maxsplit=1) for line in run.stdout.strip().splitlines()]
    assert listed == readme_table("`medcnn exit-codes` prints this table.")
    assert {int(code) for code, _ in listed} >= {0, 1, 2, 3, 8, 9, 11, 130}
