"""The dependency installer's decisions: refuse a Slicer that cannot run MedCNN before asking,
ask first (never under the busy cursor), torch through PyTorchUtils, the rest through pip with
Slicer's own packages pinned, never installed; every failure one sentence, one install at a
time, a restart asked for when a loaded torch must change. Slicer's installers are stand-ins
here (they would download); the requirements file is the shipped one."""

from __future__ import annotations

import contextlib
import importlib.metadata
import re
import subprocess
import sys

import pytest
from MedCNNLib import InstallLogic as install
from MedCNNLib.InstallLogic import InstallError, InstallLogic, readRequirements
from packaging.utils import canonicalize_name
from slicer_test_support import REPO


class Recorder:
    def __init__(self, answer: bool = True) -> None:
        self.answer = answer
        self.questions: list[str] = []
        self.torch: list[str] = []
        self.pip: list[tuple[list, str]] = []
        self.events: list[str] = []  # "question", "busy", "idle" in the order they happened

    def confirm(self, question: str) -> bool:
        self.questions.append(question)
        self.events.append("question")
        return self.answer

    @contextlib.contextmanager
    def busy(self):
        self.events.append("busy")
        try:
            yield
        finally:
            self.events.append("idle")

    def install_torch(self, specifier: str) -> None:
        self.torch.append(specifier)

    def pip_ensure(self, requirements, constraints) -> None:
        self.pip.append(([str(r) for r in requirements], constraints.read_text()))


def make(recorder: Recorder, requirements, pip=None, torch_loaded: bool = False) -> InstallLogic:
    return InstallLogic(
        recorder.confirm,
        recorder.install_torch,
        pip or recorder.pip_ensure,
        requirementsFile=requirements,
        busy=recorder.busy,
        torchLoaded=lambda: torch_loaded,
    )


@pytest.fixture
def missing(tmp_path):
    """A requirements file naming a package that is not installed."""
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("not-a-real-package-medcnn==1.0\n")
    return requirements


def one_sentence(text: str) -> bool:
    return "\n" not in text and text.endswith(".") and text.count(". ") == 0


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


def test_a_slicer_with_python_3_9_is_refused_before_anything_is_asked(missing, monkeypatch):
    reason = install.unsupportedReason(python=(3, 9))
    assert "3D Slicer 5.10 or newer" in reason and "Python 3.9" in reason
    assert "nothing was downloaded" in reason
    assert install.unsupportedReason(python=(3, 12)) is None
    monkeypatch.setattr(install.sys, "version_info", (3, 9, 10, "final", 0))
    recorder = Recorder()
    with pytest.raises(InstallError, match="5.10 or newer"):
        make(recorder, missing).ensure()
    assert recorder.events == [] and recorder.torch == [] and recorder.pip == []


def test_slicer_for_macos_keeps_the_newest_torch_its_platform_has(tmp_path, monkeypatch):
    """Slicer for macOS is an Intel build, whose newest torch is 2.2.2: a torch 2.2.2 already
    there (another extension's) is used, nothing is asked, and no platform is refused."""
    monkeypatch.setattr(install, "installedVersion", lambda name: "2.2.2")
    assert install.unsupportedReason() is None
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("")
    recorder = Recorder()
    make(recorder, requirements).ensure()
    assert recorder.events == [] and recorder.torch == [] and recorder.pip == []


def test_the_question_comes_before_the_busy_cursor(missing):
    recorder = Recorder()
    with pytest.raises(InstallError):
        make(recorder, missing).ensure()  # the stand-in pip installs nothing
    assert recorder.events == ["question", "busy", "idle"]
    declined = Recorder(answer=False)
    with pytest.raises(InstallError, match="press Analyze again"):
        make(declined, missing).ensure()
    assert declined.events == ["question"]  # no busy cursor for a question declined


def test_a_failing_pip_ends_in_one_sentence_and_the_next_click_can_install(missing):
    """Slicer's pip helpers raise CalledProcessError with the whole pip command line."""
    recorder = Recorder()
    calls = []

    def failing_pip(requirements, constraints):
        calls.append(1)
        command = [sys.executable, "-m", "pip", "install", "-c", str(constraints), "x" * 300]
        raise subprocess.CalledProcessError(1, command, output="ERROR: no matching distribution")

    logic = make(recorder, missing, pip=failing_pip)
    with pytest.raises(InstallError) as failed:
        logic.ensure()
    message = str(failed.value)
    assert "not-a-real-package-medcnn==1.0" in message and "exited with status 1" in message
    assert "x" * 300 not in message and len(message) < 400
    assert one_sentence(message), message
    assert recorder.events == ["question", "busy", "idle"]  # the cursor is restored
    assert logic.installing is False
    with pytest.raises(InstallError, match="exited with status 1"):
        logic.ensure()  # a second click asks and tries again
    assert len(recorder.questions) == 2 and len(calls) == 2


def test_a_failing_torch_install_ends_in_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setattr(install, "TORCH_REQUIREMENT", "torch>=999")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("")
    recorder = Recorder()

    def failing_torch(specifier):
        raise RuntimeError("No matching distribution found for torch>=999\nsecond line")

    logic = InstallLogic(
        recorder.confirm,
        failing_torch,
        recorder.pip_ensure,
        requirementsFile=requirements,
        busy=recorder.busy,
        torchLoaded=lambda: False,
    )
    with pytest.raises(InstallError) as failed:
        logic.ensure()
    assert "RuntimeError: No matching distribution found for torch>=999" in str(failed.value)
    assert "second line" not in str(failed.value) and one_sentence(str(failed.value))
    assert logic.installing is False


def test_no_second_install_while_one_runs(missing):
    """Slicer keeps processing events during the install: a second Analyze is refused."""
    recorder = Recorder()
    refused = []

    def reentering_pip(requirements, constraints):
        with pytest.raises(InstallError) as second:
            logic.ensure()
        refused.append(str(second.value))

    logic = make(recorder, missing, pip=reentering_pip)
    with pytest.raises(InstallError, match="did not succeed"):
        logic.ensure()
    assert refused == [
        "MedCNN is already installing its Python packages; wait until it has finished."
    ]
    assert len(recorder.questions) == 1


def test_a_loaded_torch_that_must_change_asks_for_a_restart_first(tmp_path, monkeypatch):
    monkeypatch.setattr(install, "TORCH_REQUIREMENT", "torch>=999")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("")
    recorder = Recorder()
    with pytest.raises(InstallError, match="restart Slicer") as refused:
        make(recorder, requirements, torch_loaded=True).ensure()
    assert one_sentence(str(refused.value)) and "torch>=999" in str(refused.value)
    assert recorder.events == [] and recorder.torch == []


def test_versions_are_read_tolerantly(monkeypatch):
    from packaging.requirements import Requirement

    monkeypatch.setattr(install, "installedVersion", lambda name: "9.1.local-build+")
    assert install.isSatisfied(Requirement("torch>=2")) is False  # not an error


def test_the_minimum_python_is_the_engines():
    text = (REPO / "pyproject.toml").read_text()
    floor = re.search(r'^requires-python = ">=(\d+)\.(\d+)"', text, re.M)
    assert tuple(int(part) for part in floor.groups()) == install.MINIMUM_PYTHON


def test_the_readme_states_the_torch_floor_and_the_supported_slicers():
    readme = (REPO / "README.md").read_text()
    floor = install.TORCH_REQUIREMENT.split(">=")[1]
    assert f"PyTorch {floor} or newer" in readme
    assert (
        "3D Slicer **5.10 and later**" in readme
        and "Extensions Manager** (Slicer 5.8+)" not in readme
    )
