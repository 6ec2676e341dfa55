"""MedCNN as a Python package: ``python -m build`` makes an sdist and, from it, a wheel that
carries the engine and every shipped bundle (and nothing of the tests, benchmarks or data), with
metadata fit for a package index; the 3D Slicer extension's build ships the same files.

``.ci/run`` goes further: it installs the wheel into a fresh virtual environment outside the
checkout and runs the demo, an analysis and a bundle the MONAI way from there."""

from __future__ import annotations

import email
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import medcnn
from medcnn.catalog import installed_models

REPO = Path(__file__).resolve().parents[1]
BUNDLE_FILES = ("LICENSE", "configs/metadata.json", "configs/inference.json", "docs/README.md")


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """The sdist and the wheel built from it, as ``python -m build`` makes them."""
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO)],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def wheel(dist: Path) -> zipfile.ZipFile:
    (path,) = dist.glob(f"medcnn-{medcnn.__version__}-py3-none-any.whl")
    return zipfile.ZipFile(path)


EXTENSION_LOGIC = "medcnn/_extension/MedCNNLib/"


def payload(wheel: zipfile.ZipFile) -> set[str]:
    """The wheel's files less its own metadata (``*.dist-info/``)."""
    return {n for n in wheel.namelist() if not n.split("/")[0].endswith(".dist-info")}


def engine_payload(wheel: zipfile.ZipFile) -> set[str]:
    """The wheel's engine and bundles: its payload less the extension's own logic, which it
    carries for ``medcnn web`` and the extension keeps in its module folder."""
    return {n for n in payload(wheel) if not n.startswith(EXTENSION_LOGIC)}


def test_the_wheel_carries_the_engine_and_every_bundle(wheel: zipfile.ZipFile) -> None:
    names = payload(wheel)
    assert {n.split("/")[0] for n in names} == {"medcnn"}  # no tests/, benchmarks/, data
    engine = {
        f"medcnn/{p.relative_to(REPO / 'src' / 'medcnn').as_posix()}"
        for p in (REPO / "src" / "medcnn").rglob("*.py")
    }
    assert engine <= names
    assert "medcnn/schemas/result.schema.json" in names
    logic = REPO / "MedCNNExtension" / "MedCNN" / "MedCNNLib"
    assert {f"{EXTENSION_LOGIC}{p.name}" for p in logic.glob("*.py")} == {
        n for n in names if n.startswith(EXTENSION_LOGIC)
    }  # the web front end's share of the extension, exactly
    models = installed_models()
    assert {"lung_nodule_ct", "chest_xray_pneumonia"} <= set(models)
    for model in models:
        for file in (*BUNDLE_FILES, "models/model.pt"):
            assert f"medcnn/monai_bundle/{model}/{file}" in names, (model, file)
    assert not [n for n in names if n.endswith((".ts", ".pyc")) or "__pycache__" in n]
    too_big = [i.filename for i in wheel.infolist() if i.file_size > 25 * 1024 * 1024]
    assert not too_big


def test_the_sdist_builds_the_wheel_and_holds_no_tests_or_data(dist: Path) -> None:
    (path,) = dist.glob(f"medcnn-{medcnn.__version__}.tar.gz")
    with tarfile.open(path) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    assert {"setup.py", "pyproject.toml", "MedCNN.json", "monai_bundle/shipped_files.txt"} <= names
    assert "monai_bundle/lung_nodule_ct/models/model.pt" in names
    assert not {n for n in names if n.split("/")[0] in ("tests", "benchmarks", "data", ".ci")}


