"""The plugin's background runs, result layers and dialog with a real QgsApplication (offscreen).

`AlgorithmRun` queues the Processing algorithm as a QGIS task in the real task manager; the
tests wait for it by spinning the Qt event loop, as QGIS's own loop would.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

qgis_core = pytest.importorskip("qgis.core")

from osgeo import ogr  # noqa: E402


def wait_for(run, timeout: float = 300.0) -> tuple:
    """Spin the event loop until `run` emits `finished`; the signal's values."""
    from qgis.core import QgsApplication

    outcome = []
    run.finished.connect(lambda *values: outcome.append(values))
    started = time.monotonic()
    while not outcome and time.monotonic() - started < timeout:
        QgsApplication.processEvents()
        time.sleep(0.02)
    assert outcome, "the task did not finish in time"
    return outcome[0]


@pytest.fixture()
def project(qgis_app):
    from qgis.core import QgsProject

    project = QgsProject.instance()
    yield project
    project.removeAllMapLayers()
    project.layerTreeRoot().removeAllChildren()


def _detect_parameters(scene_pair, model, out: Path) -> dict:
    return {
        "BEFORE": str(scene_pair["before"]),
        "AFTER": str(scene_pair["after"]),
        "MODEL": str(model),
        "TILE_SIZE": 128,
        "OVERLAP": 32,
        "DEVICE": 1,
        "OUTPUT": str(out / "changes.gpkg"),
        "PROBABILITY": str(out / "probability.tif"),
    }


def test_algorithm_run_reports_progress_and_results(project, scene_pair, qgis_detector, tmp_path):
    from kdmsi_qgis.tasks import AlgorithmRun

    run = AlgorithmRun(
        "kdmsi:detect_changes", _detect_parameters(scene_pair, qgis_detector, tmp_path)
    )
    progress, messages = [], []
    run.progress.connect(progress.append)
    run.message.connect(messages.append)
    assert run.start()
    ok, results, error = wait_for(run)
    assert ok and error == ""
    assert Path(results["OUTPUT"]).is_file() and Path(results["PROBABILITY"]).is_file()
    assert progress and max(progress) == pytest.approx(100.0)
    assert any("change polygons" in m for m in messages)


def test_algorithm_run_cancel_leaves_nothing(project, scene_pair, qgis_detector, tmp_path):
    from kdmsi_qgis.tasks import AlgorithmRun

    params = _detect_parameters(scene_pair, qgis_detector, tmp_path)
    params["TILE_SIZE"], params["OVERLAP"] = 32, 8  # 100+ batches: time to cancel mid-run
    run = AlgorithmRun("kdmsi:detect_changes", params)
    run.progress.connect(lambda value: value > 5 and run.cancel())
    assert run.start()
    ok, results, error = wait_for(run)
    assert not ok and results == {} and error == ""
    assert sorted(tmp_path.iterdir()) == []


def test_algorithm_run_errors_are_messages(project, scene_pair, tmp_path):
    from kdmsi_qgis.tasks import AlgorithmRun

    bad = tmp_path / "bad.kdmsi"
    bad.write_bytes(b"not a model")
    run = AlgorithmRun("kdmsi:detect_changes", _detect_parameters(scene_pair, bad, tmp_path))
    assert run.start()
    ok, _, error = wait_for(run)
    assert not ok and "bad.kdmsi" in error and "Traceback" not in error
    run = AlgorithmRun("kdmsi:detect_changes", {"MODEL": str(bad)})  # no rasters at all
    assert not run.start()
    assert not run.is_running()


def test_detection_results_are_grouped_and_styled(project, scene_pair, qgis_detector, tmp_path):
    import processing

    from kdmsi_qgis.results import add_detection_results

    results = processing.run(
        "kdmsi:detect_changes", _detect_parameters(scene_pair, qgis_detector, tmp_path)
    )
    group, layers = add_detection_results(results, "Changes test")
    assert project.layerTreeRoot().children()[0] is group
    assert [layer.name() for layer in layers] == ["Change polygons", "Change probability"]
    polygons, probability = layers
    assert 0 < polygons.renderer().symbol().color().alpha() < 255
    assert probability.renderer().type() == "singlebandpseudocolor"
    assert 0 < probability.opacity() < 1
    _, only_polygons = add_detection_results({"OUTPUT": results["OUTPUT"]}, "No raster")
    assert len(only_polygons) == 1


