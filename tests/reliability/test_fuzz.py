"""Bounded fuzzing of the loaders and the manifest parser: only MedCNN's documented errors may come
out, never another exception, a crash or a hang.

Loaders: hypothesis mutates real files (a LIDC-IDRI NIfTI, gzipped and not; NRRD written from it;
three slices of the JPEG 2000 CT series, decoded by GDCM; a generated uncompressed series) by
cutting, flipping, overwriting, deleting and repeating bytes, biased towards the headers. Each
mutated input is read in a sandbox process (``fuzz_reader_worker.py``) with a time limit, so a
segmentation fault or an endless loop in a decoder is reported as such. The scan size limit is
set to 64 MiB there, so a mutated size field is refused before memory is spent.

The number of examples is ``MEDCNN_FUZZ_EXAMPLES`` per seed (default 40, about 15 s in all);
set it higher for a longer run. Hypothesis keeps failing examples in ``.hypothesis/`` and
replays them first.
"""

from __future__ import annotations

import base64
import csv
import gzip
import json
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from itk_images import to_itk_image
from reliability_support import RecordingAnalyzer

from medcnn.app.batch import BatchRunner, case_folder_name, parse_point, read_manifest
from medcnn.errors import MedCNNError
from medcnn.phantom import write_dicom_series, write_nifti
from medcnn.volume import Volume

EXAMPLES = int(os.environ.get("MEDCNN_FUZZ_EXAMPLES", "40"))
TIME_LIMIT_S = 30.0
WORKER = Path(__file__).with_name("fuzz_reader_worker.py")
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


# --- the sandbox ---------------------------------------------------------------------------------


