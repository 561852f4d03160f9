"""Processing algorithms: each maps its parameters onto one `kdmsi` function, nothing more.

* `detect_changes`   -> `kdmsi.pipeline.detect_changes`
* `create_tile_grid` -> `kdmsi.pipeline.make_tile_grid`
* `train_from_tags`  -> `kdmsi.tagged.train_from_tags`

`QgsProcessingFeedback` is mapped onto kdmsi's one progress contract: `progress(fraction,
message)` sets the percentage and pushes each new message; `cancelled` is
`feedback.isCanceled`. kdmsi's user errors (ValueError / OSError subclasses, MemoryError) and
`kdmsi.progress.Cancelled` become `QgsProcessingException` with the same message; kdmsi
removes partial outputs itself before raising.

Why `FlagNoThreading`: by default Processing runs algorithms in a QThread pool worker. PyTorch
in such a worker is fragile inside QGIS: its OpenMP/intra-op thread pool and CUDA context are
created lazily on first use and bound to that thread, the worker holds the GIL through long
C++ calls so the GUI freezes anyway, and crashes/deadlocks at torch initialisation or at QGIS
exit have been seen in plugins that do this. Running on the main thread (QGIS keeps the
progress dialog responsive through the feedback object) is the robust choice.

kdmsi (and so torch) is imported only inside `processAlgorithm`; loading this module never
needs torch, so QGIS starts even when it is missing and the algorithms explain how to install it.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

from qgis.core import (
    QgsMessageLog,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterVectorDestination,
    QgsProcessingParameterVectorLayer,
    QgsProcessingUtils,
    QgsProviderRegistry,
    QgsVectorFileWriter,
)
from qgis.PyQt.QtGui import QIcon

from .deps import install_hint, missing_dependencies
from .provider import ICON_PATH

LOG_TAG = "KD-MSI"
DEVICES = ["auto", "cpu", "cuda"]
BACKBONES = ["resnet18", "resnet34", "resnet50"]

try:  # QGIS >= 3.36 scoped enum; the old name stays for 3.22
    from qgis.core import Qgis

    NO_THREADING = Qgis.ProcessingAlgorithmFlag.NoThreading
except AttributeError:
    NO_THREADING = QgsProcessingAlgorithm.FlagNoThreading


def log_message(message: str, level: Any = None) -> None:
    """Write to the QGIS message log under the plugin's tab."""
    if level is None:
        QgsMessageLog.logMessage(message, LOG_TAG)
    else:
        QgsMessageLog.logMessage(message, LOG_TAG, level)


# --------------------------------------------------------------------------------- helpers


def feedback_callbacks(feedback: Optional[QgsProcessingFeedback]):
    """(progress, cancelled) for kdmsi from a Processing feedback object."""
    last = {"message": None}

    def progress(fraction: float, message: str) -> None:
        if feedback is None:
            return
        feedback.setProgress(100.0 * float(fraction))
        if message and message != last["message"]:
            last["message"] = message
            feedback.pushInfo(message)

    def cancelled() -> bool:
        return feedback is not None and feedback.isCanceled()

    return progress, cancelled


class _FeedbackLogHandler(logging.Handler):
    """Forwards kdmsi's `logging` records to the Processing log (info and warnings)."""

    def __init__(self, feedback: QgsProcessingFeedback):
        super().__init__(logging.INFO)
        self.feedback = feedback

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            if record.levelno >= logging.WARNING and hasattr(self.feedback, "pushWarning"):
                self.feedback.pushWarning(message)
            else:
                self.feedback.pushInfo(message)
        except Exception:  # noqa: BLE001 (a log line must never break a run)
            self.handleError(record)


@contextlib.contextmanager
def running_core(feedback: Optional[QgsProcessingFeedback]) -> Iterator[None]:
    """Route kdmsi's log to `feedback` and map its user errors to QgsProcessingException."""
    require_dependencies()
    from kdmsi.progress import Cancelled

    logger = logging.getLogger("kdmsi")
    handler = _FeedbackLogHandler(feedback) if feedback is not None else None
    old_level = logger.level
    if handler is not None:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        yield
    except Cancelled as exc:
        raise QgsProcessingException(f"{exc}; no partial output was kept") from exc
    except (ValueError, OSError, MemoryError) as exc:
        log_message(f"{type(exc).__name__}: {exc}")
        raise QgsProcessingException(str(exc)) from exc
    finally:
        if handler is not None:
            logger.removeHandler(handler)
            logger.setLevel(old_level)


