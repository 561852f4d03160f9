"""What QGIS hands the plugin, mapped onto what `kdmsi` takes: files, progress, cancel, errors.

* `feedback_callbacks`: `QgsProcessingFeedback` -> kdmsi's `progress(fraction, message)` and
  `cancelled()`.
* `running_core`: kdmsi's `logging` to the Processing log; kdmsi's user errors (ValueError /
  OSError subclasses, MemoryError) and `Cancelled` to `QgsProcessingException`, same message.
  kdmsi removes partial outputs itself before raising.
* `raster_layer_file` / `vector_layer_file`: the file a layer reads, for kdmsi's GDAL/OGR I/O.
  Layers live on the main thread, so these are called from `prepareAlgorithm`.

Nothing here imports torch or kdmsi at module load.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterator, Optional

from qgis.core import (
    QgsMapLayer,
    QgsMessageLog,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingUtils,
    QgsProviderRegistry,
    QgsRasterLayer,
    QgsVectorFileWriter,
    QgsVectorLayer,
)

from .deps import install_hint, missing_dependencies

LOG_TAG = "KD-MSI"


def log_message(message: str, level: Any = None) -> None:
    """Write to the QGIS message log under the plugin's tab."""
    if level is None:
        QgsMessageLog.logMessage(message, LOG_TAG)
    else:
        QgsMessageLog.logMessage(message, LOG_TAG, level)


def require_dependencies() -> None:
    """Raise QgsProcessingException with the install command when torch/kdmsi are missing.

    Called before any torch import of the plugin, so it also keeps triton out (see
    `kdmsi.runtime.onnx_model.keep_triton_out`).
    """
    if missing_dependencies():
        raise QgsProcessingException(install_hint())
    from kdmsi.runtime.onnx_model import keep_triton_out  # importable now; torch-free

    keep_triton_out()


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


def _source_path(layer: QgsMapLayer) -> str:
    parts = QgsProviderRegistry.instance().decodeUri(layer.providerType(), layer.source())
    return parts.get("path") or ""


def raster_layer_file(layer: Optional[QgsRasterLayer], name: str) -> str:
    """File path of a file-based raster layer (kdmsi reads files with GDAL)."""
    if layer is None:
        raise QgsProcessingException(f"{name}: no raster layer given or it cannot be loaded")
    path = _source_path(layer) or layer.source()
    if not Path(path).is_file():
        raise QgsProcessingException(
            f"{name}: {layer.name()} is not a file-based raster ({layer.source()}); "
            "save it as a GeoTIFF first (Export > Save As...)"
        )
    return path


def vector_layer_file(
    layer: Optional[QgsVectorLayer],
    name: str,
    context: QgsProcessingContext,
    feedback: Optional[QgsProcessingFeedback] = None,
) -> str:
    """A file holding exactly the features of a vector layer, as its first and only layer.

    The layer's own file is used when it is a plain single-layer OGR file without a filter or
    unsaved edits; otherwise (memory layer, database, filter, edits) it is written to a
    temporary GeoPackage first, so what the analyst sees is what kdmsi reads.
    """
    if layer is None:
        raise QgsProcessingException(f"{name}: no vector layer given or it cannot be loaded")
    if layer.providerType() == "ogr" and not layer.subsetString() and not layer.isModified():
        path = _source_path(layer)
        sublayers = layer.dataProvider().subLayerCount() if layer.dataProvider() else 0
        if Path(path).is_file() and sublayers <= 1:
            return path
    target = QgsProcessingUtils.generateTempFilename(f"{name.lower()}.gpkg")
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    result = QgsVectorFileWriter.writeAsVectorFormatV3(
        layer, target, context.transformContext(), options
    )
    if result[0] != QgsVectorFileWriter.WriterError.NoError:
        raise QgsProcessingException(f"{name}: cannot copy {layer.name()} to {target}: {result[1]}")
    if feedback is not None:
        feedback.pushInfo(f"{layer.name()} copied to {target}")
    return target
