"""The layering ARCHITECTURE.md draws, checked: an `ast` walk of every import in `core/`
(including those inside functions) finds no upward import, no import circle and no qgis/Qt."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Optional

CORE = Path(__file__).resolve().parents[1] / "core"
LAYERS = (
    "demo",
    "cli",
    "detect",
    "training",
    "reports",
    "runtime",
    "inference",
    "losses",
    "models",
    "data",
    "geo",
    "metrics",
    "options",
    "progress",
    "choices",
    "recipe",
    "types",
    "trunk_registry",
)
"""`kdmsi`'s folders and torch-free modules, top to bottom: each imports only those below it."""
QT_ROOTS = ("qgis", "PyQt5", "PyQt6", "sip", "PySide2", "PySide6")


def module_name(path: Path, root: Path) -> str:
    parts = ["kdmsi", *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path, root: Path) -> list[str]:
    """Every module name ``path`` imports (``from a import b`` gives ``a`` and ``a.b``)."""
    module = module_name(path, root)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            names += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return names


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the `kdmsi` modules it imports (names that are not modules are dropped, and
    so is a module's own package: ``from . import sibling`` loads the sibling, not a circle)."""
    paths = {module_name(p, root): p for p in root.rglob("*.py")}
    return {
        module: {
            name
            for name in imported_names(path, root)
            if name in paths and not (module == name or module.startswith(name + "."))
        }
        for module, path in paths.items()
    }


def layer_of(module: str) -> Optional[str]:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def upward_imports(root: Path) -> list[tuple[str, str]]:
    found = []
    for module, targets in import_graph(root).items():
        here = layer_of(module)
        for target in targets:
            there = layer_of(target)
            if here and there and there != here and LAYERS.index(there) < LAYERS.index(here):
                found.append((module, target))
    return sorted(found)


def qt_imports(root: Path) -> list[tuple[str, str]]:
    return sorted(
        (module_name(path, root), name)
        for path in root.rglob("*.py")
        for name in imported_names(path, root)
        if name.split(".")[0] in QT_ROOTS
    )


def import_circles(root: Path) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), or a module importing a
    package that imports it back counts as a circle too."""
    graph = import_graph(root)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def test_core_imports_only_downward():
    assert upward_imports(CORE) == []


def test_core_never_imports_qt_or_qgis():
    assert qt_imports(CORE) == []


def test_core_has_no_import_circle():
    assert import_circles(CORE) == []


def test_every_core_folder_has_a_layer():
    folders = {p.name for p in CORE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    modules = {p.stem for p in CORE.glob("*.py") if p.stem != "__init__"}
    assert folders | modules <= set(LAYERS)


def test_a_planted_upward_import_is_caught(tmp_path):
    """The checks fail on what they guard against: geo importing training, a circle."""
    root = tmp_path / "core"
    for folder in ("geo", "training"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "training" / "loop.py").write_text("from ..geo import tiles\n")
    (root / "geo" / "tiles.py").write_text(
        "def read():\n    from ..training.loop import x  # inside a function\n"
        "    from qgis.core import QgsRasterLayer\n"
    )
    assert upward_imports(root) == [("kdmsi.geo.tiles", "kdmsi.training.loop")]
    assert qt_imports(root) == [
        ("kdmsi.geo.tiles", "qgis.core"),
        ("kdmsi.geo.tiles", "qgis.core.QgsRasterLayer"),
    ]
    assert import_circles(root) == [["kdmsi.geo.tiles", "kdmsi.training.loop"]]