def _raster_layers(project, scene_pair):
    from qgis.core import QgsRasterLayer

    layers = []
    for name in ("after", "before"):  # the newer image on top, as analysts stack them
        layer = QgsRasterLayer(str(scene_pair[name]), f"{name} 2024")
        assert layer.isValid()
        project.addMapLayer(layer)
        layers.append(layer)
    return layers


def test_dialog_prefills_and_validates(project, scene_pair, qgis_detector):
    from kdmsi_qgis.dialog import KdmsiDialog

    after, before = _raster_layers(project, scene_pair)
    dialog = KdmsiDialog(None)
    assert dialog.detect_pair.before.currentLayer() is before
    assert dialog.detect_pair.after.currentLayer() is after
    with pytest.raises(ValueError, match="model file"):
        dialog.detection_parameters()
    dialog.model_file.setFilePath(str(qgis_detector))
    params = dialog.detection_parameters()
    assert params["BEFORE"] == before.id() and params["OUTPUT"] == "TEMPORARY_OUTPUT"
    assert params["RUNTIME"] == 0  # auto
    assert params["THRESHOLD"] is None and params["PROBABILITY"] == "TEMPORARY_OUTPUT"
    dialog.use_threshold.setChecked(True)
    dialog.threshold.setValue(0.3)
    assert dialog.detection_parameters()["THRESHOLD"] == pytest.approx(0.3)
    dialog.detect_pair.after.setLayer(before)
    with pytest.raises(ValueError, match="same layer"):
        dialog.detection_parameters()
    with pytest.raises(ValueError, match="tagged tile layer"):
        dialog.training_parameters()
    dialog.detect_pair.after.setLayer(after)
    dialog.model_file.setFilePath("")
    dialog.zero_shot.setChecked(True)  # no model needed, and none passed on
    params = dialog.detection_parameters()
    assert params["ZERO_SHOT"] is True and params["MODEL"] is None
    assert not dialog.model_file.isEnabled()
    dialog.close()


def test_dialog_runs_grid_and_detection_into_the_project(
    project, scene_pair, qgis_detector, tmp_path
):
    from kdmsi_qgis.dialog import KdmsiDialog

    _raster_layers(project, scene_pair)
    dialog = KdmsiDialog(None)
    dialog.grid_tile_size.setValue(128)
    dialog.start_grid()
    assert not dialog.grid_button.isEnabled() and dialog.cancel_button.isEnabled()
    wait_for(dialog.run)
    grid = dialog.tags.currentLayer()
    assert grid is not None and grid.featureCount() == 4
    assert grid.name() == "Tiles to tag (ranked)"  # suggestions are on by default
    assert grid.renderer().type() == "RuleRenderer"
    dialog.show_next_tile()  # no canvas here: selects the first suggestion
    assert [f["suggest_rank"] for f in grid.getSelectedFeatures()] == [1]

    dialog.model_file.setFilePath(str(qgis_detector))
    dialog.device.setCurrentIndex(1)
    dialog.detect_output.setFilePath(str(tmp_path / "changes.gpkg"))
    # left alone, the tile boxes say so and send the library's defaults: the model's 128 px
    assert (dialog.tile_size.text(), dialog.overlap.text()) == ("model's", "auto")
    params = dialog.detection_parameters()
    assert params["TILE_SIZE"] == 0 and params["OVERLAP"] is None
    dialog.start_detection()
    wait_for(dialog.run)
    assert dialog.progress.value() == 100 and dialog.detect_button.isEnabled()
    group = project.layerTreeRoot().children()[0]
    assert group.name() == "Changes before 2024 → after 2024"
    names = [child.name() for child in group.children()]
    assert names == ["Change polygons", "Change probability"]
    assert ogr.Open(str(tmp_path / "changes.gpkg")) is not None
    dialog.close()


