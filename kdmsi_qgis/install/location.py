"""Where the plugin keeps the packages it installs: a folder of its own in the QGIS profile.

`<profile>/kdmsi_qgis/python3.11/` holds the packages for Python 3.11 (one folder per Python
version, since compiled wheels only load in the Python they were built for). QGIS's own
site-packages are never written. `kdmsi_qgis.deps.add_plugin_paths` puts this folder on
`sys.path`; the headless installer and the import check use the same function below.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional, Tuple

OWN_FOLDER = "kdmsi_qgis"


def python_tag(version: Optional[Tuple[int, int]] = None) -> str:
    major, minor = version or sys.version_info[:2]
    return f"python{major}.{minor}"


def deps_dir(profile: Path, version: Optional[Tuple[int, int]] = None) -> Path:
    """The package folder for `version` (default: this Python) in a QGIS profile folder."""
    return Path(profile) / OWN_FOLDER / python_tag(version)


def pip_log(deps: Path) -> Path:
    """The last install's pip log, beside the package folder (kept for diagnostics)."""
    return deps.with_name(f"pip-{deps.name}.log")


def default_profiles_root() -> Path:
    """QGIS's profiles folder as QGIS itself picks it: `QGIS_CUSTOM_CONFIG_PATH`, else per OS."""
    custom = os.environ.get("QGIS_CUSTOM_CONFIG_PATH")
    if custom:
        return Path(custom) / "profiles"
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA", home / "AppData" / "Roaming"))
        return base / "QGIS" / "QGIS3" / "profiles"
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "QGIS" / "QGIS3" / "profiles"
    return home / ".local" / "share" / "QGIS" / "QGIS3" / "profiles"


def current_profile() -> Path:
    """The profile QGIS runs with when QGIS is running in this process, else `default`."""
    try:
        from qgis.core import QgsApplication

        if QgsApplication.instance() is not None:
            return Path(QgsApplication.qgisSettingsDirPath())
    except ImportError:
        pass
    return default_profiles_root() / "default"
