"""Shared fixtures. Tests run on CPU with small ResNet-18 networks and random init."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from detect_helpers import NORM, scene, write_raster
from hostile_helpers import SIZE

from kdmsi.data.pairs import Normalisation
from kdmsi.models import SiameseCAMNet, SiameseDeepLabV3Plus
from kdmsi.models.checkpoint import save_checkpoint, save_detector

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "real"


@pytest.fixture(autouse=True)
def _own_onnx_cache(tmp_path_factory, monkeypatch):
    """Every test gets an empty `kdmsi.runtime.onnx_cache` folder (subprocesses inherit it), never
    the user's ~/.cache."""
    monkeypatch.setenv("KDMSI_CACHE_DIR", str(tmp_path_factory.mktemp("onnx-cache")))


@pytest.fixture(scope="session")
def real_data() -> Path:
    """../shared/data/real, or skip when this checkout has no such folder."""
    if not (REAL_DATA / "pairs.csv").is_file():
        pytest.skip(f"real sample data not found at {REAL_DATA}")
    return REAL_DATA


_RENDER_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PyQt5.QtCore import QEventLoop, QTimer, QUrl
    from PyQt5.QtWidgets import QApplication
    from PyQt5.QtWebKitWidgets import QWebPage

    app = QApplication(["render"])
    page = QWebPage()
    loop, done = QEventLoop(), []
    page.mainFrame().loadFinished.connect(lambda ok: (done.append(ok), loop.quit()))
    QTimer.singleShot(20000, loop.quit)
    page.mainFrame().load(QUrl.fromLocalFile(sys.argv[1]))
    loop.exec_()
    images = page.mainFrame().evaluateJavaScript(
        "Array.from(document.images).map(function (i) {"
        " return [i.getAttribute('src'), i.complete, i.naturalWidth, i.naturalHeight]; })"
    )
    print(json.dumps({"loaded": done, "title": page.mainFrame().title(), "images": images}))
    """
)


@pytest.fixture(scope="session")
def render_page():
    """A function: HTML file -> {"loaded", "title", "images": [[src, complete, naturalWidth,
    naturalHeight], ...]} as QtWebKit sees the page, loaded offscreen in a fresh process (so a
    QgsApplication of other tests cannot interfere). Skips when QtWebKit is not installed."""
    import importlib.util

    try:
        found = importlib.util.find_spec("PyQt5.QtWebKitWidgets") is not None
    except ImportError:  # no PyQt5 at all
        found = False
    if not found:
        pytest.skip("QtWebKit (python3-pyqt5.qtwebkit) is not installed: no headless browser")

    def render(index) -> dict:
        env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
        out = subprocess.run(
            [sys.executable, "-c", _RENDER_SCRIPT, str(Path(index).resolve())],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            check=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    return render


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
    from kdmsi.data.synthetic import make_scene, write_scene

    scene = make_scene(256, 256, seed=1, pixel_size_m=1.0)
    return write_scene(scene, tmp_path_factory.mktemp("scene"))


@pytest.fixture(scope="module")
def qgis_detector(tmp_path_factory) -> Path:
    """A random-init ResNet-18 Siamese DeepLabV3+ checkpoint for 3 bands, tiles of 128."""
    from kdmsi.data.pairs import Normalisation
    from kdmsi.models import SiameseDeepLabV3Plus
    from kdmsi.models.checkpoint import save_detector

    torch.manual_seed(0)
    net = SiameseDeepLabV3Plus("resnet18", in_channels=3)
    path = tmp_path_factory.mktemp("models") / "detector.kdmsi"
    return save_detector(path, net, [1, 2, 3], Normalisation.default(3), 128)


def _qgis_process() -> str:
    """The qgis_process binary, or skip."""
    for name in ("qgis_process.bin", "qgis_process"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("qgis_process is not installed")


@pytest.fixture(scope="session")
def plugin_zip(tmp_path_factory) -> Path:
    """`make package` into a temporary folder: the zip a user installs."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    work = tmp_path_factory.mktemp("package")
    subprocess.run(
        ["make", "-s", "package", f"PLUGIN_BUILD={work / 'build'}", f"DIST_DIR={work / 'dist'}"],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return work / "dist" / "kdmsi_qgis.zip"


@pytest.fixture(scope="session")
def profile_root(plugin_zip, tmp_path_factory) -> Path:
    """A fresh QGIS settings folder, the zip unpacked into its default profile, enabled."""
    root = tmp_path_factory.mktemp("qgis-config")
    plugins = root / "profiles" / "default" / "python" / "plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(plugin_zip) as archive:
        archive.extractall(plugins)
    enabled = run_qgis_process(root, "plugins", "enable", "kdmsi_qgis")
    assert "kdmsi_qgis" in enabled
    return root


def run_qgis_process(profile_root: Path, *args: str, timeout: int = 600) -> str:
    """Run QGIS's command-line runner with `profile_root` as its settings folder; its stdout.

    PYTHONPATH carries only torch's site-packages (where a QGIS user pip-installs torch), so
    `kdmsi` comes from the plugin's bundled `libs/`: an editable install's .pth file is not
    read from PYTHONPATH. Debian's `/usr/bin/qgis_process` wrapper passes
    `--noversioncheck`, which qgis_process 3.22 rejects, so the real binary is preferred.
    """
    import torch

    env = dict(os.environ)
    env.update(
        QT_QPA_PLATFORM="offscreen",
        QGIS_CUSTOM_CONFIG_PATH=str(profile_root),
        PYTHONPATH=str(Path(torch.__file__).resolve().parents[1]),
    )
    done = subprocess.run(
        [_qgis_process(), *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


# ------------------------------------------------ detect tests (helpers in detect_helpers.py)


@pytest.fixture(autouse=True)
def _restore_logging():
    """`kdmsi.cli.main` points logging at the captured stderr; undo that after each test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def pair(tmp_path) -> tuple[Path, Path]:
    pre, post = scene()
    return write_raster(tmp_path / "before.tif", pre), write_raster(tmp_path / "after.tif", post)


@pytest.fixture(scope="module")
def detector_model(tmp_path_factory) -> Path:
    """A random-init ResNet-18 Siamese DeepLabV3+ checkpoint for 3 bands, tiles of 128."""
    torch.manual_seed(0)
    net = SiameseDeepLabV3Plus("resnet18", in_channels=3)
    path = tmp_path_factory.mktemp("models") / "detector.kdmsi"
    return save_detector(path, net, [1, 2, 3], NORM, 128)


@pytest.fixture(scope="module")
def kd_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    teacher, student = SiameseCAMNet("resnet18"), SiameseCAMNet("resnet18")
    meta = {
        "kind": "kd",
        "model": student.config(),
        "bands": [1, 2, 3],
        "normalisation": NORM.to_dict(),
        "tile_size": 128,
        "threshold": None,
    }
    path = tmp_path_factory.mktemp("models") / "kd.kdmsi"
    states = {"teacher": teacher.state_dict(), "student": student.state_dict()}
    return save_checkpoint(path, meta, state_dicts=states)


# ------------------------------------------- hostile-input tests (helpers in hostile_helpers.py)


@pytest.fixture(scope="module")
def tiny_detector(tmp_path_factory) -> Path:
    """A random-init ResNet-18 detector for 3 bands and tiles of 64 (nothing here needs skill)."""
    torch.manual_seed(0)
    net = SiameseDeepLabV3Plus("resnet18", in_channels=3)
    path = tmp_path_factory.mktemp("model") / "detector.kdmsi"
    return save_detector(path, net, [1, 2, 3], Normalisation.default(3), 64)


@pytest.fixture
def work(tmp_path, tiny_detector) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    pre = rng.integers(40, 120, (3, SIZE, SIZE), dtype=np.uint8)
    post = pre.copy()
    post[:, 30:60, 30:60] = 220
    out = tmp_path / "out"
    out.mkdir()
    return {
        "before": write_raster(tmp_path / "before.tif", pre),
        "after": write_raster(tmp_path / "after.tif", post),
        "model": tiny_detector,
        "out": out,
        "root": tmp_path,
    }