def test_speed_probe_times_each_backbone_in_a_task(project):
    from kdmsi_qgis.tasks import SpeedProbe

    probe = SpeedProbe(["resnet18", "mobilenet_v3_large"], "cpu", 64, (1000, 600))
    probe.start()
    measured = wait_for(probe, timeout=120)
    seconds, error = measured[0], measured[1]
    assert error == "" and set(seconds) == {"resnet18", "mobilenet_v3_large"}
    for per_tile, pair in seconds.values():
        assert per_tile > 0 and pair > per_tile  # the pair needs many 64 px tiles


def test_dialog_training_parameters_and_speed_label(project, scene_pair, tmp_path):
    from kdmsi_qgis.dialog import KdmsiDialog

    _raster_layers(project, scene_pair)
    dialog = KdmsiDialog(None)
    grid = _grid_layer(project, scene_pair, tmp_path)
    dialog.tags.setLayer(grid)
    dialog.model_output.setFilePath(str(tmp_path / "mine"))
    dialog.train_pair.before.setLayer(project.mapLayersByName("before 2024")[0])
    assert dialog.grid_size_label.text() == "auto: 64 px, about 16 tiles over this raster"
    assert dialog.grid_parameters()["TILE_SIZE"] == 0  # auto: kdmsi picks the same size
    assert "resnet50" in dialog.speed_label.text() and "ONNX" in dialog.speed_label.text()
    dialog.detector_backbone.setCurrentText("mobilenet_v3_large")
    dialog.quality.setChecked(True)
    params = dialog.training_parameters()
    assert params["OUTPUT"] == str(tmp_path / "mine.kdmsi") and params["TILES"] == grid.id()
    assert params["DETECTOR_BACKBONE"] == 4 and params["KD_BACKBONE"] == 0  # EfficientNet
    assert params["TILE_SIZE"] == 0 and params["KD_EPOCHS"] == 12  # the tags' own tile size
    text = dialog.time_label.text()  # shown before the run: the grid's 128 px tiles, untagged
    assert text.startswith("Expected training time: tag some tiles first")
    field = grid.fields().indexOf("changed")
    grid.startEditing()
    for i, feature in enumerate(grid.getFeatures()):
        if i < 4:
            grid.changeAttributeValue(feature.id(), field, i % 2)
    grid.commitChanges()
    dialog.show_expected_time()
    assert "about 1 min for 4 tagged tiles of 128 px" in dialog.time_label.text()
    assert params["QUALITY_ROBUST"] is True and params["WRITE_REPORT"] is True
    assert "WARM_START" not in params
    dialog.warm_start.setChecked(True)
    with pytest.raises(ValueError, match="warm start: choose the earlier model"):
        dialog.training_parameters()
    previous = tmp_path / "previous.kdmsi"
    previous.write_bytes(b"a model file")
    dialog.model_file.setFilePath(str(previous))
    assert dialog.training_parameters()["WARM_START"] == str(previous)
    dialog.speeds = {"resnet50": (0.5, 120.0), "mobilenet_v3_large": (0.1, 30.0)}
    dialog.show_speed()
    assert "mobilenet_v3_large 0.10 s" in dialog.speed_label.text()
    assert "about 0.5 min" in dialog.speed_label.text()
    dialog.close()


def _grid_layer(project, scene_pair, tmp_path):
    import processing
    from qgis.core import QgsVectorLayer

    out = processing.run(
        "kdmsi:create_tile_grid",
        {
            "BEFORE": str(scene_pair["before"]),
            "AFTER": str(scene_pair["after"]),
            "TILE_SIZE": 128,
            "OUTPUT": str(tmp_path / "grid.gpkg"),
        },
    )["OUTPUT"]
    layer = QgsVectorLayer(out, "grid", "ogr")
    project.addMapLayer(layer)
    return layer


