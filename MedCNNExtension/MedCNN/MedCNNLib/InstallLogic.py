"""Installing what the analysis process needs into Slicer's Python, after asking the user.

First, before anything is asked or downloaded, whether this Slicer can run MedCNN at all
(``unsupportedReason``): its Python must be one the engine supports (Slicer 5.8 ships Python
3.9; 5.10 and later 3.12). Every platform Slicer 5.10 is built for can get a torch MedCNN runs
on: Windows and Linux the current one, macOS (an Intel build, run by Rosetta on Apple silicon)
torch 2.2.2, which MedCNN runs on beside Slicer's NumPy 2 (``medcnn.tensors``). Then torch comes
first, through the PyTorch extension's ``PyTorchUtils`` (it picks the build for the computer's
GPU and driver); then ``Resources/requirements.txt`` through Slicer's ``pip_ensure`` where the
Slicer version has it, else ``slicer.util.pip_install``.

Packages that Slicer ships (numpy, SimpleITK, ...) are never replaced: they are pinned to their
installed versions in a constraints file given to pip, so pip installs around them or fails,
never over them.

Qt-free: asking the user, installing torch and running pip are injected callables, so the
decisions are tested without Slicer; ``forSlicer`` wires Slicer's own.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion

log = logging.getLogger("MedCNN.Install")

REQUIREMENTS_FILE = Path(__file__).resolve().parent.parent / "Resources" / "requirements.txt"
# The engine's floor, ``requires-python`` in pyproject.toml (tests hold the two equal): Slicer
# 5.8's Python 3.9 is refused before any download; 5.10 and later ship 3.12.
MINIMUM_PYTHON = (3, 10)
# The oldest torch a click is proven with: CI's Slicer-like environment (Python 3.12, NumPy 2)
# runs real clicks on it (tests/slicer/test_slicer_python_environment.py). 2.2.2 is the newest
# torch for Slicer's macOS build (x86_64), so this floor is what lets MedCNN run there. An older
# torch may work; it is not claimed, so an older one (another extension's) is upgraded, after
# asking.
TORCH_REQUIREMENT = "torch>=2.2.2"
SLICER_DOWNLOAD = "https://download.slicer.org"
# Shipped with Slicer and used as they are; replacing them breaks Slicer (SimpleITK has
# Slicer-specific IO, numpy is compiled against by VTK and ITK).
SHIPPED_BY_SLICER = (
    "numpy",
    "scipy",
    "SimpleITK",
    "pydicom",
    "vtk",
    "requests",
    "packaging",
    "pip",
    "setuptools",
    "wheel",
    "Pillow",
)


class InstallError(Exception):
    """Installing failed, was declined or cannot be done here; ``str(error)`` is one sentence
    for the panel."""


def unsupportedReason(python: tuple[int, ...] | None = None) -> str | None:
    """One sentence saying why MedCNN cannot run in this Slicer and what to use instead, or None
    where it can. Asked before any question or download (``python`` defaults to this one)."""
    python = tuple(sys.version_info[:2]) if python is None else tuple(python[:2])
    if python < MINIMUM_PYTHON:
        needed = ".".join(str(part) for part in MINIMUM_PYTHON)
        return (
            f"MedCNN needs 3D Slicer 5.10 or newer: this Slicer runs Python "
            f"{'.'.join(str(part) for part in python)} and MedCNN needs Python {needed} or "
            f"newer; install the current 3D Slicer from {SLICER_DOWNLOAD} (nothing was "
            "downloaded)."
        )
    return None


def readRequirements(path: Path = REQUIREMENTS_FILE) -> list[Requirement]:
    requirements = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirements.append(Requirement(line))
    return requirements


def installedVersion(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def isSatisfied(requirement: Requirement) -> bool:
    """Installed in a version the requirement allows; a version that is not PEP 440 (a local
    build's) counts as not satisfying it, never as an error."""
    if requirement.marker is not None and not requirement.marker.evaluate():
        return True
    version = installedVersion(requirement.name)
    if version is None:
        return False
    try:
        return requirement.specifier.contains(version, prereleases=True)
    except InvalidVersion:
        return False


@dataclass
class InstallPlan:
    """What is missing, and what will be used as Slicer ships it."""

    torch: Requirement | None = None
    packages: list[Requirement] = field(default_factory=list)
    keptAsShipped: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.torch is None and not self.packages

    def describe(self) -> str:
        names = ([str(self.torch) + " (through the PyTorch extension)"] if self.torch else []) + [
            str(requirement) for requirement in self.packages
        ]
        return ", ".join(names)


class InstallLogic:
    """Checks and installs the analysis process's Python packages.

    ``busy`` wraps the download and install only (the panel's busy cursor), never the question;
    ``torchLoaded`` says whether this process has imported torch (another module may have), in
    which case a torch that must change asks for a restart instead of failing half-way (on
    Windows its files are in use). One install at a time: ``ensure`` refuses while one runs."""

    def __init__(
        self,
        confirm: Callable[[str], bool],
        installTorch: Callable[[str], None],
        pipEnsure: Callable[[list[Requirement], Path], None],
        requirementsFile: Path = REQUIREMENTS_FILE,
        log_: Callable[[str], None] | None = None,
        busy: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
        torchLoaded: Callable[[], bool] = lambda: "torch" in sys.modules,
    ) -> None:
        self.confirm = confirm
        self.installTorch = installTorch
        self.pipEnsure = pipEnsure
        self.requirementsFile = Path(requirementsFile)
        self.log = log_ or log.info
        self.busy = busy
        self.torchLoaded = torchLoaded
        self.installing = False

    def plan(self) -> InstallPlan:
        plan = InstallPlan()
        torch = Requirement(TORCH_REQUIREMENT)
        if not isSatisfied(torch):
            plan.torch = torch
        shipped = {canonicalize_name(name) for name in SHIPPED_BY_SLICER}
        for requirement in readRequirements(self.requirementsFile):
            if canonicalize_name(requirement.name) in shipped:
                plan.keptAsShipped.append(requirement.name)
            elif canonicalize_name(requirement.name) == "torch":
                continue
            elif not isSatisfied(requirement):
                plan.packages.append(requirement)
        return plan

    def ensure(self) -> bool:
        """Install what is missing after the user agreed; True when nothing was missing or all
        got installed. Raises ``InstallError`` (one sentence) when this Slicer cannot run
        MedCNN, when declined, when an install already runs, when a loaded torch must change
        and whenever installing fails, whatever the installer raised."""
        if self.installing:
            raise InstallError(
                "MedCNN is already installing its Python packages; wait until it has finished."
            )
        reason = unsupportedReason()
        if reason is not None:
            raise InstallError(reason)
        plan = self.plan()
        if plan.empty:
            return True
        if plan.torch is not None and self.torchLoaded():
            raise InstallError(
                f"MedCNN needs {plan.torch} but PyTorch {installedVersion('torch')} is already "
                "loaded in this Slicer session (by another module) and cannot be replaced while "
                "it runs; restart Slicer and press Analyze in MedCNN before using other modules "
                "that use PyTorch."
            )
        question = (
            "MedCNN needs these Python packages in Slicer's Python environment: "
            f"{plan.describe()}. They are downloaded from the Python Package Index, which can "
            "take several minutes (PyTorch alone is large). Install them now?"
        )
        if not self.confirm(question):
            raise InstallError(
                "MedCNN cannot analyse without its Python packages; press Analyze again to "
                "install them."
            )
        self.installing = True
        try:
            with self.busy():
                self.install(plan)
        except InstallError:
            raise
        except Exception as error:  # pip's CalledProcessError, PyTorchUtils' own, anything
            log.exception("installing MedCNN's Python packages failed")
            raise InstallError(
                f"Installing {plan.describe()} failed ({failureText(error)}); check the "
                "internet connection and the Python console's log, then press Analyze to try "
                "again."
            ) from error
        finally:
            self.installing = False
        remaining = self.plan()
        if not remaining.empty:
            raise InstallError(
                f"Installing {remaining.describe()} did not succeed; see the Python console's "
                "log, then restart Slicer and try again."
            )
        return True

    def install(self, plan: InstallPlan) -> None:
        """Torch through the PyTorch extension, then the rest through pip, Slicer's own
        packages (and the torch just installed) pinned."""
        if plan.torch is not None:
            self.log(f"Installing {plan.torch} through the PyTorch extension...")
            self.installTorch(str(plan.torch.specifier))
        if plan.packages:
            self.log(f"Installing {', '.join(str(r) for r in plan.packages)}...")
            with tempfile.TemporaryDirectory(prefix="MedCNN-install-") as folder:
                constraints = Path(folder) / "constraints.txt"
                constraints.write_text(self.constraintsText())
                self.pipEnsure(plan.packages, constraints)

    @staticmethod
    def constraintsText() -> str:
        """Pins for every package Slicer ships (and the installed torch): pip keeps them."""
        lines = []
        for name in (*SHIPPED_BY_SLICER, "torch"):
            version = installedVersion(name)
            if version is not None:
                lines.append(f"{name}=={version}")
        return "\n".join(lines) + "\n"

    @classmethod
    def forSlicer(
        cls,
        confirm: Callable[[str], bool],
        log_: Callable[[str], None] | None = None,
        busy: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> InstallLogic:
        """The installer wired to Slicer: PyTorchUtils for torch, pip_ensure or pip_install."""
        return cls(confirm, slicerInstallTorch, slicerPipEnsure, log_=log_, busy=busy)


def failureText(error: BaseException) -> str:
    """A failure in a few words for the panel's sentence: a command's exit status (pip's
    ``CalledProcessError`` names its whole command line), else the error's first line."""
    returncode = getattr(error, "returncode", None)
    if returncode is not None:
        return f"the installer exited with status {returncode}"
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def slicerInstallTorch(versionSpecifier: str) -> None:
    try:
        import PyTorchUtils
    except ImportError as error:
        raise InstallError(
            "The PyTorch extension is missing; install it from the Extensions Manager (MedCNN "
            "depends on it), restart Slicer and try again."
        ) from error
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
        askConfirmation=False, torchVersionRequirement=versionSpecifier
    )
    if torch is None:
        raise InstallError("PyTorch could not be installed; see the Python console's log.")


def slicerPipEnsure(requirements: list[Requirement], constraints: Path) -> None:
    """``pip_ensure`` (Slicer >= 5.11: ``slicer.packaging``, earlier ``slicer.pydeps``), else
    ``slicer.util.pip_install`` with the same constraints file."""
    import slicer

    ensure = None
    for moduleName in ("slicer.packaging", "slicer.pydeps"):
        try:
            module = importlib.import_module(moduleName)
        except ImportError:
            continue
        ensure = getattr(module, "pip_ensure", None)
        if ensure is not None:
            break
    if ensure is not None:
        try:
            ensure(
                requirements,
                constraints=str(constraints),
                prompt_install=False,
                requester="MedCNN",
            )
            return
        except TypeError:
            log.info("this Slicer's pip_ensure takes other arguments; using pip_install")
    for requirement in requirements:
        slicer.util.pip_install([str(requirement), "-c", str(constraints)])