class ReaderSandbox:
    """A ``read_scan`` process that is restarted after a crash or a hang."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.log = tempfile.TemporaryFile()

    def start(self) -> None:
        env = {**os.environ, "MEDCNN_MAX_SCAN_BYTES": str(64 * 2**20)}
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=env,
            text=True,
        )
        assert self._answer(TIME_LIMIT_S)["outcome"] == "ready"

    def _answer(self, timeout: float) -> dict:
        assert self.process is not None and self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                self.stop()
                return {"outcome": "hang"}
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            self.process = None
            return {"outcome": "crash", "returncode": code}
        return json.loads(line)

    def read(self, files: dict[str, bytes], target: str) -> dict:
        if self.process is None:
            self.start()
        assert self.process is not None and self.process.stdin is not None
        request = {"files": {k: base64.b64encode(v).decode() for k, v in files.items()}}
        request["target"] = target
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            self.process = None
            return {"outcome": "crash", "returncode": None}
        return self._answer(TIME_LIMIT_S)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture(scope="module")
def sandbox():
    box = ReaderSandbox()
    yield box
    box.stop()


# --- seeds: real files where the data is there, written ones otherwise ---------------------------


@dataclass(frozen=True)
class Seed:
    files: dict[str, bytes]
    target: str  # what read_scan is given
    victim: str  # the file that is mutated


def ct_volume() -> Volume:
    rng = np.random.default_rng(3)
    array = rng.integers(-1000, 1500, size=(20, 22, 6)).astype(np.int16)
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    affine[:3, 3] = (-20.0, 31.0, -100.0)
    return Volume(array, affine)


def nrrd_bytes(volume: Volume, folder: Path, compress: bool) -> bytes:
    image = to_itk_image(volume)
    path = folder / "seed.nrrd"
    sitk.WriteImage(image, str(path), useCompression=compress)
    return path.read_bytes()


def series_files(paths: list[Path]) -> dict[str, bytes]:
    return {f"series/{p.name}": p.read_bytes() for p in paths}


@pytest.fixture(scope="module")
def seeds(tmp_path_factory, shared_data_or_none: Path | None) -> dict[str, Seed]:
    folder = tmp_path_factory.mktemp("seeds")
    generated = series_files(write_dicom_series(ct_volume(), folder / "series"))
    found = {"dicom": Seed(generated, "series", sorted(generated)[1])}
    if shared_data_or_none is None:
        volume = ct_volume()
        nifti_gz = write_nifti(volume, folder / "seed.nii.gz").read_bytes()
    else:
        voi = sorted((shared_data_or_none / "lidc_voi" / "images").glob("*.nii.gz"))[0]
        nifti_gz = voi.read_bytes()
        image = nib.load(voi)
        volume = Volume(np.asarray(image.dataobj), image.affine)
        j2k_folder = shared_data_or_none / "dicom_edge" / "ct_jpeg2000_series"
        j2k = series_files(sorted(j2k_folder.glob("CT.*"))[8:11])
        found["dicom_jpeg2000"] = Seed(j2k, "series", sorted(j2k)[1])
    found["nifti"] = Seed({"scan.nii": gzip.decompress(nifti_gz)}, "scan.nii", "scan.nii")
    found["nifti_gz"] = Seed({"scan.nii.gz": nifti_gz}, "scan.nii.gz", "scan.nii.gz")
    nrrd = nrrd_bytes(volume, folder, compress=False)
    found["nrrd"] = Seed({"scan.nrrd": nrrd}, "scan.nrrd", "scan.nrrd")
    return found


# --- mutations ---------------------------------------------------------------------------------

INTERESTING = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80"]


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with one to four byte-level mutations, half of them in the first kilobyte."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if not out:
            break
        head = min(len(out), 1024)
        where = draw(st.one_of(st.integers(0, head - 1), st.integers(0, len(out) - 1)))
        kind = draw(st.sampled_from(["cut", "flip", "set", "delete", "repeat"]))
        if kind == "cut":
            del out[where:]
        elif kind == "flip":
            out[where] ^= draw(st.integers(1, 255))
        elif kind == "set":
            value = draw(st.sampled_from(INTERESTING))
            out[where : where + len(value)] = value
        elif kind == "delete":
            del out[where : where + draw(st.integers(1, 64))]
        else:
            chunk = out[where : where + draw(st.integers(1, 64))]
            out[where:where] = chunk
    return bytes(out)


def assert_clean(answer: dict) -> None:
    assert answer["outcome"] in ("ok", "clean"), answer
    if answer["outcome"] == "clean":
        assert answer["message"].endswith("."), answer


@pytest.mark.parametrize("name", ["nifti", "nifti_gz", "nrrd", "dicom_jpeg2000", "dicom"])
def test_mutated_files_give_only_documented_errors(name: str, seeds, sandbox) -> None:
    if name not in seeds:
        pytest.skip("real data not found (set MEDCNN_SHARED_DATA to point at it)")
    seed = seeds[name]
    assert sandbox.read(seed.files, seed.target) == {"outcome": "ok"}  # the seed reads

    @FUZZ_SETTINGS
    @given(mutated(seed.files[seed.victim]))
    def fuzz(data: bytes) -> None:
        assert_clean(sandbox.read({**seed.files, seed.victim: data}, seed.target))

    fuzz()


# --- the manifest parser -------------------------------------------------------------------------

CSV_TEXT = st.text(
    alphabet=st.sampled_from(
        list(',"\n\r\t \x00;/\\.-_:~') + list("imagersd0123456789enaif") + ["é"]
    ),
    max_size=300,
)
HEADERS = st.sampled_from(["", "image,r,a,s\n", "id,image,r,a,s\n", "ID, Image ,R,A,S\r\n"])


@settings(max_examples=max(100, EXAMPLES * 8), deadline=None)
@given(
    st.one_of(st.tuples(HEADERS, CSV_TEXT).map("".join).map(str.encode), st.binary(max_size=200))
)
def test_random_manifests_give_only_documented_errors(content: bytes) -> None:
    folder = Path(tempfile.mkdtemp(prefix="medcnn-manifest-"))
    try:
        manifest = folder / "manifest.csv"
        manifest.write_bytes(content)
        try:
            rows = read_manifest(manifest)
        except MedCNNError:
            return
        out = folder / "out"
        analyzer = RecordingAnalyzer()
        runner = BatchRunner(analyzer, manifest, out, progress=False)
        for row in rows:
            name = case_folder_name(row)
            assert name not in (".", "..") and "/" not in name and "\\" not in name
            try:
                parse_point(row)
            except MedCNNError:
                pass
            record = runner.analyze_row(row)
            assert not record["error"].startswith("unexpected"), record
        cases = (out / "cases").resolve()
        assert all(d.resolve().parent == cases for d in analyzer.out_dirs)
        assert len({d.name for d in analyzer.out_dirs}) == len(analyzer.out_dirs)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_manifest_rows_with_extra_fields_fail_alone_and_blank_rows_are_skipped(tmp_path) -> None:
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as handle:
        csv.writer(handle).writerows(
            [["image", "r", "a", "s"], ["a,b.nii", "1", "2", "3"], ["", "", "", ""], ["x", "1"]]
        )
    manifest.write_text(manifest.read_text().replace('"a,b.nii"', "a,b.nii"))  # unquoted comma
    rows = read_manifest(manifest)
    assert len(rows) == 2
    assert "quote image paths that contain commas" in rows[0].problem
    record = BatchRunner(RecordingAnalyzer(), manifest, tmp_path / "out").analyze_row(rows[0])
    assert record["error"] == rows[0].problem
