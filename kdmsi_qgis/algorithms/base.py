"""`KdmsiAlgorithm`, the base of the four kdmsi Processing algorithms: icon, flags, the
dependency check, the before/after rasters (and the area to analyse) resolved to files on the
main thread, the parameters and arguments of a model run, output files and their style on load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import qgis.utils
from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingParameterEnum,
    QgsProcessingParameterRasterLayer,
    QgsRasterLayer,
)
from qgis.PyQt.QtGui import QIcon

from ..bridge import raster_layer_file, require_dependencies
from ..dependencies_page import offer_dependencies_page
from ..deps import install_hint, missing_dependencies
from ..icon import ICON_PATH
from ..styles import StylePostProcessor
from .parameters import (
    DEVICES,
    RUNTIMES,
    bands_parameter,
    int_value,
    model_parameter,
    number_parameter,
    optional_int,
    threshold_parameter,
)

try:  # QGIS >= 3.36 scoped enum; the old name stays for 3.22
    from qgis.core import Qgis

    CAN_CANCEL = Qgis.ProcessingAlgorithmFlag.CanCancel
except AttributeError:
    CAN_CANCEL = QgsProcessingAlgorithm.Flag.FlagCanCancel


class KdmsiAlgorithm(QgsProcessingAlgorithm):
    """Common parts: icon, flags, dependency check, the raster pair resolved on the main thread."""

    def __init__(self):
        super().__init__()
        self.files: Dict[str, Optional[str]] = {}
        self.bounds: Optional[list] = None
        self.bands: Optional[list] = None

    def createInstance(self):  # noqa: N802 (QGIS API)
        return type(self)()

    def group(self) -> str:
        return ""

    def groupId(self) -> str:  # noqa: N802 (QGIS API)
        return ""

    def icon(self) -> QIcon:
        return QIcon(str(ICON_PATH))

    def flags(self):
        return super().flags() | CAN_CANCEL

    def checkParameterValues(self, parameters, context):  # noqa: N802 (QGIS API)
        if missing_dependencies():
            hint = install_hint()
            offer_dependencies_page(qgis.utils.iface, hint)  # a button to the page (desktop)
            return False, hint
        return super().checkParameterValues(parameters, context)

    def device(self, parameters, context) -> str:
        return DEVICES[self.parameterAsEnum(parameters, "DEVICE", context)]

    def add_pair_parameters(self, model_bands: bool = False) -> None:
        """BEFORE, AFTER and BANDS (`bands_parameter`; ``model_bands``: a model's run)."""
        self.addParameter(QgsProcessingParameterRasterLayer("BEFORE", "Before raster"))
        self.addParameter(QgsProcessingParameterRasterLayer("AFTER", "After raster"))
        self.addParameter(bands_parameter(model_bands))

    def prepare_pair(self, parameters, context) -> QgsRasterLayer:
        """Resolve BEFORE/AFTER (and EXTENT, in the before raster's CRS); main thread."""
        require_dependencies()
        before = self.parameterAsRasterLayer(parameters, "BEFORE", context)
        self.files["before"] = raster_layer_file(before, "BEFORE")
        after = self.parameterAsRasterLayer(parameters, "AFTER", context)
        self.files["after"] = raster_layer_file(after, "AFTER")
        chosen = self.parameterAsInts(parameters, "BANDS", context)
        self.bands = [int(b) for b in chosen] or None  # None: the library's default
        self.bounds = None
        if self.parameterDefinition("EXTENT") is not None and parameters.get("EXTENT"):
            rect = self.parameterAsExtent(parameters, "EXTENT", context, before.crs())
            if not rect.isNull() and not rect.isEmpty():
                self.bounds = [rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum()]
        return before

    def output_file(self, parameters, name: str, context) -> Optional[str]:
        """The file Processing chose for a destination parameter; None when left empty."""
        if parameters.get(name) in (None, ""):
            return None
        path = self.parameterAsOutputLayer(parameters, name, context)
        if not path:
            return None
        if "|" in path or ":" in Path(path).name or path.startswith(("memory:", "postgis:")):
            raise QgsProcessingException(
                f"{name}: kdmsi writes files only; choose a file, not {path}"
            )
        return path

    def add_model_run_parameters(self, optional_model: bool = False) -> None:
        """MODEL and how to run it: tile size, overlap, batch, device, runtime, threshold."""
        label = "Model file (.kdmsi, or its .onnx export)"
        if optional_model:
            label = "Model file (.kdmsi or .onnx; empty with zero-shot)"
        self.addParameter(model_parameter(label=label, optional=optional_model))
        # the library's defaults (the model's tile size, its export's overlap) apply when these
        # are left at 0 / empty: an ONNX export runs only at its own tile size
        self.addParameter(
            number_parameter("TILE_SIZE", "Tile size (px; 0: the model's own)", 0, 0, maxValue=4096)
        )
        self.addParameter(
            number_parameter(
                "OVERLAP",
                "Tile overlap (px; empty: the model's export's, else 64, at most a quarter tile)",
                None,
                0,
                maxValue=4095,
                optional=True,
            )
        )
        self.addParameter(number_parameter("BATCH_SIZE", "Batch size", 4, 1, maxValue=1024))
        self.addParameter(
            QgsProcessingParameterEnum("DEVICE", "Device", options=DEVICES, defaultValue=0)
        )
        self.addParameter(
            QgsProcessingParameterEnum(
                "RUNTIME",
                "Runtime (auto: ONNX Runtime when installed and faster)",
                options=RUNTIMES,
                defaultValue=0,
            )
        )
        self.addParameter(threshold_parameter())

    def model_run_arguments(self, parameters, context) -> Dict[str, Any]:
        """Keyword arguments of `kdmsi.detect.with_model.detect_changes` from
        `add_model_run_parameters`."""
        threshold = None
        if parameters.get("THRESHOLD") not in (None, ""):
            threshold = self.parameterAsDouble(parameters, "THRESHOLD", context)
        return {
            "tile_size": int_value(self, parameters, "TILE_SIZE", context) or None,
            "overlap_px": optional_int(self, parameters, "OVERLAP", context),
            "batch_size": int_value(self, parameters, "BATCH_SIZE", context),
            "device": self.device(parameters, context),
            "runtime": RUNTIMES[self.parameterAsEnum(parameters, "RUNTIME", context)],
            "threshold": threshold,
            "bands": self.bands,
            "bounds": self.bounds,
        }

    def style_on_load(self, context: QgsProcessingContext, path: Optional[str], kind: str):
        """Style the output at `path` when Processing loads it into the project."""
        if path and context.willLoadLayerOnCompletion(path):
            details = context.layerToLoadOnCompletionDetails(path)
            details.setPostProcessor(StylePostProcessor.for_kind(kind))
