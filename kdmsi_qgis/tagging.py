"""Tagging help on the map: the next tile to tag of a suggested grid (`kdmsi tile-grid
--suggest`), selected, zoomed to and flashed. No widgets of the dialog are touched, so the
Raster menu's action and the Train tab's button share it."""

from __future__ import annotations

from typing import Optional

from qgis.core import QgsFeature, QgsFeatureRequest, QgsVectorLayer

CONTEXT_FACTOR = 3.0  # zoom out from the tile so its neighbours show


def is_tile_grid(layer) -> bool:
    """Whether ``layer`` is a polygon layer with the tag field of a tile grid."""
    from kdmsi.recipe import TAG_FIELD  # torch-free, bundled

    return isinstance(layer, QgsVectorLayer) and layer.fields().indexOf(TAG_FIELD) >= 0


def next_tile_to_tag(layer: QgsVectorLayer) -> Optional[QgsFeature]:
    """The untagged tile with the lowest `suggest_rank`; on a grid without suggestions, the
    first untagged tile in `tile_id` order; None when every tile is tagged."""
    from kdmsi.recipe import TAG_FIELD  # torch-free, bundled

    ranked = layer.fields().indexOf("suggest_rank") >= 0
    expression = f'"{TAG_FIELD}" IS NULL' + (' AND "suggest_rank" IS NOT NULL' if ranked else "")
    order = "suggest_rank" if ranked else "tile_id"
    if layer.fields().indexOf(order) < 0:
        order = ""
    # the minimum by hand: with unsaved edits, QGIS applies a request's limit before its order
    best, best_key = None, None
    for feature in layer.getFeatures(QgsFeatureRequest().setFilterExpression(expression)):
        key = feature[order] if order else feature.id()
        if best is None or key < best_key:
            best, best_key = feature, key
    return best


def show_next_tile(canvas, layer: QgsVectorLayer) -> Optional[QgsFeature]:
    """Select the next tile to tag (`next_tile_to_tag`), zoom ``canvas`` to it with some
    surroundings and flash it; returns it (None: nothing left to tag)."""
    feature = next_tile_to_tag(layer)
    if feature is None:
        return None
    layer.selectByIds([feature.id()])
    if canvas is not None:
        canvas.zoomToFeatureIds(layer, [feature.id()])
        canvas.zoomByFactor(CONTEXT_FACTOR)
        canvas.flashFeatureIds(layer, [feature.id()])
        canvas.refresh()
    return feature


def describe_tile(feature: QgsFeature) -> str:
    """'tile 12 (row 1, col 3), suggested 1st' for the message bar."""
    names = feature.fields().names()
    text = f"tile {feature['tile_id']} (row {feature['row']}, col {feature['col']})"
    if "suggest_rank" in names and feature["suggest_rank"] is not None:
        text += f", suggested #{feature['suggest_rank']}"
    return text