def require_dependencies() -> None:
    """Raise QgsProcessingException with the install command when torch/kdmsi are missing."""
    if missing_dependencies():
        raise QgsProcessingException(install_hint())


def raster_path(alg: QgsProcessingAlgorithm, parameters, name: str, context) -> str:
    """File path of a raster layer parameter (kdmsi reads files with GDAL)."""
    layer = alg.parameterAsRasterLayer(parameters, name, context)
    if layer is None:
        raise QgsProcessingException(f"{name}: no raster layer given or it cannot be loaded")
    parts = QgsProviderRegistry.instance().decodeUri(layer.providerType(), layer.source())
    path = parts.get("path") or layer.source()
    if not Path(path).is_file():
        raise QgsProcessingException(
            f"{name}: {layer.name()} is not a file-based raster ({layer.source()}); "
            "save it as a GeoTIFF first"
        )
    return path


def vector_file(alg: QgsProcessingAlgorithm, parameters, name: str, context, feedback) -> str:
    """A file holding exactly the layer of a vector parameter (its first and only layer).

    The layer's own file is used when it is a plain single-layer OGR file without a filter or
    unsaved edits; otherwise it is written to a temporary GeoPackage first.
    """
    layer = alg.parameterAsVectorLayer(parameters, name, context)
    if layer is None:
        raise QgsProcessingException(f"{name}: no vector layer given or it cannot be loaded")
    if layer.providerType() == "ogr" and not layer.subsetString() and not layer.isModified():
        parts = QgsProviderRegistry.instance().decodeUri("ogr", layer.source())
        path = parts.get("path") or ""
        sublayers = layer.dataProvider().subLayerCount() if layer.dataProvider() else 0
        if Path(path).is_file() and sublayers <= 1:
            return path
    target = QgsProcessingUtils.generateTempFilename(f"{name.lower()}.gpkg")
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    result = QgsVectorFileWriter.writeAsVectorFormatV3(
        layer, target, context.transformContext(), options
    )
    if result[0] != QgsVectorFileWriter.NoError:
        raise QgsProcessingException(f"{name}: cannot copy {layer.name()} to {target}: {result[1]}")
    if feedback is not None:
        feedback.pushInfo(f"{layer.name()} copied to {target}")
    return target


def output_path(alg: QgsProcessingAlgorithm, parameters, name: str, context) -> Optional[str]:
    """The file path Processing chose for a destination parameter; None when left empty."""
    if parameters.get(name) in (None, ""):
        return None
    path = alg.parameterAsOutputLayer(parameters, name, context)
    if not path:
        return None
    if "|" in path or ":" in Path(path).name or path.startswith(("memory:", "ogr:", "postgis:")):
        raise QgsProcessingException(f"{name}: kdmsi writes files only; choose a file, not {path}")
    return path


def _int(alg, parameters, name, context) -> int:
    return int(alg.parameterAsInt(parameters, name, context))


def _device_parameter() -> QgsProcessingParameterEnum:
    return QgsProcessingParameterEnum("DEVICE", "Device", options=DEVICES, defaultValue=0)


# ------------------------------------------------------------------------------ algorithms


