"""The Processing provider `kdmsi`: the four algorithms in the Processing Toolbox."""

from __future__ import annotations

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .icon import ICON_PATH

# What kdmsi's writers accept (`kdmsi.geo.vector.vector_driver`; GeoTIFF for probabilities).
VECTOR_EXTENSIONS = ["gpkg", "shp", "geojson", "fgb"]
RASTER_EXTENSIONS = ["tif"]


class KdmsiProvider(QgsProcessingProvider):
    """Lists `detect_changes`, `create_tile_grid`, `train_from_tags` and `evaluate_changes`."""

    def id(self) -> str:
        return "kdmsi"

    def name(self) -> str:
        return "KD-MSI change detection"

    def longName(self) -> str:  # noqa: N802 (QGIS API)
        return "KD-MSI weakly supervised change detection (PyTorch)"

    def icon(self) -> QIcon:
        return QIcon(str(ICON_PATH))

    def svgIconPath(self) -> str:  # noqa: N802 (QGIS API)
        return str(ICON_PATH)

    def loadAlgorithms(self) -> None:  # noqa: N802 (QGIS API)
        from .algorithms import all_algorithms

        for algorithm in all_algorithms():
            self.addAlgorithm(algorithm)

    def supportedOutputVectorLayerExtensions(self) -> list:  # noqa: N802 (QGIS API)
        return list(VECTOR_EXTENSIONS)

    def supportedOutputRasterLayerExtensions(self) -> list:  # noqa: N802 (QGIS API)
        return list(RASTER_EXTENSIONS)

    def defaultVectorFileExtension(self, hasGeometry: bool = True) -> str:  # noqa: N802, N803
        return "gpkg"

    def defaultRasterFileExtension(self) -> str:  # noqa: N802 (QGIS API)
        return "tif"
