"""Small widget factories and the before/after raster picker the dialog's two tabs share."""

from __future__ import annotations

import re
from typing import Dict

from qgis.core import Qgis, QgsMapLayerProxyModel, QgsProject, QgsRasterLayer
from qgis.gui import QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtWidgets import QComboBox, QDoubleSpinBox, QFormLayout, QSpinBox

TEMPORARY = "TEMPORARY_OUTPUT"
BEFORE_HINT = re.compile(r"before|pre|t1|old|earlier", re.IGNORECASE)
AFTER_HINT = re.compile(r"after|post|t2|new|later", re.IGNORECASE)

try:  # QGIS >= 3.34 moved the filter flags to Qgis.LayerFilter
    RASTER_FILTER = Qgis.LayerFilter.RasterLayer
    POLYGON_FILTER = Qgis.LayerFilter.PolygonLayer
except AttributeError:
    RASTER_FILTER = QgsMapLayerProxyModel.RasterLayer
    POLYGON_FILTER = QgsMapLayerProxyModel.PolygonLayer


def spin_box(value: int, minimum: int, maximum: int, step: int = 1) -> QSpinBox:
    box = QSpinBox()
    box.setRange(minimum, maximum)
    box.setSingleStep(step)
    box.setValue(value)
    return box


def double_box(value: float, maximum: float, decimals: int = 2, suffix: str = "") -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setDecimals(decimals)
    box.setRange(0.0, maximum)
    box.setValue(value)
    box.setSuffix(suffix)
    return box


def file_widget(save: bool, file_filter: str) -> QgsFileWidget:
    widget = QgsFileWidget()
    widget.setStorageMode(QgsFileWidget.SaveFile if save else QgsFileWidget.GetFile)
    widget.setFilter(file_filter)
    return widget


def combo_box(items, current: int = 0) -> QComboBox:
    box = QComboBox()
    box.addItems(list(items))
    box.setCurrentIndex(current)
    return box


class PairPicker:
    """Before/after raster combo boxes, pre-filled from the project's raster layers."""

    def __init__(self, form: QFormLayout):
        self.before, self.after = QgsMapLayerComboBox(), QgsMapLayerComboBox()
        for box in (self.before, self.after):
            box.setFilters(RASTER_FILTER)
        form.addRow("Before raster", self.before)
        form.addRow("After raster", self.after)
        self.prefill()

    def prefill(self) -> None:
        """Choose layers whose names say before/after; else the first two rasters in the tree."""
        tree = QgsProject.instance().layerTreeRoot().findLayers()
        rasters = [n.layer() for n in tree if isinstance(n.layer(), QgsRasterLayer)]
        if len(rasters) < 2:
            return
        before = next((r for r in rasters if BEFORE_HINT.search(r.name())), None)
        after = next((r for r in rasters if AFTER_HINT.search(r.name()) and r is not before), None)
        if before is None or after is None:
            after, before = rasters[0], rasters[1]  # the newer image usually lies on top
        self.before.setLayer(before)
        self.after.setLayer(after)

    def parameters(self) -> Dict[str, str]:
        before, after = self.before.currentLayer(), self.after.currentLayer()
        if before is None or after is None:
            raise ValueError("choose a before and an after raster layer")
        if before.id() == after.id():
            raise ValueError("the before and after rasters are the same layer: choose two")
        return {"BEFORE": before.id(), "AFTER": after.id()}
