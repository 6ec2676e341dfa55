"""The worker answers real clicks in Python environments like each supported 3D Slicer's, without
Slicer: Slicer's own Python (3.12, where the machine has it: pyenv or the path) with exactly the
packages that Slicer ships and a click uses (numpy, scipy, pydicom, SimpleITK, pillow), at the
versions of Slicer 5.10 (``slicer_python.txt``: the oldest, with pydicom 2.4) and of the Preview
(``slicer_preview_python.txt``), the extension's ``requirements.txt`` at its floors and the
oldest torch its installer accepts (``InstallLogic.TORCH_REQUIREMENT``), and nothing a click does
not need (no MONAI, no ITK, no tqdm, no matplotlib). The engine comes from ``src/`` on the
worker's ``PYTHONPATH``, as the installed extension puts its copy there.

That torch, 2.2.2, is the newest for Slicer's macOS build, and was built against NumPy 1 while
Slicer ships NumPy 2: the clicks prove MedCNN runs there (``medcnn.tensors``) and answers as
this environment's newest torch does. On Linux, PyPI's torch is a CUDA build (about 3 GB with
its libraries): the environment takes it, and the clicks run on the CPU. A machine without
Python 3.12 builds the environment on this Python instead, and the tests that are about 3.12
itself skip. Python 3.9 (Slicer 5.8's) loads the installer to say that Slicer is not supported;
the click path's syntax is held to the oldest supported Python by
``test_click_path_parses_as_the_oldest_supported_python``. Builds virtual environments with pip
(from the machine's package cache and PyPI): slow."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from MedCNNLib.InstallLogic import MINIMUM_PYTHON, TORCH_REQUIREMENT, readRequirements
from MedCNNLib.Runner import AnalysisRequest, WorkerRunner
from packaging.requirements import Requirement
from slicer_test_support import REPO, write_nrrd

from medcnn.app.engine import Engine
from medcnn.catalog import XRAY_MODEL
from medcnn.phantom import NODULE_CENTER_RAS, synthetic_chest
from medcnn.xray.phantom import synthetic_radiograph

HERE = Path(__file__).resolve().parent
# Each supported 3D Slicer: what it ships of the packages a click imports.
SLICER_PACKAGES = {
    "5.10": HERE / "slicer_python.txt",
    "Preview": HERE / "slicer_preview_python.txt",
}
SLICER_PYTHON = "3.12"  # both run Python 3.12
NOT_NEEDED = ("monai", "itk", "tqdm", "matplotlib")
TIMEOUT = 600.0


def at_floor(requirement: Requirement) -> str:
    """``name>=X`` as ``name==X``: the oldest version the extension accepts."""
    (floor,) = [spec.version for spec in requirement.specifier if spec.operator == ">="]
    return f"{requirement.name}=={floor}"


def shipped_by(slicer: str) -> list[str]:
    """The requirement lines of what ``slicer`` ships (``SLICER_PACKAGES``)."""
    lines = SLICER_PACKAGES[slicer].read_text().splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def slicer_like_requirements(slicer: str) -> list[str]:
    shipped = shipped_by(slicer)
    extension = [at_floor(requirement) for requirement in readRequirements()]
    return [*shipped, *extension, at_floor(Requirement(TORCH_REQUIREMENT))]


@pytest.fixture(scope="module", params=sorted(SLICER_PACKAGES))
def slicer(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def slicer_python(slicer: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """That Slicer's Python with its packages; this Python stands in where there is no 3.12."""
    python = find_interpreter(SLICER_PYTHON) or Path(sys.executable)
    folder = tmp_path_factory.mktemp(f"slicer-{slicer}-python")
    return environment(python, folder, slicer_like_requirements(slicer))


def pinned(slicer: str) -> dict[str, str]:
    """The versions that Slicer's list pins, by package name."""
    return dict(line.split("==") for line in shipped_by(slicer) if "==" in line)


