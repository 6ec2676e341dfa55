"""What pyproject.toml cannot say: the model bundles as package data, and a README whose
pictures and links work where the package is read outside the repository (a package index).

The bundles stay in ``monai_bundle/`` (their one copy); the wheel installs them as
``medcnn/monai_bundle/<model>/``, where ``medcnn.catalog`` finds them, and
``monai_bundle/shipped_files.txt`` says which of their files ship (the Slicer extension's
build reads the same list). The extension's logic (``MedCNNLib``) ships too, for
``medcnn web``. The repository's address is the Slicer catalog entry's (``MedCNN.json``), so
the package and the extension name one place.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
BUNDLES = "monai_bundle"


def shipped_bundle_files() -> list[str]:
    """The globs of ``shipped_files.txt``, for every bundle folder."""
    lines = (ROOT / BUNDLES / "shipped_files.txt").read_text(encoding="utf-8").splitlines()
    return [f"*/{line.strip()}" for line in lines if line.strip() and not line.startswith("#")]


def repository() -> tuple[str, str]:
    """The repository's web address and branch, from the Slicer catalog entry."""
    entry = json.loads((ROOT / "MedCNN.json").read_text(encoding="utf-8"))
    return entry["scm_url"].removesuffix(".git"), entry["scm_revision"]


def absolute_links(markdown: str, url: str, revision: str) -> str:
    """Relative pictures point at the repository's raw files, relative links at its pages;
    absolute addresses and anchors stay."""
    raw = f"{url.replace('https://github.com/', 'https://raw.githubusercontent.com/')}/{revision}/"
    page = f"{url}/blob/{revision}/"

    def absolute(match: re.Match) -> str:
        bang, text, target = match.groups()
        if re.match(r"[a-z][a-z0-9+.-]*:|#", target):
            return match[0]
        return f"{bang}[{text}]({raw if bang else page}{target})"

    return re.sub(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)", absolute, markdown)


URL, REVISION = repository()
README = (ROOT / "README.md").read_text(encoding="utf-8")

# The 3D Slicer extension's Qt-free logic, which the web front end (medcnn.web) shares with the
# panel: in the package as medcnn/_extension/MedCNNLib/, where medcnn.web.setup finds it.
EXTENSION_LOGIC = "medcnn._extension.MedCNNLib"

setup(
    packages=[*find_packages("src"), f"medcnn.{BUNDLES}", EXTENSION_LOGIC],
    package_dir={
        "": "src",
        f"medcnn.{BUNDLES}": BUNDLES,
        EXTENSION_LOGIC: "MedCNNExtension/MedCNN/MedCNNLib",
    },
    include_package_data=False,  # exactly the files below, whatever else the sdist holds
    package_data={
        "medcnn": ["schemas/*.json"],  # result.json's schema (medcnn.outputs.result)
        f"medcnn.{BUNDLES}": shipped_bundle_files(),
    },
    long_description=absolute_links(README, URL, REVISION),
    long_description_content_type="text/markdown",
    project_urls={
        "Homepage": URL,
        "Documentation": f"{URL}#readme",
        "Source": URL,
        "Issues": f"{URL}/issues",
    },
)
