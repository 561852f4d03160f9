"""`kdmsi:create_tile_grid` -> `kdmsi.geo.tile_layer.make_tile_grid`: the grid to tag."""

from __future__ import annotations

from qgis.core import QgsProcessing, QgsProcessingException, QgsProcessingParameterVectorDestination

from ..bridge import running_core
from .base import KdmsiAlgorithm
from .parameters import extent_parameter, file_destination, int_value, number_parameter


class CreateTileGridAlgorithm(KdmsiAlgorithm):
    def name(self) -> str:
        return "create_tile_grid"

    def displayName(self) -> str:  # noqa: N802 (QGIS API)
        return "Create tile grid for tagging"

    def shortHelpString(self) -> str:  # noqa: N802 (QGIS API)
        return (
            "Writes a polygon grid of tiles over the overlap of the before and after rasters "
            "(cut to the area, when given), with an integer field 'changed' left empty. Tag "
            "tiles 1 (changed) or 0 (not changed), then run 'Train from tagged tiles'."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 (QGIS API)
        self.add_pair_parameters()
        self.addParameter(number_parameter("TILE_SIZE", "Tile size (px)", 256, 16, maxValue=4096))
        self.addParameter(extent_parameter())
        self.addParameter(
            file_destination(
                QgsProcessingParameterVectorDestination(
                    "OUTPUT", "Tile grid", QgsProcessing.TypeVectorPolygon
                )
            )
        )

    def prepareAlgorithm(self, parameters, context, feedback):  # noqa: N802 (QGIS API)
        self.prepare_pair(parameters, context)
        self.files["output"] = self.output_file(parameters, "OUTPUT", context)
        if self.files["output"] is None:
            raise QgsProcessingException("OUTPUT: choose a file for the tile grid")
        return True

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 (QGIS API)
        with running_core(feedback):
            from kdmsi.geo.tile_layer import make_tile_grid

            path = make_tile_grid(
                self.files["before"],
                self.files["after"],
                self.files["output"],
                tile_size=int_value(self, parameters, "TILE_SIZE", context),
                overwrite=True,
                bounds=self.bounds,
            )
        return {"OUTPUT": str(path)}

    def postProcessAlgorithm(self, context, feedback):  # noqa: N802 (QGIS API)
        self.style_on_load(context, self.files.get("output"), "grid")
        return {}
