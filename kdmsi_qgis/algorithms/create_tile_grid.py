"""`kdmsi:create_tile_grid` -> `kdmsi.geo.tile_layer.make_tile_grid`, or with SUGGEST
`kdmsi.detect.suggest.make_suggested_tile_grid`: the grid to tag, ranked."""

from __future__ import annotations

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterVectorDestination,
    QgsProcessingParameterVectorLayer,
)

from ..bridge import feedback_callbacks, running_core, vector_layer_file
from .base import KdmsiAlgorithm
from .parameters import (
    extent_parameter,
    file_destination,
    int_value,
    model_parameter,
    number_parameter,
)


class CreateTileGridAlgorithm(KdmsiAlgorithm):
    def name(self) -> str:
        return "create_tile_grid"

    def displayName(self) -> str:  # noqa: N802 (QGIS API)
        return "Create tile grid for tagging"

    def shortHelpString(self) -> str:  # noqa: N802 (QGIS API)
        return (
            "Writes a polygon grid of tiles over the overlap of the before and after rasters "
            "(cut to the area, when given), with an integer field 'changed' left empty. Tag "
            "tiles 1 (changed) or 0 (not changed), then run 'Train from tagged tiles'. With "
            "'Suggest what to tag', the fields change_score, suggest and suggest_rank say "
            "which tiles to tag first (rank 1 first): without a model, the tiles most likely "
            "changed by the zero-shot map, alternating with a spread of likely unchanged ones; "
            "with a trained model, the tiles it is least sure about. Tags of an earlier grid "
            "of the same tiles are carried over. Tile size 0 (the default) picks it from the "
            "raster, so that even a small region gives enough tiles to tag (a 1024 px raster "
            "gets 128 px tiles); the log says which."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 (QGIS API)
        self.add_pair_parameters()
        self.addParameter(
            number_parameter(
                "TILE_SIZE", "Tile size (px; 0: chosen from the raster)", 0, 0, maxValue=4096
            )
        )
        self.addParameter(extent_parameter())
        self.addParameter(
            QgsProcessingParameterBoolean("SUGGEST", "Suggest what to tag first", True)
        )
        self.addParameter(
            model_parameter("MODEL", "Rank by a trained model (empty: zero-shot)", optional=True)
        )
        self.addParameter(
            QgsProcessingParameterVectorLayer(
                "TAGS_FROM",
                "Keep the tags of an earlier grid of the same tiles",
                [QgsProcessing.SourceType.TypeVectorPolygon],
                optional=True,
            )
        )
        self.addParameter(
            file_destination(
                QgsProcessingParameterVectorDestination(
                    "OUTPUT", "Tile grid", QgsProcessing.SourceType.TypeVectorPolygon
                )
            )
        )
        self.addOutput(QgsProcessingOutputString("FIRST", "Tiles to tag first (row, col)"))

    def prepareAlgorithm(self, parameters, context, feedback):  # noqa: N802 (QGIS API)
        self.prepare_pair(parameters, context)
        self.files["output"] = self.output_file(parameters, "OUTPUT", context)
        if self.files["output"] is None:
            raise QgsProcessingException("OUTPUT: choose a file for the tile grid")
        self.files["model"] = self.parameterAsFile(parameters, "MODEL", context) or None
        tags = self.parameterAsVectorLayer(parameters, "TAGS_FROM", context)
        self.files["tags"] = None
        if tags is not None:
            self.files["tags"] = vector_layer_file(tags, "TAGS_FROM", context, feedback)
        return True

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 (QGIS API)
        tile_size = int_value(self, parameters, "TILE_SIZE", context) or None  # 0: from the raster
        suggest = self.parameterAsBoolean(parameters, "SUGGEST", context)
        if not suggest and (self.files["model"] or self.files["tags"]):
            raise QgsProcessingException("MODEL and TAGS_FROM rank the tiles: tick SUGGEST")
        progress, cancelled = feedback_callbacks(feedback)
        first = ""
        with running_core(feedback):
            if suggest:
                from kdmsi.detect.suggest import make_suggested_tile_grid

                path, suggestions = make_suggested_tile_grid(
                    self.files["before"], self.files["after"], self.files["output"], tile_size,
                    tags_from=self.files["tags"], model=self.files["model"], bands=self.bands,
                    bounds=self.bounds,
                    overwrite=True, progress=progress, cancelled=cancelled,
                )  # fmt: skip
                first = "; ".join(f"{r}, {c}" for r, c in suggestions.first(5))
                feedback.pushInfo(f"ranked by {suggestions.source}; tag first: {first}")
            else:
                from kdmsi.geo.tile_layer import make_tile_grid

                path = make_tile_grid(
                    self.files["before"], self.files["after"], self.files["output"],
                    tile_size=tile_size, overwrite=True, bounds=self.bounds,
                )  # fmt: skip
        return {"OUTPUT": str(path), "FIRST": first}

    def postProcessAlgorithm(self, context, feedback):  # noqa: N802 (QGIS API)
        self.style_on_load(context, self.files.get("output"), "grid")
        return {}