class KdmsiAlgorithm(QgsProcessingAlgorithm):
    """Common parts: group, icon, no threading, dependency check."""

    def createInstance(self):  # noqa: N802 (QGIS API)
        return type(self)()

    def group(self) -> str:
        return ""

    def groupId(self) -> str:  # noqa: N802 (QGIS API)
        return ""

    def icon(self) -> QIcon:
        return QIcon(str(ICON_PATH))

    def flags(self):
        return super().flags() | NO_THREADING

    def checkParameterValues(self, parameters, context):  # noqa: N802 (QGIS API)
        if missing_dependencies():
            return False, install_hint()
        return super().checkParameterValues(parameters, context)

    def device(self, parameters, context) -> str:
        return DEVICES[self.parameterAsEnum(parameters, "DEVICE", context)]


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
            "the before raster's grid; only their overlap is analysed. Threshold: left empty, "
            "the model's own threshold is used. Runs on the GPU with Device auto when PyTorch "
            "sees one."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 (QGIS API)
        self.addParameter(QgsProcessingParameterRasterLayer("BEFORE", "Before raster"))
        self.addParameter(QgsProcessingParameterRasterLayer("AFTER", "After raster"))
        self.addParameter(
            QgsProcessingParameterFile("MODEL", "Model file (.kdmsi)", extension="kdmsi")
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                "TILE_SIZE", "Tile size (px)", defaultValue=256, minValue=16
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                "OVERLAP", "Tile overlap (px)", defaultValue=64, minValue=0
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber("BATCH_SIZE", "Batch size", defaultValue=4, minValue=1)
        )
        self.addParameter(_device_parameter())
        self.addParameter(
            QgsProcessingParameterNumber(
                "THRESHOLD",
                "Probability threshold (empty: the model's)",
                type=QgsProcessingParameterNumber.Double,
                optional=True,
                minValue=0.0,
                maxValue=1.0,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                "MIN_AREA",
                "Minimum polygon area (m²)",
                type=QgsProcessingParameterNumber.Double,
                defaultValue=0.0,
                minValue=0.0,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                "SIMPLIFY",
                "Simplification tolerance (m, 0: pixel edges)",
                type=QgsProcessingParameterNumber.Double,
                defaultValue=0.0,
                minValue=0.0,
            )
        )
        vector = QgsProcessingParameterVectorDestination(
            "OUTPUT", "Change polygons", QgsProcessing.TypeVectorPolygon
        )
        vector.setSupportsNonFileBasedOutput(False)  # kdmsi writes the file itself
        self.addParameter(vector)
        probability = QgsProcessingParameterRasterDestination(
            "PROBABILITY", "Change probability", optional=True, createByDefault=False
        )
        probability.setSupportsNonFileBasedOutput(False)
        self.addParameter(probability)
        self.addOutput(QgsProcessingOutputNumber("POLYGON_COUNT", "Number of change polygons"))
        self.addOutput(QgsProcessingOutputNumber("THRESHOLD_USED", "Threshold used"))

    def processAlgorithm(  # noqa: N802 (QGIS API)
        self,
        parameters: Dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> Dict[str, Any]:
        require_dependencies()
        before = raster_path(self, parameters, "BEFORE", context)
        after = raster_path(self, parameters, "AFTER", context)
        model = self.parameterAsFile(parameters, "MODEL", context)
        out_vector = output_path(self, parameters, "OUTPUT", context)
        if out_vector is None:
            raise QgsProcessingException("OUTPUT: choose a file for the change polygons")
        out_probability = output_path(self, parameters, "PROBABILITY", context)
        threshold = None
        if parameters.get("THRESHOLD") not in (None, ""):
            threshold = self.parameterAsDouble(parameters, "THRESHOLD", context)
        progress, cancelled = feedback_callbacks(feedback)
        with running_core(feedback):
            from kdmsi.pipeline import detect_changes

            result = detect_changes(
                before,
                after,
                model,
                out_vector,
                out_probability,
                tile_size=_int(self, parameters, "TILE_SIZE", context),
                overlap_px=_int(self, parameters, "OVERLAP", context),
                batch_size=_int(self, parameters, "BATCH_SIZE", context),
                device=self.device(parameters, context),
                threshold=threshold,
                min_area_m2=self.parameterAsDouble(parameters, "MIN_AREA", context),
                simplify_m=self.parameterAsDouble(parameters, "SIMPLIFY", context),
                overwrite=True,  # Processing already confirmed the destination
                progress=progress,
                cancelled=cancelled,
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
        }


class CreateTileGridAlgorithm(KdmsiAlgorithm):
    def name(self) -> str:
        return "create_tile_grid"

    def displayName(self) -> str:  # noqa: N802 (QGIS API)
        return "Create tile grid for tagging"

    def shortHelpString(self) -> str:  # noqa: N802 (QGIS API)
        return (
            "Writes a polygon grid of tiles over the overlap of the before and after rasters, "
            "with an integer field 'changed' left empty. Tag tiles 1 (changed) or 0 (not "
            "changed), then run 'Train from tagged tiles'."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 (QGIS API)
        self.addParameter(QgsProcessingParameterRasterLayer("BEFORE", "Before raster"))
        self.addParameter(QgsProcessingParameterRasterLayer("AFTER", "After raster"))
        self.addParameter(
            QgsProcessingParameterNumber(
                "TILE_SIZE", "Tile size (px)", defaultValue=256, minValue=1
            )
        )
        grid = QgsProcessingParameterVectorDestination(
            "OUTPUT", "Tile grid", QgsProcessing.TypeVectorPolygon
        )
        grid.setSupportsNonFileBasedOutput(False)
        self.addParameter(grid)

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 (QGIS API)
        require_dependencies()
        before = raster_path(self, parameters, "BEFORE", context)
        after = raster_path(self, parameters, "AFTER", context)
        out = output_path(self, parameters, "OUTPUT", context)
        if out is None:
            raise QgsProcessingException("OUTPUT: choose a file for the tile grid")
        with running_core(feedback):
            from kdmsi.pipeline import make_tile_grid

            path = make_tile_grid(
                before,
                after,
                out,
                tile_size=_int(self, parameters, "TILE_SIZE", context),
                overwrite=True,
            )
        return {"OUTPUT": str(path)}


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
            "DeepLabV3+ detector saved as a .kdmsi model file. Needs a few tiles of each "
            "tag. Slow on a CPU; use a GPU (Device auto or cuda) for real data."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 (QGIS API)
        self.addParameter(QgsProcessingParameterRasterLayer("BEFORE", "Before raster"))
        self.addParameter(QgsProcessingParameterRasterLayer("AFTER", "After raster"))
        self.addParameter(
            QgsProcessingParameterVectorLayer(
                "TILES", "Tagged tiles (field 'changed')", [QgsProcessing.TypeVectorPolygon]
            )
        )
        self.addParameter(
            QgsProcessingParameterEnum("BACKBONE", "Backbone", options=BACKBONES, defaultValue=2)
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                "KD_EPOCHS", "Teacher/student epochs", defaultValue=20, minValue=1
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                "CD_EPOCHS", "Detector epochs", defaultValue=50, minValue=1
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber("BATCH_SIZE", "Batch size", defaultValue=8, minValue=1)
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                "TILE_SIZE", "Tile size (px)", defaultValue=256, minValue=16
            )
        )
        self.addParameter(_device_parameter())
        self.addParameter(
            QgsProcessingParameterFileDestination(
                "OUTPUT", "Model file", fileFilter="KD-MSI model (*.kdmsi)"
            )
        )

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 (QGIS API)
        require_dependencies()
        before = raster_path(self, parameters, "BEFORE", context)
        after = raster_path(self, parameters, "AFTER", context)
        tiles = vector_file(self, parameters, "TILES", context, feedback)
        out = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        if not out:
            raise QgsProcessingException("OUTPUT: choose a file for the model")
        backbone = BACKBONES[self.parameterAsEnum(parameters, "BACKBONE", context)]
        batch_size = _int(self, parameters, "BATCH_SIZE", context)
        device = self.device(parameters, context)
        progress, cancelled = feedback_callbacks(feedback)
        with running_core(feedback):
            from kdmsi.tagged import TagTrainingConfig, train_from_tags
            from kdmsi.training.cd import CDConfig
            from kdmsi.training.kd import KDConfig

            config = TagTrainingConfig(
                tile_size=_int(self, parameters, "TILE_SIZE", context),
                kd=KDConfig(
                    backbone=backbone,
                    epochs=_int(self, parameters, "KD_EPOCHS", context),
                    batch_size=batch_size,
                    device=device,
                ),
                cd=CDConfig(
                    backbone=backbone,
                    epochs=_int(self, parameters, "CD_EPOCHS", context),
                    batch_size=batch_size,
                    device=device,
                ),
            )
            train_from_tags(
                before,
                after,
                tiles,
                out,
                config,
                overwrite=True,
                progress=progress,
                cancelled=cancelled,
            )
        return {"OUTPUT": out}


def all_algorithms() -> list:
    return [DetectChangesAlgorithm(), CreateTileGridAlgorithm(), TrainFromTagsAlgorithm()]
