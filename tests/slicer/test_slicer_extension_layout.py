"""The extension as Slicer's build and the Extensions Index see it, checked without Slicer:
every file the module needs is listed in CMake, the index entry and the module agree, the
resources are what they claim, and the logic modules stay free of Qt."""

from __future__ import annotations

import ast
import json
import re
import struct
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from MedCNNLib.InstallLogic import readRequirements
from slicer_test_support import EXTENSION, REPO

LIB = EXTENSION / "MedCNNLib"
QT_MODULES = {"qt", "ctk", "PythonQt", "qSlicerBaseQTCorePythonQt", "slicer.qSlicer"}


def cmake_commands(path: Path) -> list[tuple[str, list[str]]]:
    """``(command, arguments)`` of a CMake file; quoted arguments keep their text, comments
    (``#`` outside quotes) are dropped."""
    text = path.read_text()
    commands, i = [], 0
    while i < len(text):
        match = re.compile(r"\s*(#[^\n]*|([A-Za-z_]\w*)\s*\()").match(text, i)
        if not match:
            i += 1
            continue
        i = match.end()
        if match.group(2) is None:
            continue
        args, depth, token, quoted = [], 1, "", False
        while depth:
            char = text[i]
            i += 1
            if quoted:
                if char == '"':
                    quoted = False
                    args.append(token)
                    token = ""
                else:
                    token += char
            elif char == '"':
                quoted = True
            elif char == "#":
                i = text.index("\n", i)
            elif char in "()":
                depth += 1 if char == "(" else -1
                if depth == 0 or token:
                    if token:
                        args.append(token)
                    token = ""
            elif char.isspace():
                if token:
                    args.append(token)
                token = ""
            else:
                token += char
        commands.append((match.group(2).lower(), args))
    return commands


def cmake_variables(path: Path) -> dict[str, list[str]]:
    return {args[0]: args[1:] for name, args in cmake_commands(path) if name == "set"}


@pytest.fixture(scope="module")
def root_cmake():
    return cmake_variables(REPO / "CMakeLists.txt"), cmake_commands(REPO / "CMakeLists.txt")


@pytest.fixture(scope="module")
def module_cmake():
    variables = cmake_variables(EXTENSION / "CMakeLists.txt")
    name = variables["MODULE_NAME"][0]

    def expand(values):
        return [value.replace("${MODULE_NAME}", name) for value in values]

    return (
        name,
        expand(variables["MODULE_PYTHON_SCRIPTS"]),
        expand(variables["MODULE_PYTHON_RESOURCES"]),
    )


@pytest.fixture(scope="module")
def module_metadata() -> dict:
    """The values MedCNN.py gives ``self.parent.<field>``, read from its syntax tree."""
    tree = ast.parse((EXTENSION / "MedCNN.py").read_text())
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute):
            target = node.targets[0]
            if ast.unparse(target.value) == "self.parent":
                found[target.attr] = literal_text(node.value)
    return found


def literal_text(node: ast.AST):
    """Literals through the ``_()``/``translate()`` wrappers Slicer uses for translation."""
    if isinstance(node, ast.Call):
        return literal_text(node.args[-1])
    if isinstance(node, ast.List):
        return [literal_text(item) for item in node.elts]
    return ast.literal_eval(node)


