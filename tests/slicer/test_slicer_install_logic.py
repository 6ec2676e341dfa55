"""The dependency installer's decisions: ask first, torch through PyTorchUtils, the rest through
pip with Slicer's own packages pinned, never installed. Slicer's installers are stand-ins here
(they would download); the requirements file is the shipped one."""

from __future__ import annotations

import importlib.metadata

import pytest
from MedCNNLib import InstallLogic as install
from MedCNNLib.InstallLogic import InstallError, InstallLogic, readRequirements
from packaging.utils import canonicalize_name


class Recorder:
    def __init__(self, answer: bool = True) -> None:
        self.answer = answer
        self.questions: list[str] = []
        self.torch: list[str] = []
        self.pip: list[tuple[list, str]] = []

    def confirm(self, question: str) -> bool:
        self.questions.append(question)
        return self.answer

    def install_torch(self, specifier: str) -> None:
        self.torch.append(specifier)

    def pip_ensure(self, requirements, constraints) -> None:
        self.pip.append(([str(r) for r in requirements], constraints.read_text()))


def make(recorder: Recorder, requirements) -> InstallLogic:
    return InstallLogic(
        recorder.confirm, recorder.install_torch, recorder.pip_ensure, requirementsFile=requirements
    )


def test_shipped_requirements_file_never_names_what_slicer_ships_or_torch():
    names = {canonicalize_name(r.name) for r in readRequirements()}
    shipped = {canonicalize_name(name) for name in install.SHIPPED_BY_SLICER}
    assert names, "requirements.txt lists nothing"
    assert not names & shipped
    assert "torch" not in names


def test_nothing_missing_asks_nothing(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# already here\npytest>=1\n")
    recorder = Recorder()
    assert make(recorder, requirements).ensure() is True
    assert recorder.questions == [] and recorder.torch == [] and recorder.pip == []


def test_missing_packages_are_installed_after_asking_with_shipped_ones_pinned(
    tmp_path, monkeypatch
):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("SimpleITK>=99\nnot-a-real-package-medcnn==1.0\n")
    monkeypatch.setattr(install, "TORCH_REQUIREMENT", "torch>=999")
    recorder = Recorder()
    logic = make(recorder, requirements)

    plan = logic.plan()
    assert str(plan.torch) == "torch>=999"
    assert [str(r) for r in plan.packages] == ["not-a-real-package-medcnn==1.0"]
    assert plan.keptAsShipped == ["SimpleITK"]  # too old or not, never replaced

    with pytest.raises(InstallError, match="did not succeed"):  # stand-ins install nothing
        logic.ensure()
    assert len(recorder.questions) == 1
    assert "torch>=999" in recorder.questions[0] and "not-a-real-package" in recorder.questions[0]
    assert recorder.torch == [">=999"]
    ((installed, constraints),) = recorder.pip
    assert installed == ["not-a-real-package-medcnn==1.0"]
    pins = dict(line.split("==") for line in constraints.split())
    assert pins["SimpleITK"] == importlib.metadata.version("SimpleITK")
    assert pins["numpy"] == importlib.metadata.version("numpy")


def test_declining_installs_nothing(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("not-a-real-package-medcnn==1.0\n")
    recorder = Recorder(answer=False)
    with pytest.raises(InstallError, match="press Analyze again"):
        make(recorder, requirements).ensure()
    assert recorder.torch == [] and recorder.pip == []