def test_a_model_that_contradicts_the_tags_warns_on_the_message_bar(project, scene_pair, tmp_path):
    """Half the changed tiles tagged *not changed*: Processing returns the warnings, and the
    dialog puts them on the message bar as a warning that stays until it is closed."""
    import processing
    from osgeo import gdal
    from qgis.core import Qgis, QgsVectorLayer
    from qgis.gui import QgsMessageBar

    from kdmsi_qgis.dialog import KdmsiDialog

    before, after = _raster_layers(project, scene_pair)[::-1]
    grid = processing.run(
        "kdmsi:create_tile_grid",
        {"BEFORE": before, "AFTER": after, "TILE_SIZE": 64, "SUGGEST": False,
         "OUTPUT": str(tmp_path / "grid.gpkg")},
    )["OUTPUT"]  # fmt: skip
    layer = QgsVectorLayer(grid, "grid", "ogr")
    truth = gdal.Open(str(scene_pair["truth"])).ReadAsArray() > 0
    shares = {
        f.id(): truth[
            f["row"] * 64 : (f["row"] + 1) * 64, f["col"] * 64 : (f["col"] + 1) * 64
        ].mean()
        for f in layer.getFeatures()
    }
    changed = sorted(fid for fid, share in shares.items() if share > 0.02)
    field = layer.fields().indexOf("changed")
    layer.startEditing()
    for fid, share in shares.items():
        mistagged = fid in changed[: len(changed) // 2]
        layer.changeAttributeValue(fid, field, int(share > 0.02 and not mistagged))
    layer.commitChanges()
    results = processing.run(
        "kdmsi:train_from_tags",
        {"BEFORE": before, "AFTER": after, "TILES": layer, "KD_EPOCHS": 10, "CD_EPOCHS": 1,
         "BATCH_SIZE": 4, "TILE_SIZE": 0, "DEVICE": 1, "WRITE_REPORT": False,
         "OUTPUT": str(tmp_path / "m.kdmsi")},
    )  # fmt: skip
    assert "tiles tagged" in results["TAG_CHECK"] and results["WARNINGS"]
    assert "Tag more" in results["WARNINGS"]

    class Iface:  # the one part of QGIS's interface the dialog uses here: a real message bar
        bar = QgsMessageBar()

        def messageBar(self):  # noqa: N802 (QGIS API)
            return self.bar

        def mainWindow(self):  # noqa: N802 (QGIS API)
            return None

    dialog = KdmsiDialog(Iface())
    dialog._training_done(results)
    (item,) = Iface.bar.items()
    assert item.level() == Qgis.Warning and item.duration() == 0  # stays until closed
    assert "model saved to" in item.text() and results["WARNINGS"] in item.text()
    dialog.close()


def test_dialog_shows_the_default_bands_and_passes_a_choice(project):
    from kdmsi_qgis.dialog import KdmsiDialog

    sample = Path(__file__).resolve().parents[2] / "resources/sample_data/landsat_taizhou"
    if not sample.is_dir():
        pytest.skip("no Landsat sample here")
    for name, folder in (("before", "A"), ("after", "B")):
        project.addMapLayer(qgis_core.QgsRasterLayer(str(sample / folder / "taizhou.tif"), name))
    dialog = KdmsiDialog(None)
    shown = "3, 2, 1 (red, green, blue by the band descriptions)"
    assert dialog.train_pair.bands.placeholderText() == f"empty: {shown}"
    assert dialog.detect_pair.bands.placeholderText() == f"empty: the model's; zero-shot: {shown}"
    assert "BANDS" not in dialog.train_pair.parameters()  # empty: the library's default
    dialog.train_pair.bands.setText("4, 3, 2")
    assert dialog.train_pair.parameters()["BANDS"] == [4, 3, 2]
    dialog.train_pair.bands.setText("4,x")
    with pytest.raises(ValueError, match="Bands: .*'x' is not one"):
        dialog.train_pair.parameters()
    dialog.close()
