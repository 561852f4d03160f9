"""What the Dependencies page and `--check` show, and the text of *Copy diagnostics*."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from .catalog import PACKAGES, PROTECTED, Package
from .environment import Environment


@dataclass(frozen=True)
class Row:
    """One package as the page lists it."""

    package: Package
    version: str  # "" when missing
    where: str  # "plugin folder", "QGIS's Python" or ""
    state: str  # "ok", "missing", "optional, missing"


def _inside(location: Optional[str], folder: Path) -> bool:
    if not location:
        return False
    try:
        Path(location).resolve().relative_to(Path(folder).resolve())
        return True
    except ValueError:
        return False


def rows(environment: Environment, deps: Path, packages: Sequence[Package] = PACKAGES) -> List[Row]:
    """One row per catalogue package, in catalogue order."""
    found = []
    for package in packages:
        version = environment.version_of(package.dist) or ""
        if not version:
            state = "optional, missing" if package.optional else "missing"
            found.append(Row(package, "", "", state))
            continue
        location = environment.location_of(package.dist)
        where = "plugin folder" if _inside(location, deps) else "QGIS's Python"
        found.append(Row(package, version, where, "ok"))
    return found


def ready(found: Sequence[Row]) -> bool:
    """True when every required package is there."""
    return all(row.state != "missing" for row in found)


def table(found: Sequence[Row]) -> str:
    """Plain-text table of `rows` (the headless `--check`)."""
    lines = [f"{'package':34} {'version':14} {'where':15} needed for"]
    for row in found:
        version = row.version or row.state
        lines.append(f"{row.package.dist:34} {version:14} {row.where:15} {row.package.needed_for}")
    return "\n".join(lines)


def diagnostics(
    environment: Optional[Environment],
    deps: Path,
    gpu: Optional[str],
    log_file: Path,
    qgis_version: str = "",
    problem: str = "",
    log_lines: int = 60,
) -> str:
    """Everything a bug report about installing needs, as plain text."""
    lines = ["KD-MSI plugin dependencies: diagnostics"]
    if qgis_version:
        lines.append(f"QGIS: {qgis_version}")
    lines.append(f"OS: {platform.platform()} ({platform.machine()})")
    lines.append(f"plugin folder: {deps} ({'exists' if deps.exists() else 'absent'})")
    lines.append(f"GPU: {gpu or 'none found by nvidia-smi'}")
    if environment is None:
        lines.append(f"QGIS's Python could not be asked: {problem}")
    else:
        lines.append(f"Python: {environment.version} at {environment.python}")
        lines.append(f"Python platform: {environment.platform}")
        lines.append(f"torch build: {environment.torch_build() or 'no torch'}")
        lines.append(f"pip: {environment.version_of('pip') or 'missing'}")
        for name in PROTECTED:
            if environment.version_of(name):
                lines.append(f"QGIS's {name}: {environment.version_of(name)}")
        lines.append("")
        for row in rows(environment, deps):
            place = environment.location_of(row.package.dist) or ""
            lines.append(f"{row.package.dist}: {row.version or row.state} {place}".rstrip())
    lines.append("")
    if log_file.is_file():
        tail = log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-log_lines:]
        lines.append(f"last pip log ({log_file}, last {len(tail)} lines):")
        lines += tail
    else:
        lines.append("no pip log yet")
    return "\n".join(lines)
