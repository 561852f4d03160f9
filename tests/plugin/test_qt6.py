"""`supportsQt6=True` in metadata.txt, checked as far as it can be without a Qt6 QGIS (no Debian
suite ships one): every enum fully scoped, no Qt5-only API, and every Qt name the plugin uses
resolved against Qt6's own bindings (PyQt6 from the package index, `requirements-qt6.txt`), in
a separate process that never meets QGIS's PyQt5. QGIS's names are checked on QGIS 3.40 and 3.44
by `make test-qgis-lts`."""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "kdmsi_qgis"
QT6_PATH = ROOT / ".venv" / "qt6"
QGIS_MODULES = ("qgis.PyQt", "qgis.core", "qgis.gui")
QT5_ONLY = {
    r"\.exec_\(": "exec_() is gone in Qt6: call exec()",
    r"\b(PyQt5|PyQt6)\b(?!\.sip)": "import Qt through qgis.PyQt",
    r"QtWebKit": "QtWebKit is Qt5-only",
    r"\bQVariant\.[A-Z]": "QVariant's type enum is gone in Qt6: use QMetaType.Type",
    r"\bQRegExp\b": "QRegExp is gone in Qt6: use QRegularExpression",
    r"\bQDesktopWidget\b": "QDesktopWidget is gone in Qt6: use QScreen",
}


def plugin_files() -> list[Path]:
    return sorted(p for p in PLUGIN.rglob("*.py") if "libs" not in p.parts)


def imported_classes(tree: ast.AST) -> dict[str, tuple[str, str]]:
    """Name in the module -> (qgis module, class name), for every `from qgis... import X`."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(QGIS_MODULES):
            for alias in node.names:
                names[alias.asname or alias.name] = (node.module, alias.name)
    return names


def attribute_chains(tree: ast.AST, roots: dict) -> list[tuple[int, list[str]]]:
    """(line, [root, attr, attr...]) of every outermost dotted name starting at a root."""
    chains, inner = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            parts, current = [], node
            while isinstance(current, ast.Attribute):
                parts.append(current.attr)
                inner.add(id(current.value))
                current = current.value
            if isinstance(current, ast.Name) and current.id in roots:
                chains.append((node.lineno, [current.id, *reversed(parts)]))
    return chains


def test_every_enum_is_fully_scoped(qgis_app):
    """``QDialogButtonBox.Close`` works on Qt5 only; ``.StandardButton.Close`` on both."""
    unscoped = []
    for path in plugin_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        roots = imported_classes(tree)
        for line, chain in attribute_chains(tree, roots):
            module, name = roots[chain[0]]
            value = getattr(importlib.import_module(module), name, None)
            for attr in chain[1:]:
                owner, value = value, getattr(value, attr, None)
                member = isinstance(value, int) and type(value) not in (int, bool)
                if member and isinstance(owner, type) and type(value).__name__ != owner.__name__:
                    where = f"{path.relative_to(ROOT)}:{line}"
                    unscoped.append(f"{where}: {'.'.join(chain)} (scoped: {type(value).__name__})")
                    break
    assert unscoped == []


def test_no_qt5_only_api():
    found = [
        f"{path.relative_to(ROOT)}:{n}: {why}"
        for path in plugin_files()
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        for pattern, why in QT5_ONLY.items()
        if re.search(pattern, line.split("#")[0])
    ]
    assert found == []


def qt_names() -> dict[str, list[str]]:
    """'QtWidgets.QDialogButtonBox.StandardButton.Close' -> where the plugin uses it. An import
    in an ``except ImportError:`` is the Qt5 fallback of the one its ``try`` makes: not counted."""
    uses: dict[str, list[str]] = {}
    for path in plugin_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        fallbacks = {  # imports in `except ImportError:`, for the Qt5 side of a try
            id(n)
            for t in ast.walk(tree)
            if isinstance(t, ast.Try)
            for handler in t.handlers
            for n in ast.walk(handler)
        }
        roots = {
            name: (module.removeprefix("qgis.PyQt."), cls)
            for name, (module, cls) in imported_classes(tree).items()
            if module.startswith("qgis.PyQt.")
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("qgis.PyQt."):
                if id(node) not in fallbacks:
                    for alias in node.names:
                        qt_module = node.module.removeprefix("qgis.PyQt.")
                        uses.setdefault(f"{qt_module}.{alias.name}", []).append(str(path))
        for line, chain in attribute_chains(tree, roots):
            qt_module, cls = roots[chain[0]]
            dotted = ".".join([qt_module, cls, *chain[1:]])
            uses.setdefault(dotted, []).append(f"{path.relative_to(ROOT)}:{line}")
    return uses


RESOLVE = """
import importlib, json, sys
missing = []
for dotted in json.load(sys.stdin):
    module, *attrs = dotted.split(".")
    value = importlib.import_module("PyQt6." + module)
    for attr in attrs:
        if not hasattr(value, attr):
            missing.append(dotted)
            break
        value = getattr(value, attr)
print(json.dumps(missing))
"""


def test_every_qt_name_resolves_in_pyqt6():
    if not (QT6_PATH / "PyQt6").is_dir():
        pytest.skip("PyQt6 is not in .venv/qt6: run make setup")
    uses = qt_names()
    env = {**os.environ, "PYTHONPATH": str(QT6_PATH), "QT_QPA_PLATFORM": "offscreen"}
    probe = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(QT6_PATH)!r}); "
         "import PyQt6.QtCore"], capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    if probe.returncode != 0:  # .venv/qt6 was installed for another Python (make setup's)
        last = (probe.stderr.strip().splitlines() or [""])[-1]
        pytest.skip(f"PyQt6 in .venv/qt6 is made for another Python: {last}")
    out = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            f"import sys; sys.path.insert(0, {str(QT6_PATH)!r})\n{RESOLVE}",
        ],
        input=json.dumps(sorted(uses)),
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    missing = {name: uses[name] for name in json.loads(out.stdout)}
    assert missing == {}
    assert len(uses) > 30  # the dialog, its tabs, the Dependencies page: really walked


def test_metadata_claims_qt6():
    metadata = (ROOT / "metadata.txt").read_text(encoding="utf-8")
    assert re.search(r"^supportsQt6=True$", metadata, re.MULTILINE)
