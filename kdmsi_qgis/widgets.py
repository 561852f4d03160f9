"""Small widget factories and the before/after raster picker the dialog's two tabs share."""

from __future__ import annotations

import re
from typing import Any, Dict

from qgis.core import Qgis, QgsMapLayerProxyModel, QgsProject, QgsRasterLayer
from qgis.gui import QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtWidgets import QComboBox, QDoubleSpinBox, QFormLayout, QLineEdit, QSpinBox

TEMPORARY = "TEMPORARY_OUTPUT"
BEFORE_HINT = re.compile(r"before|pre|t1|old|earlier", re.IGNORECASE)
AFTER_HINT = re.compile(r"after|post|t2|new|later", re.IGNORECASE)

try:  # QGIS >= 3.34 moved the filter flags to Qgis.LayerFilter
    RASTER_FILTER = Qgis.LayerFilter.RasterLayer
    POLYGON_FILTER = Qgis.LayerFilter.PolygonLayer
except AttributeError:
    RASTER_FILTER = QgsMapLayerProxyModel.Filter.RasterLayer
    POLYGON_FILTER = QgsMapLayerProxyModel.Filter.PolygonLayer


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
    widget.setStorageMode(
        QgsFileWidget.StorageMode.SaveFile if save else QgsFileWidget.StorageMode.GetFile
    )
    widget.setFilter(file_filter)
    return widget


def combo_box(items, current: int = 0) -> QComboBox:
    box = QComboBox()
    box.addItems(list(items))
    box.setCurrentIndex(current)
    return box


class PairPicker:
    """Before/after raster combo boxes, pre-filled from the project's raster layers, and the
    bands of both rasters: empty reads the default, which the box shows for the before raster
    (``model_bands``: a model's run, which reads the model's bands)."""

    def __init__(self, form: QFormLayout, model_bands: bool = False):
        self.before, self.after = QgsMapLayerComboBox(), QgsMapLayerComboBox()
        for box in (self.before, self.after):
            box.setFilters(RASTER_FILTER)
        self.model_bands = model_bands
        self.bands = QLineEdit()
        self.bands.setToolTip("1-based band numbers of both rasters, e.g. 4,3,2")
        form.addRow("Before raster", self.before)
        form.addRow("After raster", self.after)
        form.addRow("Bands", self.bands)
        self.before.layerChanged.connect(self.show_default_bands)
        self.prefill()
        self.show_default_bands()

    def show_default_bands(self, *_) -> None:
        """Show the bands an empty box reads from the current before raster, and why."""
        from kdmsi.recipe import DEFAULT_BANDS  # torch-free, bundled

        default = DEFAULT_BANDS
        layer = self.before.currentLayer()
        if layer is not None:
            try:
                from kdmsi.geo.bands import describe_default_bands  # GDAL only

                default = describe_default_bands(layer.source())
            except Exception:  # noqa: BLE001 - not a file GDAL reads: the rule in words
                pass
        if self.model_bands:
            default = f"the model's; zero-shot: {default}"
        self.bands.setPlaceholderText(f"empty: {default}")

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

    def parameters(self) -> Dict[str, Any]:
        before, after = self.before.currentLayer(), self.after.currentLayer()
        if before is None or after is None:
            raise ValueError("choose a before and an after raster layer")
        if before.id() == after.id():
            raise ValueError("the before and after rasters are the same layer: choose two")
        parameters: Dict[str, Any] = {"BEFORE": before.id(), "AFTER": after.id()}
        if self.bands.text().strip():
            from kdmsi.options import OptionError, check_bands  # torch-free, bundled

            try:
                parameters["BANDS"] = check_bands(self.bands.text())
            except OptionError as exc:
                raise ValueError(f"Bands: {exc}") from None
        return parameters