def test_every_script_and_resource_is_listed_and_exists(module_cmake):
    name, scripts, resources = module_cmake
    assert name == "MedCNN"
    on_disk_scripts = {
        p.relative_to(EXTENSION).as_posix()
        for p in EXTENSION.rglob("*.py")
        if "__pycache__" not in p.parts and "Resources" not in p.parts
    }
    on_disk_resources = {
        p.relative_to(EXTENSION).as_posix()
        for p in (EXTENSION / "Resources").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert set(scripts) == on_disk_scripts
    assert set(resources) == on_disk_resources
    for listed in (*scripts, *resources):
        assert (EXTENSION / listed).is_file(), listed


def test_module_cmake_builds_tests_and_ships_engine_and_bundle():
    """What it ships beside the module is the wheel's files (tests/test_packaging.py builds
    both), listed by ShippedFiles.cmake."""
    commands = cmake_commands(EXTENSION / "CMakeLists.txt")
    build = next(args for name, args in commands if name == "slicermacrobuildscriptedmodule")
    assert "WITH_GENERIC_TESTS" in build
    assert any(name == "slicer_add_python_unittest" for name, _ in commands)
    assert ("include", ["${CMAKE_CURRENT_SOURCE_DIR}/ShippedFiles.cmake"]) in commands
    assert (EXTENSION / "ShippedFiles.cmake").is_file()


def test_root_cmake_is_an_extension_top_level(root_cmake):
    variables, commands = root_cmake
    for key in (
        "EXTENSION_HOMEPAGE",
        "EXTENSION_CATEGORY",
        "EXTENSION_CONTRIBUTORS",
        "EXTENSION_DESCRIPTION",
        "EXTENSION_ICONURL",
        "EXTENSION_SCREENSHOTURLS",
        "EXTENSION_DEPENDS",
    ):
        assert variables.get(key) and variables[key][0].strip(), key
    names = [name for name, _ in commands]
    assert ("project", ["MedCNN"]) in commands
    assert ("find_package", ["Slicer", "REQUIRED"]) in commands
    assert ("add_subdirectory", ["MedCNNExtension/MedCNN"]) in commands
    assert names.count("include") >= 3  # Slicer_USE_FILE, GENERATE_CONFIG, CPACK
    assert "not for clinical use" in variables["EXTENSION_DESCRIPTION"][0]


def test_index_entry_agrees_with_cmake_and_module(root_cmake, module_metadata):
    variables, _ = root_cmake
    entry = json.loads((REPO / "MedCNN.json").read_text())
    assert entry["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/")
    assert set(entry) <= {
        "$schema",
        "category",
        "scm_url",
        "scm_revision",
        "scm_type",
        "build_dependencies",
        "dicom_support_rule",
        "build_subdirectory",
        "enabled",
        "tier",
    }
    assert entry["category"] == variables["EXTENSION_CATEGORY"][0]
    assert entry["category"] == module_metadata["categories"][0]
    assert entry["build_dependencies"] == variables["EXTENSION_DEPENDS"][0].split()
    assert entry["build_dependencies"] == ["PyTorch"]
    assert entry["build_subdirectory"] == "."
    assert variables["EXTENSION_HOMEPAGE"][0].startswith(entry["scm_url"])
    assert variables["EXTENSION_CONTRIBUTORS"][0] == ", ".join(module_metadata["contributors"])
    assert module_metadata["title"] == "MedCNN" == Path("MedCNN.json").stem


# Some of the categories the Extensions Index accepts (its scripts/check_description_files.py,
# ACCEPTED_EXTENSION_CATEGORIES); an unknown one fails its check.
ACCEPTED_CATEGORIES = {"Analysis", "Quantification", "Segmentation", "Informatics"}


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings: lower case, punctuation but
    hyphens and underscores dropped, spaces as hyphens."""
    anchors = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", markdown, re.M):
        text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
        anchors.add(text.replace(" ", "-"))
    return anchors


def test_catalog_category_is_accepted_and_the_homepage_anchor_exists(root_cmake, module_metadata):
    variables, _ = root_cmake
    assert variables["EXTENSION_CATEGORY"][0] in ACCEPTED_CATEGORIES
    homepage = variables["EXTENSION_HOMEPAGE"][0]
    page, _, anchor = homepage.partition("#")
    assert page == "https://github.com/medcnn/medcnn" and anchor
    assert anchor in github_anchors((REPO / "README.md").read_text()), homepage
    assert f'href="{homepage}"' in module_metadata["helpText"]  # the module's link, the same


def test_icon_and_screenshot_urls_point_at_files_in_the_repository(root_cmake):
    variables, _ = root_cmake
    prefix = "https://raw.githubusercontent.com/medcnn/medcnn/main/"
    for key in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        for url in variables[key][0].split():
            assert url.startswith(prefix), url
            assert (REPO / url[len(prefix) :]).is_file(), f"{key}: {url} is not in the repository"


def test_module_help_says_not_for_clinical_use_and_credits_lidc(module_metadata):
    assert "not for clinical use" in module_metadata["helpText"]
    assert "LIDC-IDRI" in module_metadata["acknowledgementText"]
    assert "TCIA.2015.LO9QL9SX" in module_metadata["acknowledgementText"]


def test_icon_is_a_128_pixel_png():
    data = (EXTENSION / "Resources" / "Icons" / "MedCNN.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (128, 128)


def test_ui_file_defines_every_widget_the_panel_uses():
    root = ElementTree.parse(EXTENSION / "Resources" / "UI" / "MedCNN.ui").getroot()
    names = {widget.get("name") for widget in root.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", (LIB / "Widget.py").read_text()))
    assert used and used <= names
    declared = {custom.findtext("class") for custom in root.iter("customwidget")}
    classes = {widget.get("class") for widget in root.iter("widget")}
    assert {c for c in classes if not c.startswith("Q")} <= declared
    assert root.find("widget").get("class") == "qMRMLWidget"


def imported_modules(path: Path, skip_type_checking: bool = True) -> set[str]:
    tree = ast.parse(path.read_text())
    skipped = set()
    if skip_type_checking:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
                skipped |= {id(child) for child in ast.walk(node)}
    modules = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules.add(node.module)
    return modules


@pytest.mark.parametrize(
    "name",
    [
        "__init__",
        "AnalysisLogic",
        "TaskLogic",
        "ResultImport",
        "DicomResults",
        "Display",
        "Runner",
        "InstallLogic",
        "Parameters",
    ],
)
def test_logic_modules_import_no_qt(name):
    modules = imported_modules(LIB / f"{name}.py", skip_type_checking=False)
    assert not {m for m in modules if m in QT_MODULES or m.split(".")[0] in QT_MODULES}


def test_module_file_imports_qt_widgets_only_inside_the_widget():
    tree = ast.parse((EXTENSION / "MedCNN.py").read_text())
    top_level = imported_modules(EXTENSION / "MedCNN.py")
    assert not {m for m in top_level if m.split(".")[0] in QT_MODULES}
    assert "MedCNNLib.Widget" not in {
        node.module for node in tree.body if isinstance(node, ast.ImportFrom)
    }
    widget_class = next(
        node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "MedCNNWidget"
    )
    assert "MedCNNLib.Widget" in ast.unparse(widget_class)


def test_requirements_are_floors_that_admit_pyprojects_pins():
    """The extension asks for floors (a newer version another extension installed is kept),
    each admitting the engine's own pin, and never for MONAI, which a click does not import."""
    text = (REPO / "pyproject.toml").read_text()
    dependencies = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
    pins = {
        name.lower(): version.replace("*", "0")
        for name, version in re.findall(r'"([\w.-]+)(?:\[[^\]]*\])?==([^",;]+)"', dependencies)
    }
    requirements = readRequirements()
    assert "monai" not in {requirement.name.lower() for requirement in requirements}
    for requirement in requirements:
        assert [spec.operator for spec in requirement.specifier] == [">="], requirement
        assert requirement.name.lower() in pins, requirement
        assert requirement.specifier.contains(pins[requirement.name.lower()]), requirement


def test_license_is_apache_2_with_the_project_copyright():
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "Copyright 2026 MedCNN contributors" in text


def test_the_extension_names_only_the_engines_failure_kinds_and_stages():
    """Exit codes and stage names are the engine's (its worker's hello states them): the
    extension names failure kinds (``AnalysisError(message, "not_ct")``, ``exitCode("...")``)
    and never writes an exit code or an engine stage as a literal."""
    from medcnn.errors import EXIT_CODES_BY_NAME
    from medcnn.stages import STAGES

    kinds, literals = set(), []
    for path in sorted(LIB.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func).rsplit(".", 1)[-1]
                kind = {"AnalysisError": 1, "exitCode": 0}.get(name)
                if kind is not None and len(node.args) > kind:
                    if isinstance(node.args[kind], ast.Constant):
                        kinds.add(node.args[kind].value)
            # a stage given or compared as a literal ("heatmap" is also a result role: those stay)
            staged = (isinstance(node, ast.keyword) and node.arg == "stage") or (
                isinstance(node, ast.Compare) and "stage" in ast.unparse(node)
            )
            for child in ast.walk(node) if staged else ():
                if isinstance(child, ast.Constant) and child.value in {s.name for s in STAGES}:
                    literals.append(f"{path.name}:{child.lineno} {child.value!r}")
            if isinstance(node, ast.keyword) and node.arg == "exitCode":
                if isinstance(node.value, ast.Constant):
                    literals.append(f"{path.name}:{node.value.lineno} exitCode={node.value.value}")
    assert kinds and kinds <= set(EXIT_CODES_BY_NAME)
    assert literals == []
