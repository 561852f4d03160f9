"""The plugin's help before and while tagging, through a real QgsApplication: the zero-shot map
(`kdmsi:detect_changes` with ZERO_SHOT), the suggested grid (`kdmsi:create_tile_grid`), its
style, and "Next tile to tag" (`kdmsi_qgis.tagging`) on a real map canvas."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
qgis_core = pytest.importorskip("qgis.core")


def _pair(scene_pair) -> dict:
    return {"BEFORE": str(scene_pair["before"]), "AFTER": str(scene_pair["after"])}


def test_zero_shot_detection_needs_no_model(qgis_app, scene_pair, tmp_path):
    import processing

    out, prob = tmp_path / "changes.gpkg", tmp_path / "map.tif"
    params = {**_pair(scene_pair), "ZERO_SHOT": True, "OUTPUT": str(out), "PROBABILITY": str(prob)}
    result = processing.run("kdmsi:detect_changes", params)
    assert result["THRESHOLD_USED"] == pytest.approx(0.39)
    assert result["POLYGON_COUNT"] > 0 and out.is_file() and prob.is_file()
    with pytest.raises(qgis_core.QgsProcessingException, match="MODEL: choose a model file"):
        processing.run("kdmsi:detect_changes", {**_pair(scene_pair), "OUTPUT": str(out)})


@pytest.fixture
def suggested_grid(qgis_app, scene_pair, tmp_path):
    import processing

    out = tmp_path / "grid.gpkg"
    params = {**_pair(scene_pair), "TILE_SIZE": 64, "OUTPUT": str(out)}
    result = processing.run("kdmsi:create_tile_grid", params)  # SUGGEST is on by default
    assert result["FIRST"].count(";") == 4  # the five tiles to tag first
    layer = qgis_core.QgsVectorLayer(result["OUTPUT"], "grid", "ogr")
    assert layer.isValid()
    return layer


def test_suggested_grid_is_styled_by_priority(suggested_grid):
    from kdmsi_qgis.styles import LABELLED_RANKS, apply_style

    layer = suggested_grid
    assert {"change_score", "suggest", "suggest_rank"} <= set(layer.fields().names())
    apply_style(layer, "grid")
    renderer = layer.renderer()
    assert isinstance(renderer, qgis_core.QgsRuleBasedRenderer)
    filters = [rule.filterExpression() for rule in renderer.rootRule().children()]
    assert filters == ['"changed" = 1', '"changed" = 0', '"changed" IS NULL']
    fill = renderer.rootRule().children()[2].symbol().symbolLayer(0)
    prop = fill.dataDefinedProperties().property(qgis_core.QgsSymbolLayer.PropertyFillColor)
    assert prop.isActive() and '"suggest"' in prop.expressionString()
    expression = qgis_core.QgsExpression(prop.expressionString())
    assert not expression.hasParserError(), expression.parserErrorString()
    context = qgis_core.QgsExpressionContext()
    context.setFields(layer.fields())
    first = next(f for f in layer.getFeatures() if f["suggest_rank"] == 1)
    context.setFeature(first)
    expression.prepare(context)
    alpha = int(str(expression.evaluate(context)).split(",")[3])
    assert not expression.hasEvalError() and alpha == 215  # rank 1: the most opaque
    assert layer.labelsEnabled() and str(LABELLED_RANKS) in layer.labeling().settings().fieldName


def test_next_tile_follows_the_suggested_order_as_tiles_are_tagged(suggested_grid):
    from qgis.gui import QgsMapCanvas

    from kdmsi_qgis.tagging import describe_tile, next_tile_to_tag, show_next_tile

    layer = suggested_grid
    canvas = QgsMapCanvas()
    canvas.resize(400, 400)
    canvas.setDestinationCrs(layer.crs())
    canvas.setLayers([layer])
    feature = show_next_tile(canvas, layer)
    assert feature["suggest_rank"] == 1 and "suggested #1" in describe_tile(feature)
    assert layer.selectedFeatureIds() == [feature.id()]
    assert canvas.extent().contains(feature.geometry().boundingBox())
    changed = layer.fields().indexOf("changed")
    layer.startEditing()
    for rank in range(1, 17):
        tile = next_tile_to_tag(layer)
        assert tile["suggest_rank"] == rank  # the next one each time a tile is tagged
        layer.changeAttributeValue(tile.id(), changed, rank % 2)
    assert next_tile_to_tag(layer) is None  # every tile tagged
    layer.rollBack()


def test_warm_start_from_a_model_of_another_backbone_is_refused(
    qgis_app, scene_pair, qgis_detector, suggested_grid, tmp_path
):
    import processing

    out = tmp_path / "m.kdmsi"
    params = {
        **_pair(scene_pair),
        "TILES": suggested_grid.source(),
        "WARM_START": str(qgis_detector),
        "OUTPUT": str(out),
        "WRITE_REPORT": False,
    }
    with pytest.raises(qgis_core.QgsProcessingException, match="--warm-start"):
        processing.run("kdmsi:train_from_tags", params)
    assert not out.exists()
