"""`kdmsi:detect_changes` -> `kdmsi.detect.with_model.detect_changes`, with the warning of
`kdmsi.detect.quality` when the two rasters differ in quality."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from qgis.core import (
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterVectorDestination,
)

from ..bridge import feedback_callbacks, running_core
from .base import KdmsiAlgorithm
from .parameters import extent_parameter, file_destination, number_parameter

NO_MODEL = (
    "MODEL: choose a model file (.kdmsi or .onnx), or tick zero-shot for a map without training"
)


class DetectChangesAlgorithm(KdmsiAlgorithm):
    zero_shot = False  # set from ZERO_SHOT in prepareAlgorithm

    def name(self) -> str:
        return "detect_changes"

    def displayName(self) -> str:  # noqa: N802 (QGIS API)
        return "Detect changes"

    def shortHelpString(self) -> str:  # noqa: N802 (QGIS API)
        return (
            "Detects changes between a before and an after raster with a kdmsi model file "
            "(.kdmsi) and writes change polygons (fields: area, mean and max probability) and "
            "optionally a float32 change-probability GeoTIFF. The after raster is warped onto "
            "the before raster's grid; only their overlap (cut to the area, when given) is "
            "analysed. Threshold: left empty, the model's own threshold is used. Runs on the "
            "GPU with Device auto when PyTorch sees one. Zero-shot needs no model: a first "
            "map before any tile is tagged, from how far the pretrained trunk's features of "
            "the two dates are apart (threshold 0.39 unless given; runtime is ignored)."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 (QGIS API)
        self.add_pair_parameters(model_bands=True)
        self.addParameter(
            QgsProcessingParameterBoolean(
                "ZERO_SHOT", "Zero-shot: no model, the pretrained features' distance", False
            )
        )
        self.add_model_run_parameters(optional_model=True)
        self.addParameter(number_parameter("MIN_AREA", "Minimum polygon area (m²)", 0.0, 0.0, True))
        self.addParameter(
            number_parameter(
                "SIMPLIFY", "Simplification tolerance (m, 0: pixel edges)", 0.0, 0.0, True
            )
        )
        self.addParameter(extent_parameter())
        self.addParameter(
            file_destination(
                QgsProcessingParameterVectorDestination(
                    "OUTPUT", "Change polygons", QgsProcessing.SourceType.TypeVectorPolygon
                )
            )
        )
        self.addParameter(
            file_destination(
                QgsProcessingParameterRasterDestination(
                    "PROBABILITY", "Change probability", optional=True, createByDefault=False
                )
            )
        )
        self.addOutput(QgsProcessingOutputNumber("POLYGON_COUNT", "Number of change polygons"))
        self.addOutput(QgsProcessingOutputNumber("THRESHOLD_USED", "Threshold used"))
        self.addOutput(
            QgsProcessingOutputString(
                "QUALITY_WARNING", "Warning about the two rasters' quality (empty: none)"
            )
        )

    def prepareAlgorithm(self, parameters, context, feedback):  # noqa: N802 (QGIS API)
        self.prepare_pair(parameters, context)
        self.files["output"] = self.output_file(parameters, "OUTPUT", context)
        if self.files["output"] is None:
            raise QgsProcessingException("OUTPUT: choose a file for the change polygons")
        self.files["probability"] = self.output_file(parameters, "PROBABILITY", context)
        self.zero_shot = self.parameterAsBoolean(parameters, "ZERO_SHOT", context)
        return True

    def checkParameterValues(self, parameters, context):  # noqa: N802 (QGIS API)
        zero_shot = self.parameterAsBoolean(parameters, "ZERO_SHOT", context)
        if not zero_shot and not self.parameterAsFile(parameters, "MODEL", context):
            return False, NO_MODEL
        return super().checkParameterValues(parameters, context)

    def processAlgorithm(  # noqa: N802 (QGIS API)
        self,
        parameters: Dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> Dict[str, Any]:
        progress, cancelled = feedback_callbacks(feedback)
        model = self.parameterAsFile(parameters, "MODEL", context)
        arguments = dict(
            min_area_m2=self.parameterAsDouble(parameters, "MIN_AREA", context),
            simplify_m=self.parameterAsDouble(parameters, "SIMPLIFY", context),
            overwrite=True,  # Processing already confirmed the destination
            progress=progress,
            cancelled=cancelled,
            **self.model_run_arguments(parameters, context),
        )
        warning = None
        with running_core(feedback):
            if self.zero_shot:
                from kdmsi.detect.zero_shot import detect_zero_shot

                del arguments["runtime"]  # the trunk runs with torch
                result = detect_zero_shot(
                    self.files["before"], self.files["after"], self.files["output"],
                    self.files["probability"], **arguments,
                )  # fmt: skip
            else:
                from kdmsi.detect.with_model import detect_changes

                warning = quality_warning(self.files["before"], self.files["after"], model)
                if warning:
                    feedback.pushWarning(warning)
                result = detect_changes(
                    self.files["before"], self.files["after"], model, self.files["output"],
                    self.files["probability"], **arguments,
                )  # fmt: skip
        feedback.pushInfo(
            f"{result.polygon_count} change polygons at threshold {result.threshold:.3f} "
            f"on {result.device}"
        )
        return {
            "OUTPUT": str(result.vector_path),
            "PROBABILITY": str(result.probability_path) if result.probability_path else None,
            "POLYGON_COUNT": result.polygon_count,
            "THRESHOLD_USED": result.threshold,
            "QUALITY_WARNING": warning or "",
        }

    def postProcessAlgorithm(self, context, feedback):  # noqa: N802 (QGIS API)
        self.style_on_load(context, self.files.get("output"), "changes")
        self.style_on_load(context, self.files.get("probability"), "probability")
        return {}


def quality_warning(before: str, after: str, model: str) -> Optional[str]:
    """`kdmsi.detect.quality.quality_warning` for a .kdmsi model; ONNX exports carry no such
    flag."""
    from kdmsi.detect.quality import quality_warning as check

    if Path(model).suffix.lower() == ".onnx":
        return None
    return check(before, after, model)