def python_version(python: Path) -> str:
    done = subprocess.run(
        [str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


@pytest.mark.slow
def test_the_environment_has_what_slicer_ships_and_nothing_a_click_does_not_need(
    slicer, slicer_python
):
    versions = pinned(slicer)
    code = (
        "import importlib.metadata as m, importlib.util as u, json\n"
        f"print(json.dumps({{n: u.find_spec(n) is not None for n in {NOT_NEEDED!r}}}))\n"
        f"print(json.dumps({{n: m.version(n) for n in {sorted(versions)!r}}}))\n"
    )
    done = subprocess.run(
        [str(slicer_python), "-c", code], capture_output=True, text=True, check=True
    )
    found, installed = done.stdout.splitlines()
    assert found == "{" + ", ".join(f'"{name}": false' for name in NOT_NEEDED) + "}"
    assert json.loads(installed) == versions


@pytest.mark.slow
def test_the_worker_answers_clicks_on_a_ct_and_a_radiograph(slicer, slicer_python, tmp_path):
    runner = WorkerRunner(pythonExecutable=str(slicer_python), extraPythonPath=[str(REPO / "src")])
    try:
        ct = synthetic_chest()
        ct_path = write_nrrd(ct.array, ct.affine, tmp_path / "ct.nrrd")
        events = runner.submit(
            AnalysisRequest(str(ct_path), tuple(NODULE_CENTER_RAS), str(tmp_path / "ct"))
        ).wait(TIMEOUT)
        final = events[-1]
        assert final.kind == "result", (final.message, runner.stderrTail[-20:])
        assert 0.0 <= final.result["probability"] <= 1.0
        assert final.result["software"]["monai"] == "not installed"
        assert final.result["software"]["pydicom"] == pinned(slicer)["pydicom"]
        assert final.result["software"]["python"].startswith(python_version(slicer_python) + ".")
        oldest_torch = at_floor(Requirement(TORCH_REQUIREMENT)).split("==")[1]
        assert final.result["software"]["torch"].split("+")[0] == oldest_torch
        assert any("has no NumPy bridge" in line for line in runner.stderrTail)  # torch 2.2.2
        engine = Engine()  # this environment: the newest torch, its NumPy bridge
        here = engine.analyze_file(ct_path, NODULE_CENTER_RAS, tmp_path / "here")
        assert final.result["probability"] == pytest.approx(here.probability, abs=1e-4)
        assert (tmp_path / "ct" / "segmentation.nii.gz").exists()

        radiograph = write_nrrd(
            synthetic_radiograph().T[:, :, None], np.eye(4), tmp_path / "radiograph.nrrd"
        )
        events = runner.submit(AnalysisRequest(str(radiograph), None, str(tmp_path / "xray"))).wait(
            TIMEOUT
        )
        assert events[-1].kind == "result", (events[-1].message, runner.stderrTail[-20:])
        assert events[-1].result["model"]["id"] == XRAY_MODEL
        here = engine.analyze_file(radiograph, None, tmp_path / "xray-here")
        assert events[-1].result["probability"] == pytest.approx(here.probability, abs=1e-4)
    finally:
        runner.shutdown()


CLICK_PATH_ROOTS = ("src/medcnn", "MedCNNExtension/MedCNN")


@pytest.mark.parametrize(
    "path",
    sorted(
        str(path.relative_to(REPO))
        for root in CLICK_PATH_ROOTS
        for path in (REPO / root).rglob("*.py")
        if "training" not in path.parts
    ),
)
def test_click_path_parses_as_the_oldest_supported_python(path):
    """No syntax newer than the oldest Python a supported Slicer or the engine runs on
    (``MINIMUM_PYTHON``, the engine's ``requires-python``); ruff's ``target-version`` holds the
    rest of the repository to the same."""
    ast.parse((REPO / path).read_text(), filename=path, feature_version=MINIMUM_PYTHON)


OLDEST_SLICER_PYTHON = (3, 9)  # Slicer 5.8's: the panel must load there to say it is unsupported


@pytest.mark.parametrize(
    "path",
    sorted(str(path.relative_to(REPO)) for path in (REPO / CLICK_PATH_ROOTS[1]).rglob("*.py")),
)
def test_the_panel_loads_in_slicer_5_8_to_say_it_is_not_supported(path):
    """The extension's own modules (not the engine) stay importable on Python 3.9, so that
    Slicer 5.8 shows ``unsupportedReason``'s sentence instead of a traceback: 3.9 syntax,
    annotations never evaluated, no ``zip(strict=...)``."""
    text = (REPO / path).read_text()
    tree = ast.parse(text, filename=path, feature_version=OLDEST_SLICER_PYTHON)
    annotated = any(isinstance(node, (ast.FunctionDef, ast.AnnAssign)) for node in ast.walk(tree))
    assert not annotated or "from __future__ import annotations" in text
    strict_zips = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and ast.unparse(node.func) == "zip"
        and any(keyword.arg == "strict" for keyword in node.keywords)
    ]
    assert strict_zips == []


def environment(python: Path, folder: Path, packages: list[str]) -> Path:
    """A fresh virtual environment of ``python`` holding ``packages``; its interpreter."""
    venv_python = folder / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    subprocess.run([str(python), "-m", "venv", str(folder)], check=True, timeout=300)
    done = subprocess.run(
        [str(venv_python), "-m", "pip", "install", "--quiet", *packages],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode:
        pytest.fail(f"building the environment in {folder} failed:\n{done.stderr[-3000:]}")
    return venv_python


def find_interpreter(version: str) -> Path | None:
    """A Python ``version`` ("3.12") that runs on this machine: installed by pyenv, or on the
    path (a pyenv shim there may name a version it will not run, so each is tried)."""
    installed = sorted((Path.home() / ".pyenv" / "versions").glob(f"{version}.*/bin/python"))
    on_path = shutil.which(f"python{version}")
    for candidate in [*reversed(installed), *([Path(on_path)] if on_path else [])]:
        runs = subprocess.run([str(candidate), "-c", "pass"], capture_output=True, timeout=60)
        if runs.returncode == 0:
            return candidate
    return None


def interpreter(version: str) -> Path:
    """``find_interpreter``'s Python; the test is skipped where there is none."""
    found = find_interpreter(version)
    if found is None:
        pytest.skip(f"no Python {version} on this machine (install it, e.g. with pyenv)")
    return found


@pytest.mark.slow
def test_slicer_5_8s_python_gets_the_sentence_not_a_traceback(tmp_path):
    """On a real Python 3.9 (Slicer 5.8's, with the packaging it ships), the extension's
    installer loads and says in one sentence that this Slicer is not supported."""
    python = environment(interpreter("3.9"), tmp_path / "py39", ["packaging"])
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(REPO / CLICK_PATH_ROOTS[1])!r})\n"
        "from MedCNNLib.InstallLogic import unsupportedReason\n"
        "print(unsupportedReason())\n"
    )
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(
        "MedCNN needs 3D Slicer 5.10 or newer: this Slicer runs Python 3.9"
    )


