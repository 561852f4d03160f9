"""Processing algorithms: each maps its parameters onto one `kdmsi` function, nothing more.

* `detect_changes`   -> `kdmsi.detect.pipeline.detect_changes`
* `create_tile_grid` -> `kdmsi.detect.pipeline.make_tile_grid`
* `train_from_tags`  -> `kdmsi.training.from_tags.train_from_tags`
* `evaluate_changes` -> `kdmsi.metrics.reference.evaluate_model`

Threading: every algorithm resolves its layer parameters to files in `prepareAlgorithm`,
which Processing calls on the main thread (a layer with unsaved edits or in memory is written
to a temporary GeoPackage there); `processAlgorithm` then works on file paths only, so it is
safe in the worker thread that Processing, and the plugin dialog's
`QgsProcessingAlgRunnerTask`, run it in. PyTorch releases the GIL inside its kernels, so QGIS
stays responsive while a model runs. The flags declare cancel support (honoured between
batches and epochs); none asks for the main thread.

kdmsi (and so torch) is imported only inside `processAlgorithm`; loading this module never
needs torch, so QGIS starts even when it is missing and the algorithms explain how to install it.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Dict, Optional

from qgis.core import (
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMapLayer,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterVectorDestination,
    QgsProcessingParameterVectorLayer,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.PyQt.QtGui import QIcon

from .bridge import (
    feedback_callbacks,
    raster_layer_file,
    require_dependencies,
    running_core,
    vector_layer_file,
)
from .deps import install_hint, missing_dependencies
from .provider import ICON_PATH
from .styles import StylePostProcessor

DEVICES = ["auto", "cpu", "cuda"]
RUNTIMES = ["auto", "torch", "onnx"]
# kdmsi.choices / kdmsi.recipe, spelled out so that this module loads without kdmsi (the
# plugin then says what to install); tests/test_plugin_processing.py checks they agree
BACKBONES = ["efficientnet_lite0", "resnet18", "resnet34", "resnet50"]
DETECTOR_BACKBONES = [*BACKBONES, "mobilenet_v3_large"]
DEFAULT_BACKBONE = "efficientnet_lite0"
KD_EPOCHS, CD_EPOCHS = 12, 6
MODEL_FILTER = "kdmsi model (*.kdmsi *.KDMSI);;ONNX export of a kdmsi model (*.onnx *.ONNX)"
METRICS = ("OA", "F1", "cIoU", "mIoU", "FP", "FN")

try:  # QGIS >= 3.36 scoped enum; the old name stays for 3.22
    from qgis.core import Qgis

    CAN_CANCEL = Qgis.ProcessingAlgorithmFlag.CanCancel
except AttributeError:
    CAN_CANCEL = QgsProcessingAlgorithm.FlagCanCancel


def _int(alg, parameters, name, context) -> int:
    return int(alg.parameterAsInt(parameters, name, context))


def _number(name: str, label: str, default, minimum, double: bool = False, **kw):
    kind = QgsProcessingParameterNumber.Double if double else QgsProcessingParameterNumber.Integer
    return QgsProcessingParameterNumber(
        name, label, type=kind, defaultValue=default, minValue=minimum, **kw
    )


def _threshold_parameter() -> QgsProcessingParameterNumber:
    return _number(
        "THRESHOLD",
        "Probability threshold (empty: the model's)",
        None,
        0.0,
        double=True,
        optional=True,
        maxValue=1.0,
    )


def _model_parameter() -> QgsProcessingParameterFile:
    return QgsProcessingParameterFile(
        "MODEL", "Model file (.kdmsi, or its .onnx export)", fileFilter=MODEL_FILTER
    )


def _extent_parameter() -> QgsProcessingParameterExtent:
    return QgsProcessingParameterExtent(
        "EXTENT", "Area to analyse (empty: the whole overlap)", optional=True
    )


def _file_destination(parameter):
    parameter.setSupportsNonFileBasedOutput(False)  # kdmsi writes the file itself
    return parameter


# ------------------------------------------------------------------------------ algorithms


class KdmsiAlgorithm(QgsProcessingAlgorithm):
    """Common parts: icon, flags, dependency check, the raster pair resolved on the main thread."""

    def __init__(self):
        super().__init__()
        self.files: Dict[str, Optional[str]] = {}
        self.bounds: Optional[list] = None

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
            return False, install_hint()
        return super().checkParameterValues(parameters, context)

    def device(self, parameters, context) -> str:
        return DEVICES[self.parameterAsEnum(parameters, "DEVICE", context)]

    def add_pair_parameters(self) -> None:
        self.addParameter(QgsProcessingParameterRasterLayer("BEFORE", "Before raster"))
        self.addParameter(QgsProcessingParameterRasterLayer("AFTER", "After raster"))

    def prepare_pair(self, parameters, context) -> QgsRasterLayer:
        """Resolve BEFORE/AFTER (and EXTENT, in the before raster's CRS); main thread."""
        require_dependencies()
        before = self.parameterAsRasterLayer(parameters, "BEFORE", context)
        self.files["before"] = raster_layer_file(before, "BEFORE")
        after = self.parameterAsRasterLayer(parameters, "AFTER", context)
        self.files["after"] = raster_layer_file(after, "AFTER")
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

    def add_model_run_parameters(self) -> None:
        """MODEL and how to run it: tile size, overlap, batch, device, runtime, threshold."""
        self.addParameter(_model_parameter())
        self.addParameter(_number("TILE_SIZE", "Tile size (px)", 256, 16))
        self.addParameter(_number("OVERLAP", "Tile overlap (px)", 64, 0))
        self.addParameter(_number("BATCH_SIZE", "Batch size", 4, 1))
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
        self.addParameter(_threshold_parameter())

    def model_run_arguments(self, parameters, context) -> Dict[str, Any]:
        """Keyword arguments of `kdmsi.detect.pipeline.detect_changes` from
        `add_model_run_parameters`."""
        threshold = None
        if parameters.get("THRESHOLD") not in (None, ""):
            threshold = self.parameterAsDouble(parameters, "THRESHOLD", context)
        return {
            "tile_size": _int(self, parameters, "TILE_SIZE", context),
            "overlap_px": _int(self, parameters, "OVERLAP", context),
            "batch_size": _int(self, parameters, "BATCH_SIZE", context),
            "device": self.device(parameters, context),
            "runtime": RUNTIMES[self.parameterAsEnum(parameters, "RUNTIME", context)],
            "threshold": threshold,
            "bounds": self.bounds,
        }

    def style_on_load(self, context: QgsProcessingContext, path: Optional[str], kind: str):
        """Style the output at `path` when Processing loads it into the project."""
        if path and context.willLoadLayerOnCompletion(path):
            details = context.layerToLoadOnCompletionDetails(path)
            details.setPostProcessor(StylePostProcessor.for_kind(kind))


class DetectChangesAlgorithm(KdmsiAlgorithm):
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
            "GPU with Device auto when PyTorch sees one."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 (QGIS API)
        self.add_pair_parameters()
        self.add_model_run_parameters()
        self.addParameter(_number("MIN_AREA", "Minimum polygon area (m²)", 0.0, 0.0, True))
        self.addParameter(
            _number("SIMPLIFY", "Simplification tolerance (m, 0: pixel edges)", 0.0, 0.0, True)
        )
        self.addParameter(_extent_parameter())
        self.addParameter(
            _file_destination(
                QgsProcessingParameterVectorDestination(
                    "OUTPUT", "Change polygons", QgsProcessing.TypeVectorPolygon
                )
            )
        )
        self.addParameter(
            _file_destination(
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
        return True

    def processAlgorithm(  # noqa: N802 (QGIS API)
        self,
        parameters: Dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> Dict[str, Any]:
        progress, cancelled = feedback_callbacks(feedback)
        model = self.parameterAsFile(parameters, "MODEL", context)
        with running_core(feedback):
            from kdmsi.detect.pipeline import detect_changes

            warning = quality_warning(self.files["before"], self.files["after"], model)
            if warning:
                feedback.pushWarning(warning)
            result = detect_changes(
                self.files["before"],
                self.files["after"],
                model,
                self.files["output"],
                self.files["probability"],
                min_area_m2=self.parameterAsDouble(parameters, "MIN_AREA", context),
                simplify_m=self.parameterAsDouble(parameters, "SIMPLIFY", context),
                overwrite=True,  # Processing already confirmed the destination
                progress=progress,
                cancelled=cancelled,
                **self.model_run_arguments(parameters, context),
            )
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
        self.addParameter(_number("TILE_SIZE", "Tile size (px)", 256, 1))
        self.addParameter(_extent_parameter())
        self.addParameter(
            _file_destination(
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
            from kdmsi.detect.pipeline import make_tile_grid

            path = make_tile_grid(
                self.files["before"],
                self.files["after"],
                self.files["output"],
                tile_size=_int(self, parameters, "TILE_SIZE", context),
                overwrite=True,
                bounds=self.bounds,
            )
        return {"OUTPUT": str(path)}

    def postProcessAlgorithm(self, context, feedback):  # noqa: N802 (QGIS API)
        self.style_on_load(context, self.files.get("output"), "grid")
        return {}


class TrainFromTagsAlgorithm(KdmsiAlgorithm):
    def name(self) -> str:
        return "train_from_tags"

    def displayName(self) -> str:  # noqa: N802 (QGIS API)
        return "Train from tagged tiles"

    def shortHelpString(self) -> str:  # noqa: N802 (QGIS API)
        return (
            "Trains a change detector from tiles tagged changed (1) / not changed (0) in the "
            "field 'changed' (empty: ignored): a teacher/student pair with knowledge "
            "distillation, multiscale sigmoid inference pseudo labels, then a Siamese "
            "DeepLabV3+ detector saved as a .kdmsi model file. Needs at least two tiles of "
            "each tag (tens of each are better). The default trunk, EfficientNet-Lite0, starts "
            "from ImageNet weights that install with the plugin's dependencies; about 9 minutes "
            "for 100 tagged 256 px tiles on 2 CPU cores, much less on a GPU. Training stops "
            "with a message when the pseudo labels come out empty or all change."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 (QGIS API)
        self.add_pair_parameters()
        self.addParameter(
            QgsProcessingParameterVectorLayer(
                "TILES", "Tagged tiles (field 'changed')", [QgsProcessing.TypeVectorPolygon]
            )
        )
        self.addParameter(
            QgsProcessingParameterEnum(
                "KD_BACKBONE",
                "Teacher/student backbone",
                options=BACKBONES,
                defaultValue=BACKBONES.index(DEFAULT_BACKBONE),
            )
        )
        self.addParameter(
            QgsProcessingParameterEnum(
                "DETECTOR_BACKBONE",
                "Detector backbone",
                options=DETECTOR_BACKBONES,
                defaultValue=DETECTOR_BACKBONES.index(DEFAULT_BACKBONE),
            )
        )
        self.addParameter(
            QgsProcessingParameterBoolean(
                "QUALITY_ROBUST",
                "The two images differ in quality (train a quality-robust detector, HiCD)",
                defaultValue=False,
            )
        )
        self.addParameter(_number("KD_EPOCHS", "Teacher/student epochs", KD_EPOCHS, 1))
        self.addParameter(_number("CD_EPOCHS", "Detector epochs", CD_EPOCHS, 1))
        self.addParameter(_number("BATCH_SIZE", "Batch size", 8, 1))
        self.addParameter(
            _number("TILE_SIZE", "Tile size (px; 0: the tagged tiles' own size)", 0, 0)
        )
        self.addParameter(
            QgsProcessingParameterEnum("DEVICE", "Device", options=DEVICES, defaultValue=0)
        )
        self.addParameter(
            QgsProcessingParameterFileDestination(
                "OUTPUT", "Model file", fileFilter="KD-MSI model (*.kdmsi)"
            )
        )
        self.addParameter(
            QgsProcessingParameterBoolean(
                "WRITE_REPORT",
                "Write a training report (HTML) in <model name>_report beside the model",
                defaultValue=True,
            )
        )
        self.addOutput(QgsProcessingOutputFile("REPORT", "Training report (index.html)"))

    def prepareAlgorithm(self, parameters, context, feedback):  # noqa: N802 (QGIS API)
        self.prepare_pair(parameters, context)
        tiles = self.parameterAsVectorLayer(parameters, "TILES", context)
        self.files["tiles"] = vector_layer_file(tiles, "TILES", context, feedback)
        self.files["output"] = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        if not self.files["output"]:
            raise QgsProcessingException("OUTPUT: choose a file for the model")
        return True

    def training_config(self, parameters, context):
        """The `kdmsi.training.from_tags.TagTrainingConfig` the parameters describe."""
        from kdmsi.training.cd import CDConfig
        from kdmsi.training.from_tags import TagTrainingConfig
        from kdmsi.training.kd import KDConfig

        kd_backbone = BACKBONES[self.parameterAsEnum(parameters, "KD_BACKBONE", context)]
        detector_backbone = DETECTOR_BACKBONES[
            self.parameterAsEnum(parameters, "DETECTOR_BACKBONE", context)
        ]
        batch_size = _int(self, parameters, "BATCH_SIZE", context)
        device = self.device(parameters, context)
        return TagTrainingConfig(
            tile_size=_int(self, parameters, "TILE_SIZE", context) or None,
            kd=KDConfig(
                backbone=kd_backbone,
                epochs=_int(self, parameters, "KD_EPOCHS", context),
                batch_size=batch_size,
                device=device,
            ),
            cd=CDConfig(
                backbone=detector_backbone,
                epochs=_int(self, parameters, "CD_EPOCHS", context),
                batch_size=batch_size,
                device=device,
            ),
            quality_robust=self.parameterAsBoolean(parameters, "QUALITY_ROBUST", context),
        )

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 (QGIS API)
        progress, cancelled = feedback_callbacks(feedback)
        with running_core(feedback):
            from kdmsi.reports.runs import default_report_dir
            from kdmsi.training.from_tags import train_from_tags

            report_dir = None
            if self.parameterAsBoolean(parameters, "WRITE_REPORT", context):
                report_dir = default_report_dir(self.files["output"])
            summary = train_from_tags(
                self.files["before"],
                self.files["after"],
                self.files["tiles"],
                self.files["output"],
                self.training_config(parameters, context),
                overwrite=True,
                progress=progress,
                cancelled=cancelled,
                report_dir=report_dir,
            )
        weights = summary["weights"]
        feedback.pushInfo(
            f"trunk weights: teacher and student {weights['kd']}; detector {weights['detector']}"
        )
        results = {"OUTPUT": self.files["output"], "REPORT": None}
        if report_dir is not None:
            results["REPORT"] = str(Path(report_dir) / "index.html")
            feedback.pushInfo(f"training report: {results['REPORT']}")
        return results


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
        self.add_pair_parameters()
        self.add_model_run_parameters()
        self.addParameter(
            QgsProcessingParameterMapLayer(
                "REFERENCE",
                "Reference (mask raster or change polygons)",
                types=[QgsProcessing.TypeRaster, QgsProcessing.TypeVectorPolygon],
            )
        )
        self.addParameter(_extent_parameter())
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
            from kdmsi.metrics.reference import evaluate_model

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


def quality_warning(before: str, after: str, model: str) -> Optional[str]:
    """`kdmsi.detect.quality.quality_warning` for a .kdmsi model; ONNX exports carry no such
    flag."""
    from kdmsi.detect.quality import quality_warning as check

    if Path(model).suffix.lower() == ".onnx":
        return None
    return check(before, after, model)


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


def all_algorithms() -> list:
    return [
        DetectChangesAlgorithm(),
        CreateTileGridAlgorithm(),
        TrainFromTagsAlgorithm(),
        EvaluateChangesAlgorithm(),
    ]
