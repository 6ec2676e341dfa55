"""The layout's promises: data flows one way through the subpackages, no module imports
another that imports it back, the engine never reaches into a front end or the benchmarks, and
a click loads neither MONAI nor the training code. The web front end (``medcnn.web``) is the
one exception to "no front end in the engine": it may import Slicer's MRML, VTK, trame and the
extension's library, and only the command line reaches it, inside ``medcnn web``.

Read from the source's import statements (all of them, including those inside functions and
under ``TYPE_CHECKING``), so a new import that breaks a rule fails here, not in a user's
Slicer.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src"

# Lower layers never import higher ones: a module may import its own layer and those below.
# One click end to end (``app.analysis``) sits below training, whose evaluation judges every
# nodule through exactly that path; the commands sit on top of both. A task package spans the
# layers: its analysis sits with the click's, its training with training, its commands on top.
LAYERS = (
    (
        "medcnn",
        "medcnn.errors",
        "medcnn.stages",
        "medcnn.volume",
        "medcnn.distributed",
        "medcnn.catalog",
        "medcnn.threads",
        "medcnn.tensors",
    ),
    ("medcnn.reading", "medcnn.phantom"),
    ("medcnn.nodule", "medcnn.xray"),
    ("medcnn.bundle", "medcnn.outputs"),
    ("medcnn.app.analysis", "medcnn.app.engine"),
    ("medcnn.training",),
    ("medcnn.app", "medcnn.__main__", "medcnn.web"),
)
# A task package's (``medcnn.<task>``) modules of these names sit in their peer's layer.
TASK_MODULE_PEERS = {
    "phantom": "medcnn.phantom",
    "analysis": "medcnn.app.analysis",
    "training": "medcnn.training",
    "commands": "medcnn.app",
}
TRAME = ("trame", "trame_server", "trame_client", "trame_vuetify", "trame_slicer")
FOREIGN = (
    *("slicer", "qt", "ctk", "vtk", "vtkmodules", "mrml", "benchmarks", "tests", "MedCNN"),
    *("MedCNNLib", "playwright", *TRAME),
)
# What the web front end may import of them: Slicer's scene and views, never Qt or the tests.
WEB = "medcnn.web"
WEB_MAY_IMPORT = ("slicer", "vtkmodules", "MedCNNLib", *TRAME)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in SOURCE.rglob("*.py")}


def imported(name: str) -> set[str]:
    """Every module the file imports, resolved to a module of ``medcnn`` where it is one."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in MODULES else base)
    return found


def layer_of(name: str) -> int:
    parts = name.split(".")
    peer = TASK_MODULE_PEERS.get(parts[2]) if len(parts) >= 3 else None
    if peer is not None and not (name == peer or name.startswith(peer + ".")):
        return layer_of(peer)
    best = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            matches = name == prefix or (prefix != "medcnn" and name.startswith(prefix + "."))
            if matches and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    if best is None:
        raise AssertionError(f"{name} is in no layer; add its package to LAYERS")
    return best[0]


GRAPH = {name: {m for m in imported(name) if m in MODULES} for name in MODULES}


def test_every_module_has_a_layer() -> None:
    for name in MODULES:
        layer_of(name)


def test_data_flows_one_way() -> None:
    upward = [
        f"{name} imports {target}"
        for name, targets in GRAPH.items()
        for target in targets
        if name != "medcnn" and target != "medcnn" and layer_of(target) > layer_of(name)
    ]
    assert upward == []


def test_no_import_circles() -> None:
    """Not even through ``TYPE_CHECKING`` or a function's own import."""
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(GRAPH[name]):
            if state.get(target) == 1:
                circles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert circles == []


def is_web(name: str) -> bool:
    return name == WEB or name.startswith(WEB + ".")


def test_the_engine_never_imports_a_front_end_or_the_benchmarks() -> None:
    reached = [
        f"{name} imports {target}"
        for name in MODULES
        for target in imported(name)
        if target.split(".")[0] in FOREIGN
        and not (is_web(name) and target.split(".")[0] in WEB_MAY_IMPORT)
    ]
    assert reached == []


def test_only_the_command_line_reaches_the_web_front_end_and_only_when_asked() -> None:
    """``medcnn.web`` is imported by ``medcnn.app.cli`` alone, inside a function (``medcnn
    web``), so no other command loads trame, MRML or VTK."""
    importers = sorted(
        name
        for name in MODULES
        if not is_web(name) and any(is_web(target) for target in imported(name))
    )
    assert importers == ["medcnn.app.cli"]
    tree = ast.parse(MODULES["medcnn.app.cli"].read_text())
    at_top = [
        node.module
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module and is_web(node.module)
    ] + [
        alias.name
        for node in tree.body
        if isinstance(node, ast.Import)
        for alias in node.names
        if is_web(alias.name)
    ]
    assert at_top == []
    code = (
        "import medcnn.app.cli\n"
        "medcnn.app.cli.build_parser()\n"
        "roots = ('trame', 'trame_slicer', 'slicer', 'vtk', 'vtkmodules', 'MedCNNLib')\n"
        "chosen = lambda m: m.split('.')[0] in roots\n"
    )
    assert modules_loaded_by(code, timeout=120) == "[]"


def test_a_click_imports_neither_monai_nor_training() -> None:
    """What a fresh process has loaded after analysing a point of the phantom."""
    code = (
        "import numpy as np\n"
        "from medcnn.app.analysis import Analyzer\n"
        "from medcnn.phantom import NODULE_CENTER_RAS, synthetic_chest\n"
        "Analyzer().analyze_volume(synthetic_chest(), np.asarray(NODULE_CENTER_RAS))\n"
        "roots = ('monai', 'itk', 'slicer', 'vtk', 'benchmarks')\n"
        "chosen = lambda m: m.split('.')[0] in roots or m.startswith('medcnn.training')\n"
    )
    assert modules_loaded_by(code, timeout=300) == "[]"


def modules_loaded_by(code: str, timeout: int) -> str:
    """The modules a fresh process has loaded after ``code``, those its ``chosen`` picks."""
    code += "import sys\nprint(sorted(m for m in sys.modules if chosen(m)))\n"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode:
        pytest.fail(done.stderr[-2000:])
    return done.stdout.strip().splitlines()[-1]
