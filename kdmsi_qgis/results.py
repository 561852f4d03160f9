"""Putting a run's output files into the project: loaded, styled, in a group on top."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from qgis.core import QgsLayerTreeGroup, QgsMapLayer, QgsProject, QgsRasterLayer, QgsVectorLayer

from .styles import apply_style

# (path, layer name, "vector" or "raster", style kind of `kdmsi_qgis.styles.STYLES`)
LayerSpec = Tuple[str, str, str, str]


def load_layer(path: str, name: str, kind: str) -> QgsMapLayer:
    """A valid vector (OGR) or raster (GDAL) layer for `path`; ValueError when unreadable."""
    layer = QgsVectorLayer(path, name, "ogr") if kind == "vector" else QgsRasterLayer(path, name)
    if not layer.isValid():
        raise ValueError(f"QGIS cannot open {path}")
    return layer


def add_layers_in_group(
    specs: Sequence[LayerSpec], group_name: str, project: Optional[QgsProject] = None
) -> Tuple[QgsLayerTreeGroup, List[QgsMapLayer]]:
    """Load, style and add the layers of `specs` (in that order, first on top) to a new group
    at the top of the layer tree; missing paths (optional outputs left empty) are skipped."""
    project = project or QgsProject.instance()
    root = project.layerTreeRoot()
    group = root.insertGroup(0, group_name)
    layers = []
    for path, name, kind, style in specs:
        if not path or not Path(path).exists():
            continue
        layer = load_layer(path, name, kind)
        apply_style(layer, style)
        project.addMapLayer(layer, False)
        group.addLayer(layer)
        layers.append(layer)
    return group, layers


def detection_specs(results: dict) -> List[LayerSpec]:
    """The layers of a `kdmsi:detect_changes` run: polygons above the probability raster."""
    return [
        (results.get("OUTPUT") or "", "Change polygons", "vector", "changes"),
        (results.get("PROBABILITY") or "", "Change probability", "raster", "probability"),
    ]


def add_detection_results(
    results: dict, group_name: str, project: Optional[QgsProject] = None
) -> Tuple[QgsLayerTreeGroup, List[QgsMapLayer]]:
    """Add a detection's outputs to the project in group `group_name`, styled."""
    return add_layers_in_group(detection_specs(results), group_name, project)


def add_tile_grid(
    path: str, name: str = "Tiles to tag", project: Optional[QgsProject] = None
) -> QgsVectorLayer:
    """Add a tile grid for tagging to the top of the project, styled by its `changed` field."""
    project = project or QgsProject.instance()
    layer = load_layer(path, name, "vector")
    apply_style(layer, "grid")
    project.addMapLayer(layer, False)
    project.layerTreeRoot().insertLayer(0, layer)
    return layer
