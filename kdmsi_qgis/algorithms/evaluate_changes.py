"""`kdmsi:evaluate_changes` -> `kdmsi.detect.reference.evaluate_model`, and the metrics table
as an HTML page."""

from __future__ import annotations

import html
from pathlib import Path

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMapLayer,
    QgsRasterLayer,
    QgsVectorLayer,
)

from ..bridge import feedback_callbacks, raster_layer_file, running_core, vector_layer_file
from .base import KdmsiAlgorithm
from .parameters import METRICS, extent_parameter


class EvaluateChangesAlgorithm(KdmsiAlgorithm):
    def name(self) -> str:
        return "evaluate_changes"

    def displayName(self) -> str:  # noqa: N802 (QGIS API)
        return "Evaluate against a reference"

    def shortHelpString(self) -> str:  # noqa: N802 (QGIS API)
        return (
            "Runs a model on the before/after rasters like 'Detect changes' and compares the "
            "result with a reference: a mask raster (values > 0 are change, its nodata is "
            "ignored) or a polygon layer (inside a polygon is change). Prints the table of "
            "overall accuracy, F1, change IoU, mean IoU and false positive / negative rates "
            "(percent), returns each as an output, and can save it as an HTML page."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 (QGIS API)
        self.add_pair_parameters(model_bands=True)
        self.add_model_run_parameters()
        self.addParameter(
            QgsProcessingParameterMapLayer(
                "REFERENCE",
                "Reference (mask raster or change polygons)",
                types=[
                    QgsProcessing.SourceType.TypeRaster,
                    QgsProcessing.SourceType.TypeVectorPolygon,
                ],
            )
        )
        self.addParameter(extent_parameter())
        self.addParameter(
            QgsProcessingParameterFileDestination(
                "REPORT",
                "Metrics table (HTML)",
                fileFilter="HTML files (*.html)",
                optional=True,
                createByDefault=False,
            )
        )
        for key in METRICS:
            self.addOutput(QgsProcessingOutputNumber(key.upper(), f"{key} (%)"))
        self.addOutput(QgsProcessingOutputString("TABLE", "Metrics table"))

    def prepareAlgorithm(self, parameters, context, feedback):  # noqa: N802 (QGIS API)
        self.prepare_pair(parameters, context)
        reference = self.parameterAsLayer(parameters, "REFERENCE", context)
        if isinstance(reference, QgsRasterLayer):
            self.files["reference"] = raster_layer_file(reference, "REFERENCE")
        elif isinstance(reference, QgsVectorLayer):
            self.files["reference"] = vector_layer_file(reference, "REFERENCE", context, feedback)
        else:
            raise QgsProcessingException("REFERENCE: give a mask raster or a polygon layer")
        report = self.parameterAsFileOutput(parameters, "REPORT", context)
        self.files["report"] = report if parameters.get("REPORT") and report else None
        return True

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 (QGIS API)
        progress, cancelled = feedback_callbacks(feedback)
        model = self.parameterAsFile(parameters, "MODEL", context)
        with running_core(feedback):
            from kdmsi.detect.reference import evaluate_model

            evaluation = evaluate_model(
                self.files["before"],
                self.files["after"],
                model,
                self.files["reference"],
                progress=progress,
                cancelled=cancelled,
                **self.model_run_arguments(parameters, context),
            )
            table = evaluation.table(Path(model).name)
            if self.files["report"]:
                write_metrics_page(self.files["report"], table, evaluation)
        feedback.pushInfo(f"threshold {evaluation.threshold:.3f}, {evaluation.pixels} pixels\n")
        feedback.pushConsoleInfo(table)  # monospace in the log, so the columns line up
        results = {key.upper(): 100.0 * evaluation.metrics[key] for key in METRICS}
        results["TABLE"] = table
        if self.files["report"]:
            results["REPORT"] = self.files["report"]
        return results


def write_metrics_page(path: str, table: str, evaluation) -> None:
    """The metrics table as a small self-contained HTML page, written atomically."""
    from kdmsi.geo.atomic import atomic_output

    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>KD-MSI evaluation</title>"
        "</head><body><h1>Change detection against the reference</h1>"
        f"<p>Threshold {evaluation.threshold:.3f}; {evaluation.pixels} pixels compared "
        f"({evaluation.reference_kind} reference).</p><pre>{html.escape(table)}</pre>"
        "</body></html>"
    )
    with atomic_output(path, overwrite=True) as temp:
        Path(temp).write_text(page, encoding="utf-8")