@pytest.mark.slow
def test_slicers_python_compiles_the_click_path_and_reads_as_here(slicer_python, tmp_path):
    """On a real Python 3.12 (Slicer's) with the packages that Slicer ships and the
    extension's floors: every module of the engine and the extension compiles, and the click's
    readers give the CT series and the radiograph exactly as this Python does."""
    from medcnn.app.demo import ensure_phantom
    from medcnn.reading import read_scan
    from medcnn.reading.radiograph import read_radiograph
    from medcnn.xray.phantom import ensure_radiograph_phantom

    python = slicer_python
    if python_version(python) != SLICER_PYTHON:
        pytest.skip(f"no Python {SLICER_PYTHON} on this machine (install it, e.g. with pyenv)")
    env = {"PYTHONPYCACHEPREFIX": str(tmp_path / "pycache"), "PATH": "/usr/bin:/bin"}
    roots = [str(REPO / root) for root in CLICK_PATH_ROOTS]
    compiled = subprocess.run(
        [str(python), "-m", "compileall", "-q", *roots], capture_output=True, text=True, env=env
    )
    assert compiled.returncode == 0, compiled.stdout[-3000:]

    series = Path(ensure_phantom(tmp_path / "phantom")["dicom_dir"])
    picture = ensure_radiograph_phantom(tmp_path / "radiograph")
    code = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(REPO / 'src')!r})\n"
        "from medcnn.reading import read_scan\n"
        "from medcnn.reading.radiograph import read_radiograph\n"
        f"ct = read_scan({str(series)!r})\n"
        f"xray = read_radiograph({str(picture)!r})\n"
        "print(json.dumps({'ct': [ct.array.shape, ct.affine.tolist(), float(ct.array.sum())],"
        " 'xray': [xray.pixels.shape, float(xray.pixels.sum())],"
        " 'torch': 'torch' in sys.modules}))\n"
    )
    done = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    there = json.loads(done.stdout)
    ct, xray = read_scan(series), read_radiograph(picture)
    assert there["torch"] is False  # reading needs no torch
    assert tuple(there["ct"][0]) == ct.array.shape
    np.testing.assert_allclose(there["ct"][1], ct.affine)
    assert there["ct"][2] == pytest.approx(float(ct.array.sum()))
    assert tuple(there["xray"][0]) == xray.pixels.shape
    assert there["xray"][1] == pytest.approx(float(xray.pixels.sum()))
