"""The QGIS Processing provider `kdmsi`, run through a real QgsApplication and `processing.run`.

Skipped when PyQGIS is not importable. No GUI: the plugin's menu/toolbar parts are not tested.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
qgis_core = pytest.importorskip("qgis.core")

from osgeo import gdal, ogr  # noqa: E402

ALGORITHMS = {
    "kdmsi:detect_changes",
    "kdmsi:create_tile_grid",
    "kdmsi:train_from_tags",
    "kdmsi:evaluate_changes",
}


def test_no_missing_dependencies_here():
    from kdmsi_qgis.deps import install_hint, missing_dependencies

    assert missing_dependencies() == []
    hint = install_hint()
    assert "Dependencies…" in hint and "-m kdmsi_qgis.install --install" in hint


def test_provider_lists_the_four_algorithms(qgis_app):
    from qgis.core import QgsApplication, QgsProcessingAlgorithm

    provider = QgsApplication.processingRegistry().providerById("kdmsi")
    assert provider is not None
    ids = {alg.id() for alg in provider.algorithms()}
    assert ids == ALGORITHMS
    for alg_id in ALGORITHMS:
        alg = QgsApplication.processingRegistry().algorithmById(alg_id)
        # run in Processing's worker thread (layers are resolved in prepareAlgorithm)
        assert alg.flags() & QgsProcessingAlgorithm.FlagCanCancel
        assert not alg.flags() & QgsProcessingAlgorithm.FlagNoThreading


def test_create_tile_grid(qgis_app, scene_pair, tmp_path):
    import processing

    out = tmp_path / "grid.gpkg"
    result = processing.run(
        "kdmsi:create_tile_grid",
        {
            "BEFORE": str(scene_pair["before"]),
            "AFTER": str(scene_pair["after"]),
            "TILE_SIZE": 64,
            "OUTPUT": str(out),
        },
    )
    assert Path(result["OUTPUT"]) == out and out.is_file()
    layer = qgis_core.QgsVectorLayer(str(out), "grid", "ogr")
    assert layer.isValid()
    assert "changed" in layer.fields().names()
    assert layer.featureCount() == 16  # 256 / 64 = 4 x 4 tiles


def test_detect_changes_writes_vector_and_probability(
    qgis_app, scene_pair, qgis_detector, tmp_path
):
    import processing

    out, prob = tmp_path / "changes.gpkg", tmp_path / "prob.tif"
    feedback = qgis_core.QgsProcessingFeedback()
    result = processing.run(
        "kdmsi:detect_changes",
        {
            "BEFORE": str(scene_pair["before"]),
            "AFTER": str(scene_pair["after"]),
            "MODEL": str(qgis_detector),
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


def test_an_onnx_export_at_128_px_runs_with_the_defaults(
    qgis_app, scene_pair, qgis_detector, tmp_path
):
    """TILE_SIZE and OVERLAP left alone are the model's: an export at 128 px (whose tile size
    is fixed) runs at 128 px and its recorded overlap, with nothing to change in Processing."""
    import processing

    from kdmsi.runtime.onnx_export import export_onnx

    onnx = export_onnx(qgis_detector, tmp_path / "detector.onnx", tile_size=128, overlap_px=16)
    out, prob = tmp_path / "changes.gpkg", tmp_path / "prob.tif"
    result = processing.run(
        "kdmsi:detect_changes",
        {
            "BEFORE": str(scene_pair["before"]),
            "AFTER": str(scene_pair["after"]),
            "MODEL": str(onnx),
            "DEVICE": 1,
            "RUNTIME": 2,  # onnx
            "OUTPUT": str(out),
            "PROBABILITY": str(prob),
        },
    )
    assert out.is_file() and Path(result["PROBABILITY"]) == prob
    info = gdal.Open(str(prob)).GetMetadata()
    assert (info["tile_size"], info["overlap_px"]) == ("128", "16"), info
    alg = qgis_core.QgsApplication.processingRegistry().algorithmById("kdmsi:detect_changes")
    assert alg.parameterDefinition("TILE_SIZE").defaultValue() == 0
    assert alg.parameterDefinition("OVERLAP").defaultValue() is None


def test_bad_model_file_gives_processing_exception(qgis_app, scene_pair, tmp_path):
    import processing

    bad = tmp_path / "bad.kdmsi"
    bad.write_bytes(b"this is not a model")
    out = tmp_path / "changes.gpkg"
    with pytest.raises(qgis_core.QgsProcessingException) as info:
        processing.run(
            "kdmsi:detect_changes",
            {
                "BEFORE": str(scene_pair["before"]),
                "AFTER": str(scene_pair["after"]),
                "MODEL": str(bad),
                "TILE_SIZE": 128,
                "DEVICE": 1,
                "OUTPUT": str(out),
            },
        )
    assert "bad.kdmsi" in str(info.value) and "not a readable kdmsi model" in str(info.value)
    assert not out.exists()


def test_temporary_output_and_cancel(qgis_app, scene_pair, qgis_detector):
    import processing

    params = {
        "BEFORE": str(scene_pair["before"]),
        "AFTER": str(scene_pair["after"]),
        "MODEL": str(qgis_detector),
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


def test_train_from_tags_copies_memory_layer_and_reports_tag_errors(qgis_app, scene_pair, tmp_path):
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
                "BEFORE": str(scene_pair["before"]),
                "AFTER": str(scene_pair["after"]),
                "TILES": layer,
                "KD_BACKBONE": 0,
                "DETECTOR_BACKBONE": 0,
                "KD_EPOCHS": 1,
                "CD_EPOCHS": 1,
                "TILE_SIZE": 64,
                "DEVICE": 1,
                "OUTPUT": str(out),
            },
        )
    assert "does not exist" not in str(info.value)
    assert not out.exists()


def test_missing_dependencies_block_the_run(qgis_app, scene_pair, tmp_path, monkeypatch):
    import processing

    from kdmsi_qgis import bridge, deps
    from kdmsi_qgis.algorithms import base

    monkeypatch.setattr(base, "missing_dependencies", lambda: ["torch"])
    monkeypatch.setattr(bridge, "missing_dependencies", lambda: ["torch"])
    monkeypatch.setattr(deps, "missing_dependencies", lambda: ["torch"])
    with pytest.raises(qgis_core.QgsProcessingException, match=r"lacks \(torch\).*Dependencies…"):
        processing.run(
            "kdmsi:create_tile_grid",
            {
                "BEFORE": str(scene_pair["before"]),
                "AFTER": str(scene_pair["after"]),
                "OUTPUT": str(tmp_path / "grid.gpkg"),
            },
        )
    assert not (tmp_path / "grid.gpkg").exists()


def _tile_grid(scene_pair, path: Path, tile: int = 64) -> Path:
    import processing

    processing.run(
        "kdmsi:create_tile_grid",
        {
            "BEFORE": str(scene_pair["before"]),
            "AFTER": str(scene_pair["after"]),
            "TILE_SIZE": tile,
            "OUTPUT": str(path),
        },
    )
    return path


def test_extent_cuts_detection_and_grid(qgis_app, scene_pair, qgis_detector, tmp_path):
    """EXTENT (any CRS; here the raster's) limits the analysed area of detect and the grid."""
    import processing

    x0, y0 = 500000.0, 5500000.0
    extent = f"{x0 + 64},{x0 + 192},{y0 - 128},{y0 - 64} [EPSG:32633]"  # 128 x 64 m
    prob = tmp_path / "prob.tif"
    processing.run(
        "kdmsi:detect_changes",
        {
            "BEFORE": str(scene_pair["before"]),
            "AFTER": str(scene_pair["after"]),
            "MODEL": str(qgis_detector),
            "TILE_SIZE": 64,
            "OVERLAP": 16,
            "DEVICE": 1,
            "EXTENT": extent,
            "OUTPUT": str(tmp_path / "changes.gpkg"),
            "PROBABILITY": str(prob),
        },
    )
    raster = gdal.Open(str(prob))
    assert (raster.RasterXSize, raster.RasterYSize) == (128, 64)
    assert raster.GetGeoTransform()[0] == x0 + 64 and raster.GetGeoTransform()[3] == y0 - 64
    grid = tmp_path / "grid.gpkg"
    processing.run(
        "kdmsi:create_tile_grid",
        {
            "BEFORE": str(scene_pair["before"]),
            "AFTER": str(scene_pair["after"]),
            "TILE_SIZE": 64,
            "EXTENT": extent,
            "OUTPUT": str(grid),
        },
    )
    grid_ds = ogr.Open(str(grid))  # keep: its layer dies with it
    assert grid_ds.GetLayer(0).GetFeatureCount() == 2


@pytest.mark.parametrize("kind", ["raster", "polygons"])
def test_evaluate_changes_against_mask_or_polygons(
    qgis_app, scene_pair, qgis_detector, tmp_path, kind
):
    """Threshold 0 marks every pixel as change, so cIoU is the truth's change share."""
    import processing

    reference = str(scene_pair["truth"])
    if kind == "polygons":  # the truth mask as polygons, through QGIS's own GDAL algorithm
        reference = processing.run(
            "gdal:polygonize",
            {"INPUT": reference, "BAND": 1, "FIELD": "DN", "OUTPUT": str(tmp_path / "t.gpkg")},
        )["OUTPUT"]
        layer = qgis_core.QgsVectorLayer(reference, "truth", "ogr")
        layer.setSubsetString('"DN" > 0')  # a filtered layer: copied to a temporary file
        reference = layer
    report = tmp_path / "metrics.html"
    result = processing.run(
        "kdmsi:evaluate_changes",
        {
            "BEFORE": str(scene_pair["before"]),
            "AFTER": str(scene_pair["after"]),
            "MODEL": str(qgis_detector),
            "REFERENCE": reference,
            "TILE_SIZE": 128,
            "DEVICE": 1,
            "THRESHOLD": 0.0,
            "REPORT": str(report),
        },
    )
    truth = gdal.Open(str(scene_pair["truth"])).ReadAsArray() > 0
    assert result["CIOU"] == pytest.approx(100 * truth.mean(), abs=1e-3)
    assert result["FN"] == 0.0 and result["OA"] == pytest.approx(100 * truth.mean(), abs=1e-3)
    assert "cIoU" in result["TABLE"] and "detector.kdmsi" in result["TABLE"]
    assert result["REPORT"] == str(report) and "cIoU" in report.read_text()


def test_train_from_tags_writes_a_model_that_detects(qgis_app, scene_pair, qgis_detector, tmp_path):
    """Tag a QGIS-made grid from the truth (as an analyst would by eye), train, then detect."""
    import processing

    grid = _tile_grid(scene_pair, tmp_path / "grid.gpkg")
    layer = qgis_core.QgsVectorLayer(str(grid), "grid", "ogr")
    truth = gdal.Open(str(scene_pair["truth"])).ReadAsArray() > 0
    index = layer.fields().indexOf("changed")
    assert layer.startEditing()
    for feature in layer.getFeatures():
        r, c = feature["row"], feature["col"]
        share = truth[r * 64 : (r + 1) * 64, c * 64 : (c + 1) * 64].mean()
        layer.changeAttributeValue(feature.id(), index, int(share > 0.02))
    # unsaved edits: the algorithm must read what the analyst sees, not the file
    model = tmp_path / "trained.kdmsi"
    feedback = qgis_core.QgsProcessingFeedback()
    trained = processing.run(
        "kdmsi:train_from_tags",
        {
            "BEFORE": str(scene_pair["before"]),
            "AFTER": str(scene_pair["after"]),
            "TILES": layer,
            "KD_BACKBONE": 0,
            "DETECTOR_BACKBONE": 0,
            "KD_EPOCHS": 10,  # the pretrained default, shortened: enough for pseudo labels
            "CD_EPOCHS": 1,
            "BATCH_SIZE": 4,
            "TILE_SIZE": 64,
            "DEVICE": 1,
            "OUTPUT": str(model),
        },
        feedback=feedback,
    )
    layer.rollBack()
    assert model.is_file() and feedback.progress() == pytest.approx(100.0)
    assert "efficientnet_lite0: ImageNet" in feedback.textLog()  # the log says which weights
    report = Path(trained["REPORT"])  # written by default, beside the model
    assert report == tmp_path / "trained_report" / "index.html" and report.is_file()
    result = processing.run(
        "kdmsi:detect_changes",
        {
            "BEFORE": str(scene_pair["before"]),
            "AFTER": str(scene_pair["after"]),
            "MODEL": str(model),
            "DEVICE": 1,
            "OUTPUT": str(tmp_path / "changes.gpkg"),
        },
    )
    assert Path(result["OUTPUT"]).is_file()


def test_results_loaded_by_processing_are_styled(qgis_app, scene_pair, qgis_detector, tmp_path):
    import processing
    from qgis.core import QgsProject

    result = processing.runAndLoadResults(
        "kdmsi:detect_changes",
        {
            "BEFORE": str(scene_pair["before"]),
            "AFTER": str(scene_pair["after"]),
            "MODEL": str(qgis_detector),
            "TILE_SIZE": 128,
            "DEVICE": 1,
            "OUTPUT": str(tmp_path / "changes.gpkg"),
            "PROBABILITY": str(tmp_path / "probability.tif"),
        },
    )
    project = QgsProject.instance()
    layers = {
        Path(layer.source().split("|")[0]).name: layer for layer in project.mapLayers().values()
    }
    try:
        polygons, probability = layers["changes.gpkg"], layers["probability.tif"]
        symbol = polygons.renderer().symbol()
        assert 0 < symbol.color().alpha() < 255  # semi-transparent fill
        assert probability.renderer().type() == "singlebandpseudocolor"
        assert result["POLYGON_COUNT"] == polygons.featureCount()
    finally:
        project.removeAllMapLayers()


def test_install_hint_names_the_interpreter_qgis_embeds(monkeypatch):
    """Inside QGIS sys.executable is the QGIS binary or a PATH python; pip must target ours."""
    import sys

    from kdmsi_qgis import deps

    monkeypatch.setattr(sys, "executable", "/usr/bin/qgis.bin")
    python = Path(deps.qgis_python())
    assert python.name.startswith("python") and python.is_file()
    assert Path(sys.exec_prefix) in python.parents


def test_triton_is_kept_out_of_a_fresh_qgis_python():
    """torch + torchvision work with triton blocked, and triton's LLVM is never loaded."""
    import subprocess
    import sys

    code = (
        "import sys; from kdmsi.runtime.onnx_model import keep_triton_out; keep_triton_out()\n"
        "import torch, torchvision\n"
        "from kdmsi.models import SiameseDeepLabV3Plus\n"
        "net = SiameseDeepLabV3Plus('resnet18').eval()\n"
        "out = net(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))\n"
        "assert out.shape == (1, 2, 32, 32)\n"
        "assert sys.modules['triton'] is None and 'triton._C' not in sys.modules\n"
    )
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_detect_warns_when_pixel_sizes_differ(qgis_app, scene_pair, qgis_detector, tmp_path):
    """A 3x coarser after image with a model not trained for it: a warning, not a failure."""
    import processing

    coarse = tmp_path / "after_3m.tif"
    gdal.Warp(str(coarse), str(scene_pair["after"]), xRes=3.0, yRes=3.0, resampleAlg="average")
    result = processing.run(
        "kdmsi:detect_changes",
        {
            "BEFORE": str(scene_pair["before"]),
            "AFTER": str(coarse),
            "MODEL": str(qgis_detector),
            "TILE_SIZE": 128,
            "DEVICE": 1,
            "OUTPUT": str(tmp_path / "changes.gpkg"),
        },
    )
    assert "3.0 times larger" in result["QUALITY_WARNING"]
    assert "quality-robust" in result["QUALITY_WARNING"]
    assert Path(result["OUTPUT"]).is_file()
    same = processing.run(
        "kdmsi:detect_changes",
        {
            "BEFORE": str(scene_pair["before"]),
            "AFTER": str(scene_pair["after"]),
            "MODEL": str(qgis_detector),
            "TILE_SIZE": 128,
            "DEVICE": 1,
            "OUTPUT": str(tmp_path / "changes2.gpkg"),
        },
    )
    assert same["QUALITY_WARNING"] == ""
