"""The QGIS Processing provider `kdmsi`, run through a real QgsApplication and `processing.run`.

Skipped when PyQGIS is not importable. No GUI: the plugin's menu/toolbar parts are not tested.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
qgis_core = pytest.importorskip("qgis.core")

import torch  # noqa: E402
from osgeo import gdal, ogr  # noqa: E402

from kdmsi.checkpoint import save_detector  # noqa: E402
from kdmsi.data import Normalisation  # noqa: E402
from kdmsi.models import SiameseDeepLabV3Plus  # noqa: E402
from kdmsi.synthetic import make_scene, write_scene  # noqa: E402

ALGORITHMS = {"kdmsi:detect_changes", "kdmsi:create_tile_grid", "kdmsi:train_from_tags"}


@pytest.fixture(scope="session")
def qgis_app():
    """A real QgsApplication with Processing initialised and the kdmsi provider registered."""
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
def pair(tmp_path_factory) -> dict:
    scene = make_scene(256, 256, seed=1, pixel_size_m=1.0)
    return write_scene(scene, tmp_path_factory.mktemp("scene"))


@pytest.fixture(scope="module")
def detector_model(tmp_path_factory) -> Path:
    """A random-init ResNet-18 Siamese DeepLabV3+ checkpoint for 3 bands, tiles of 128."""
    torch.manual_seed(0)
    net = SiameseDeepLabV3Plus("resnet18", in_channels=3)
    path = tmp_path_factory.mktemp("models") / "detector.kdmsi"
    return save_detector(path, net, [1, 2, 3], Normalisation.default(3), 128)


def test_no_missing_dependencies_here():
    from kdmsi_qgis.deps import install_hint, missing_dependencies

    assert missing_dependencies() == []
    hint = install_hint()
    assert "-m pip install torch==" in hint and "torchvision==" in hint


def test_provider_lists_the_three_algorithms(qgis_app):
    from qgis.core import QgsApplication, QgsProcessingAlgorithm

    provider = QgsApplication.processingRegistry().providerById("kdmsi")
    assert provider is not None
    ids = {alg.id() for alg in provider.algorithms()}
    assert ids == ALGORITHMS
    for alg_id in ALGORITHMS:
        alg = QgsApplication.processingRegistry().algorithmById(alg_id)
        assert alg.flags() & QgsProcessingAlgorithm.FlagNoThreading


def test_create_tile_grid(qgis_app, pair, tmp_path):
    import processing

    out = tmp_path / "grid.gpkg"
    result = processing.run(
        "kdmsi:create_tile_grid",
        {
            "BEFORE": str(pair["before"]),
            "AFTER": str(pair["after"]),
            "TILE_SIZE": 64,
            "OUTPUT": str(out),
        },
    )
    assert Path(result["OUTPUT"]) == out and out.is_file()
    layer = qgis_core.QgsVectorLayer(str(out), "grid", "ogr")
    assert layer.isValid()
    assert "changed" in layer.fields().names()
    assert layer.featureCount() == 16  # 256 / 64 = 4 x 4 tiles


def test_detect_changes_writes_vector_and_probability(qgis_app, pair, detector_model, tmp_path):
    import processing

    out, prob = tmp_path / "changes.gpkg", tmp_path / "prob.tif"
    feedback = qgis_core.QgsProcessingFeedback()
    result = processing.run(
        "kdmsi:detect_changes",
        {
            "BEFORE": str(pair["before"]),
            "AFTER": str(pair["after"]),
            "MODEL": str(detector_model),
            "TILE_SIZE": 128,
            "OVERLAP": 32,
            "BATCH_SIZE": 4,
            "DEVICE": 1,  # cpu
            "OUTPUT": str(out),
            "PROBABILITY": str(prob),
        },
        feedback=feedback,
    )
    assert Path(result["OUTPUT"]) == out and out.is_file()
    assert Path(result["PROBABILITY"]) == prob and prob.is_file()
    assert result["THRESHOLD_USED"] == pytest.approx(0.5)
    assert feedback.progress() == pytest.approx(100.0)
    source = ogr.Open(str(out))
    assert source is not None and source.GetLayer(0).GetFeatureCount() == result["POLYGON_COUNT"]
    raster = gdal.Open(str(prob))
    assert (raster.RasterXSize, raster.RasterYSize) == (256, 256)


def test_bad_model_file_gives_processing_exception(qgis_app, pair, tmp_path):
    import processing

    bad = tmp_path / "bad.kdmsi"
    bad.write_bytes(b"this is not a model")
    out = tmp_path / "changes.gpkg"
    with pytest.raises(qgis_core.QgsProcessingException) as info:
        processing.run(
            "kdmsi:detect_changes",
            {
                "BEFORE": str(pair["before"]),
                "AFTER": str(pair["after"]),
                "MODEL": str(bad),
                "TILE_SIZE": 128,
                "DEVICE": 1,
                "OUTPUT": str(out),
            },
        )
    assert "bad.kdmsi" in str(info.value) and "not a readable kdmsi model" in str(info.value)
    assert not out.exists()


def test_temporary_output_and_cancel(qgis_app, pair, detector_model):
    import processing

    params = {
        "BEFORE": str(pair["before"]),
        "AFTER": str(pair["after"]),
        "MODEL": str(detector_model),
        "TILE_SIZE": 128,
        "DEVICE": 1,
        "OUTPUT": "TEMPORARY_OUTPUT",
    }
    feedback = qgis_core.QgsProcessingFeedback()
    feedback.cancel()
    with pytest.raises(qgis_core.QgsProcessingException, match="cancelled"):
        processing.run("kdmsi:detect_changes", params, feedback=feedback)
    result = processing.run("kdmsi:detect_changes", params)
    assert result["OUTPUT"].endswith(".gpkg") and Path(result["OUTPUT"]).is_file()
    assert result["PROBABILITY"] is None


def test_train_from_tags_copies_memory_layer_and_reports_tag_errors(qgis_app, pair, tmp_path):
    """A memory layer is written to a temporary GeoPackage; too few tags is a clear error."""
    import processing

    layer = qgis_core.QgsVectorLayer(
        "Polygon?crs=EPSG:32633&field=changed:integer", "tags", "memory"
    )
    feature = qgis_core.QgsFeature(layer.fields())
    x0, y0 = 500000.0, 5500000.0
    feature.setGeometry(
        qgis_core.QgsGeometry.fromRect(qgis_core.QgsRectangle(x0, y0 - 64, x0 + 64, y0))
    )
    feature.setAttribute("changed", 1)
    assert layer.dataProvider().addFeatures([feature])[0]
    out = tmp_path / "model.kdmsi"
    with pytest.raises(qgis_core.QgsProcessingException, match="tagged") as info:
        processing.run(
            "kdmsi:train_from_tags",
            {
                "BEFORE": str(pair["before"]),
                "AFTER": str(pair["after"]),
                "TILES": layer,
                "BACKBONE": 0,
                "KD_EPOCHS": 1,
                "CD_EPOCHS": 1,
                "TILE_SIZE": 64,
                "DEVICE": 1,
                "OUTPUT": str(out),
            },
        )
    assert "does not exist" not in str(info.value)
    assert not out.exists()


def test_missing_dependencies_block_the_run(qgis_app, pair, tmp_path, monkeypatch):
    import processing

    from kdmsi_qgis import algorithms

    monkeypatch.setattr(algorithms, "missing_dependencies", lambda: ["torch"])
    with pytest.raises(qgis_core.QgsProcessingException, match="-m pip install torch=="):
        processing.run(
            "kdmsi:create_tile_grid",
            {
                "BEFORE": str(pair["before"]),
                "AFTER": str(pair["after"]),
                "OUTPUT": str(tmp_path / "grid.gpkg"),
            },
        )
    assert not (tmp_path / "grid.gpkg").exists()
