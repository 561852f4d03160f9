"""Shared fixtures. Tests run on CPU with small ResNet-18 networks and random init."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def real_data() -> Path:
    """../shared/data/real, or skip when this checkout has no such folder."""
    if not (REAL_DATA / "pairs.csv").is_file():
        pytest.skip(f"real sample data not found at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture(scope="session")
def qgis_app():
    """A real QgsApplication with Processing initialised and the kdmsi provider registered."""
    pytest.importorskip("qgis.core")
    from qgis.core import QgsApplication

    app = QgsApplication.instance()
    if app is None:
        app = QgsApplication([], False)
        app.initQgis()
    plugins = str(Path(QgsApplication.pkgDataPath()) / "python" / "plugins")
    if plugins not in sys.path:  # where QGIS ships the `processing` plugin
        sys.path.append(plugins)
    from processing.core.Processing import Processing

    Processing.initialize()
    from kdmsi_qgis.provider import KdmsiProvider

    provider = KdmsiProvider()
    assert QgsApplication.processingRegistry().addProvider(provider)
    yield app
    QgsApplication.processingRegistry().removeProvider(provider)


@pytest.fixture(scope="module")
def scene_pair(tmp_path_factory) -> dict:
    """A 256 x 256 px synthetic before/after/truth scene, 1 m pixels, EPSG:32633."""
    from kdmsi.synthetic import make_scene, write_scene

    scene = make_scene(256, 256, seed=1, pixel_size_m=1.0)
    return write_scene(scene, tmp_path_factory.mktemp("scene"))


@pytest.fixture(scope="module")
def qgis_detector(tmp_path_factory) -> Path:
    """A random-init ResNet-18 Siamese DeepLabV3+ checkpoint for 3 bands, tiles of 128."""
    from kdmsi.checkpoint import save_detector
    from kdmsi.data import Normalisation
    from kdmsi.models import SiameseDeepLabV3Plus

    torch.manual_seed(0)
    net = SiameseDeepLabV3Plus("resnet18", in_channels=3)
    path = tmp_path_factory.mktemp("models") / "detector.kdmsi"
    return save_detector(path, net, [1, 2, 3], Normalisation.default(3), 128)
