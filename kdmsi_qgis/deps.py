"""Dependency checks and the plugin's only `sys.path` edit.

Nothing here imports torch: `importlib.util.find_spec` only looks for the packages, so QGIS
starts quickly and never crashes at plugin load when they are missing. What is needed comes
from `kdmsi_qgis.install.catalog`; the Dependencies page installs it.

`add_plugin_paths` puts two folders on `sys.path`, once:
* the plugin's package folder in the QGIS profile (`kdmsi_qgis.install.location`), *first*, so
  the versions the installer resolved and checked are the ones imported. It never holds numpy,
  GDAL or PyQt (the installer refuses them), so QGIS's own are never shadowed;
* `libs/` inside the plugin (where a packaged plugin bundles the pure-Python `kdmsi`), *last*,
  so an installed kdmsi (a dev checkout) wins.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import List, Optional

from .install.catalog import PACKAGES, required
from .install.location import current_profile, deps_dir

LIBS_DIR = Path(__file__).resolve().parent / "libs"
PLUGINS_DIR = Path(__file__).resolve().parent.parent


def plugin_deps_dir() -> Path:
    """The plugin's package folder for this Python in the running QGIS profile."""
    return deps_dir(current_profile())


def add_plugin_paths() -> Optional[Path]:
    """Put the package folder first and `libs/` last on `sys.path`; idempotent.

    The package folder goes on the path even before it exists: an install made later in this
    session is then importable without restarting QGIS (`importlib.invalidate_caches`).
    """
    folder = str(plugin_deps_dir())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    if LIBS_DIR.is_dir() and str(LIBS_DIR) not in sys.path:
        sys.path.append(str(LIBS_DIR))
    return Path(folder)


add_plugin_paths()


def _numpy_problem() -> Optional[str]:
    """Why the numpy that imports here is unusable, or None. QGIS 3.22 (Debian 12) runs numpy
    1.x, QGIS 3.40 and later numpy 2.x: either is right as long as it is the one QGIS's GDAL
    was built against, which GDAL's numpy bridge tells by importing (a numpy of the other
    major, installed over QGIS's, makes it fail)."""
    try:
        import numpy
    except ImportError:
        return "numpy"
    try:
        from osgeo import gdal_array  # noqa: F401 - compiled against QGIS's numpy
    except ImportError:
        return (
            f"the numpy QGIS was built with (numpy {numpy.__version__} shadows it and GDAL "
            "cannot use it)"
        )
    return None


def missing_dependencies() -> List[str]:
    """Human-readable list of what is missing or unusable; [] when everything is in place."""
    importlib.invalidate_caches()  # sees what the Dependencies page installed a moment ago
    missing = []
    for name in [p.module for p in required(PACKAGES)] + ["kdmsi"]:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    problem = _numpy_problem()
    if problem:
        missing.append(problem)
    return missing


def qgis_python() -> str:
    """Path of the Python interpreter QGIS runs, to run pip with.

    Inside QGIS `sys.executable` is not reliable: on Windows and macOS it is the QGIS binary,
    and on Linux it may be whatever `python3` comes first on PATH (a pyenv shim, a venv),
    not the interpreter QGIS embeds. That interpreter lives under `sys.exec_prefix`
    (OSGeo4W: `apps/Python3x/python.exe`; QGIS.app: `.../Python.framework/Versions/3.x/bin/
    python3`; Debian: `/usr/bin/python3.11`).
    """
    prefix = Path(sys.exec_prefix)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (
        prefix / "python.exe",
        prefix / "python3.exe",
        prefix / "bin" / f"python{version}",
        prefix / "bin" / "python3",
        prefix / "bin" / "python",
    ):
        if candidate.is_file():
            return str(candidate)
    exe = sys.executable or ""
    if Path(exe).name.lower().startswith("python"):
        return exe
    return "python3" if os.name != "nt" else "python"


def _quote(path: str) -> str:
    return f'"{path}"' if " " in path else path


def install_hint() -> str:
    """One sentence naming what is missing and where to install it from."""
    missing = missing_dependencies()
    what = ", ".join(missing) if missing else "nothing"
    hint = (
        f"KD-MSI needs packages that QGIS's Python lacks ({what}). Open Raster > KD-MSI "
        "Change Detection > Dependencies… and press Install (they go into "
        f"{plugin_deps_dir()}; QGIS's own packages are not touched), or, without QGIS: "
        f"cd {_quote(str(PLUGINS_DIR))} && {_quote(qgis_python())} -m kdmsi_qgis.install "
        "--install"
    )
    if "kdmsi" in missing:
        hint += (
            ". The kdmsi library was not found either: reinstall the plugin from a release zip "
            "(it bundles kdmsi in libs/)"
        )
    return hint + "."