def test_the_installed_package_finds_its_own_bundles(wheel: zipfile.ZipFile, tmp_path) -> None:
    """Unpacked as pip installs it, away from the checkout: ``medcnn models --path`` names the
    bundles inside the package, the folders to give ``python -m monai.bundle run``."""
    site = tmp_path / "site-packages"
    wheel.extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("MEDCNN_BUNDLE", None)
    listed = subprocess.run(
        [sys.executable, "-m", "medcnn", "models", "--path"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert listed.returncode == 0, listed.stderr
    folders = dict(line.split("\t") for line in listed.stdout.splitlines())
    assert set(folders) == set(installed_models())
    for model, folder in folders.items():
        assert Path(folder) == site / "medcnn" / "monai_bundle" / model
        assert (Path(folder) / "configs" / "inference.json").is_file()
    logic = subprocess.run(  # medcnn web's share of the extension, from the package
        [
            sys.executable,
            "-c",
            "from medcnn.web.setup import extension_library; print(extension_library().__file__)",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert logic.returncode == 0, logic.stderr
    assert Path(logic.stdout.strip()).parent == site / "medcnn" / "_extension" / "MedCNNLib"


def test_the_wheel_and_the_slicer_extension_ship_the_same_files(
    wheel: zipfile.ZipFile, tmp_path
) -> None:
    """The extension's CMake, configured, built and installed (Slicer's own macros stubbed),
    puts exactly the wheel's files in MedCNNEngine/, in the build tree and the package."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    harness = tmp_path / "harness"
    harness.mkdir()
    module = (REPO / "MedCNNExtension" / "MedCNN").as_posix()
    (harness / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.16.3)\n"
        "project(MedCNNPackagingCheck NONE)\n"
        "set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/qt-scripted-modules)\n"
        "set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR lib/qt-scripted-modules)\n"
        "macro(slicerMacroBuildScriptedModule)\nendmacro()\n"
        f'add_subdirectory("{module}" module)\n'
    )
    build, prefix = tmp_path / "build", tmp_path / "install"
    for command in (
        ["cmake", "-S", str(harness), "-B", str(build)],
        ["cmake", "--build", str(build)],
        ["cmake", "--install", str(build), "--prefix", str(prefix)],
    ):
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for tree in (build, prefix):
        engine = tree / "lib" / "qt-scripted-modules" / "MedCNNEngine"
        shipped = {p.relative_to(engine).as_posix() for p in engine.rglob("*") if p.is_file()}
        assert shipped == engine_payload(wheel), tree.name


def test_the_package_metadata_is_fit_for_an_index(wheel: zipfile.ZipFile) -> None:
    info = f"medcnn-{medcnn.__version__}.dist-info"
    metadata = email.message_from_bytes(wheel.read(f"{info}/METADATA"))
    assert metadata["Name"] == "medcnn" and metadata["Version"] == medcnn.__version__
    assert metadata["License-Expression"] == "Apache-2.0"
    assert wheel.read(f"{info}/licenses/LICENSE") == (REPO / "LICENSE").read_bytes()
    assert metadata["Requires-Python"] == ">=3.10"
    assert "test" in metadata.get_all("Provides-Extra")
    assert metadata.get_all("Classifier")
    entry = json.loads((REPO / "MedCNN.json").read_text())
    urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL"))
    assert urls["Source"] == entry["scm_url"]
    assert "medcnn = medcnn.app.cli:main" in wheel.read(f"{info}/entry_points.txt").decode()

    description = metadata.get_payload()
    assert description.startswith("# MedCNN") and metadata["Description-Content-Type"] == (
        "text/markdown"
    )
    targets = re.findall(r"(!?)\[[^\]]*\]\(([^)\s]+)\)", description)
    assert any(bang for bang, _ in targets)
    owner_repo = entry["scm_url"].removeprefix("https://github.com/")
    raw = f"https://raw.githubusercontent.com/{owner_repo}/{entry['scm_revision']}/"
    page = f"{entry['scm_url']}/blob/{entry['scm_revision']}/"
    for bang, target in targets:
        if bang:  # every picture from the repository's raw files, which exist
            assert target.startswith(raw), target
            assert (REPO / target.removeprefix(raw)).is_file(), target
        elif target.startswith(page):
            assert (REPO / target.removeprefix(page).split("#")[0]).exists(), target
        else:
            assert re.match(r"https?://|mailto:|#", target), f"relative link {target}"


def test_medcnn_export_derives_the_torchscript_the_package_does_not_carry(
    wheel: zipfile.ZipFile, tmp_path, capsys
) -> None:
    """Nothing MedCNN runs loads ``model.ts``, so neither the wheel nor the repository carries
    it; ``medcnn export`` derives it from the shipped weights (tests/test_bundle.py and
    tests/test_radiograph_bundle.py check that it answers as they do)."""
    import torch

    from medcnn.app.cli import main

    model = "chest_xray_pneumonia"
    assert main(["export", "--model", model, "--out", str(tmp_path / "ts")]) == 0
    target = tmp_path / "ts" / f"{model}.ts"
    assert capsys.readouterr().out.splitlines()[-1] == f"{model}\t{target}"
    assert torch.jit.load(str(target)).explain  # the network's own exported method
    assert main(["export", "--model", "no_such_model"]) == 2
    assert "no installed model 'no_such_model'" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("")
    assert main(["export", "--out", str(tmp_path / "a_file")]) == 13
    assert not [n for n in wheel.namelist() if n.endswith("model.ts")]


def test_the_repository_commits_no_derived_export_and_no_large_file() -> None:
    """The Slicer catalog counts the whole history: each release would commit ~9 MB of
    ``model.ts`` per model again beside ``model.pt``; it is derived instead, and ignored."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    assert not [name for name in tracked if name.endswith("model.ts")]
    sizes = {name: (REPO / name).stat().st_size for name in tracked if (REPO / name).is_file()}
    assert not {name: size for name, size in sizes.items() if size > 25 * 1024 * 1024}
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "monai_bundle/lung_nodule_ct/models/model.ts"], cwd=REPO
    )
    assert ignored.returncode == 0, "a derived model.ts must stay out of commits"
