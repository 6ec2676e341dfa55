"""Installing what the analysis process needs into Slicer's Python, after asking the user.

Torch comes first, through the PyTorch extension's ``PyTorchUtils`` (it picks the build for the
computer's GPU and driver); then ``Resources/requirements.txt`` through Slicer's
``pip_ensure`` where the Slicer version has it, else ``slicer.util.pip_install``. Packages that
Slicer ships (numpy, SimpleITK, ...) are never replaced: they are pinned to their installed
versions in a constraints file given to pip, so pip installs around them or fails, never over
them.

Qt-free: asking the user, installing torch and running pip are injected callables, so the
decisions are tested without Slicer; ``forSlicer`` wires Slicer's own.
"""

from __future__ import annotations

import importlib.metadata
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

log = logging.getLogger("MedCNN.Install")

REQUIREMENTS_FILE = Path(__file__).resolve().parent.parent / "Resources" / "requirements.txt"
TORCH_REQUIREMENT = "torch>=2.4"
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
    """Installing failed or was declined; ``str(error)`` is one sentence for the panel."""


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
    if requirement.marker is not None and not requirement.marker.evaluate():
        return True
    version = installedVersion(requirement.name)
    return version is not None and requirement.specifier.contains(version, prereleases=True)


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
    """Checks and installs the analysis process's Python packages."""

    def __init__(
        self,
        confirm: Callable[[str], bool],
        installTorch: Callable[[str], None],
        pipEnsure: Callable[[list[Requirement], Path], None],
        requirementsFile: Path = REQUIREMENTS_FILE,
        log_: Callable[[str], None] | None = None,
    ) -> None:
        self.confirm = confirm
        self.installTorch = installTorch
        self.pipEnsure = pipEnsure
        self.requirementsFile = Path(requirementsFile)
        self.log = log_ or log.info

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
        got installed. Raises ``InstallError`` when declined or failed."""
        plan = self.plan()
        if plan.empty:
            return True
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
        if plan.torch is not None:
            self.log(f"Installing {plan.torch} through the PyTorch extension...")
            self.installTorch(str(plan.torch.specifier))
        if plan.packages:
            self.log(f"Installing {', '.join(str(r) for r in plan.packages)}...")
            with tempfile.TemporaryDirectory(prefix="MedCNN-install-") as folder:
                constraints = Path(folder) / "constraints.txt"
                constraints.write_text(self.constraintsText())
                self.pipEnsure(plan.packages, constraints)
        remaining = self.plan()
        if not remaining.empty:
            raise InstallError(
                f"Installing {remaining.describe()} did not succeed; see the Python console's "
                "log, then restart Slicer and try again."
            )
        return True

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
    def forSlicer(cls, confirm: Callable[[str], bool], log_: Callable[[str], None] | None = None):
        """The installer wired to Slicer: PyTorchUtils for torch, pip_ensure or pip_install."""
        return cls(confirm, slicerInstallTorch, slicerPipEnsure, log_=log_)


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
