"""The plugin's dialog: pick two rasters and a model, run detection or training in the background.

Two tabs build the parameters of the `kdmsi` Processing algorithms; runs go through
`kdmsi_qgis.tasks.AlgorithmRun` (the same algorithms as the Processing Toolbox, as QGIS
tasks) and their outputs are added to the project by `kdmsi_qgis.results`. This module holds
widgets only: no file is read or written and no kdmsi code runs here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Dict, Optional

from qgis.core import Qgis, QgsMapLayerProxyModel, QgsProject, QgsRasterLayer
from qgis.gui import QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import QUrl
from qgis.PyQt.QtGui import QDesktopServices
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from .algorithms import (
    BACKBONES,
    CD_EPOCHS,
    DEFAULT_BACKBONE,
    DETECTOR_BACKBONES,
    DEVICES,
    KD_EPOCHS,
    MODEL_FILTER,
    RUNTIMES,
)
from .bridge import log_message
from .deps import install_hint, missing_dependencies
from .estimates import training_time_text
from .results import add_detection_results, add_tile_grid
from .tasks import AlgorithmRun, SpeedProbe

TITLE = "KD-MSI Change Detection"
TEMPORARY = "TEMPORARY_OUTPUT"
BEFORE_HINT = re.compile(r"before|pre|t1|old|earlier", re.IGNORECASE)
AFTER_HINT = re.compile(r"after|post|t2|new|later", re.IGNORECASE)

try:  # QGIS >= 3.34 moved the filter flags to Qgis.LayerFilter
    RASTER_FILTER = Qgis.LayerFilter.RasterLayer
    POLYGON_FILTER = Qgis.LayerFilter.PolygonLayer
except AttributeError:
    RASTER_FILTER = QgsMapLayerProxyModel.RasterLayer
    POLYGON_FILTER = QgsMapLayerProxyModel.PolygonLayer


def _spin(value: int, minimum: int, maximum: int, step: int = 1) -> QSpinBox:
    box = QSpinBox()
    box.setRange(minimum, maximum)
    box.setSingleStep(step)
    box.setValue(value)
    return box


def _double(value: float, maximum: float, decimals: int = 2, suffix: str = "") -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setDecimals(decimals)
    box.setRange(0.0, maximum)
    box.setValue(value)
    box.setSuffix(suffix)
    return box


def _file_widget(save: bool, file_filter: str) -> QgsFileWidget:
    widget = QgsFileWidget()
    widget.setStorageMode(QgsFileWidget.SaveFile if save else QgsFileWidget.GetFile)
    widget.setFilter(file_filter)
    return widget


def _combo(items, current: int = 0) -> QComboBox:
    box = QComboBox()
    box.addItems(list(items))
    box.setCurrentIndex(current)
    return box


class PairPicker:
    """Before/after raster combo boxes, pre-filled from the project's raster layers."""

    def __init__(self, form: QFormLayout):
        self.before, self.after = QgsMapLayerComboBox(), QgsMapLayerComboBox()
        for box in (self.before, self.after):
            box.setFilters(RASTER_FILTER)
        form.addRow("Before raster", self.before)
        form.addRow("After raster", self.after)
        self.prefill()

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

    def parameters(self) -> Dict[str, str]:
        before, after = self.before.currentLayer(), self.after.currentLayer()
        if before is None or after is None:
            raise ValueError("choose a before and an after raster layer")
        if before.id() == after.id():
            raise ValueError("the before and after rasters are the same layer: choose two")
        return {"BEFORE": before.id(), "AFTER": after.id()}


class KdmsiDialog(QDialog):
    """Detect changes / Train from tagged tiles, with a shared progress bar, cancel and log."""

    def __init__(self, iface, parent: Optional[QWidget] = None):
        super().__init__(parent or (iface.mainWindow() if iface else None))
        self.iface = iface
        self.run: Optional[AlgorithmRun] = None
        self.setWindowTitle(TITLE)
        self.setObjectName("kdmsiDialog")
        self.tabs = QTabWidget()
        self.tabs.addTab(self._detect_tab(), "Detect changes")
        self.tabs.addTab(self._train_tab(), "Train from tagged tiles")
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(500)
        self.log.setFixedHeight(110)
        bar = QHBoxLayout()
        bar.addWidget(self.progress, 1)
        bar.addWidget(self.cancel_button)
        close = QDialogButtonBox(QDialogButtonBox.Close)
        close.rejected.connect(self.close)
        layout = QVBoxLayout(self)
        for part in (self.tabs, self.log):
            layout.addWidget(part)
        layout.addLayout(bar)
        layout.addWidget(close)
        self.resize(560, 640)
        self.show_missing_dependencies()

    # ------------------------------------------------------------------------ tabs
    def _detect_tab(self) -> QWidget:
        tab, form = QWidget(), QFormLayout()
        tab.setLayout(form)
        self.detect_pair = PairPicker(form)
        self.model_file = _file_widget(False, MODEL_FILTER)
        form.addRow("Model file", self.model_file)
        self.tile_size = _spin(256, 32, 4096, 32)
        self.overlap = _spin(64, 0, 1024, 16)
        self.batch_size = _spin(4, 1, 256)
        self.device = _combo(DEVICES)
        self.runtime = _combo(RUNTIMES)
        self.use_threshold = QCheckBox("own threshold")
        self.threshold = _double(0.5, 1.0)
        self.threshold.setEnabled(False)
        self.use_threshold.toggled.connect(self.threshold.setEnabled)
        threshold_row = QHBoxLayout()
        threshold_row.addWidget(self.use_threshold)
        threshold_row.addWidget(self.threshold, 1)
        self.min_area = _double(0.0, 1e9, 1, " m²")
        self.simplify = _double(0.0, 1e4, 2, " m")
        self.detect_output = _file_widget(True, "GeoPackage (*.gpkg)")
        self.detect_output.lineEdit().setPlaceholderText("[temporary file]")
        self.write_probability = QCheckBox("also write the change-probability raster")
        self.write_probability.setChecked(True)
        for label, widget in (
            ("Tile size (px)", self.tile_size),
            ("Tile overlap (px)", self.overlap),
            ("Batch size", self.batch_size),
            ("Device", self.device),
            ("Runtime", self.runtime),
            ("Threshold", threshold_row),
            ("Minimum area", self.min_area),
            ("Simplify", self.simplify),
            ("Change polygons", self.detect_output),
            ("", self.write_probability),
        ):
            form.addRow(label, widget)
        self.detect_button = QPushButton("Detect changes")
        self.detect_button.clicked.connect(self.start_detection)
        form.addRow(self.detect_button)
        return tab

    def _train_tab(self) -> QWidget:
        tab, form = QWidget(), QFormLayout()
        tab.setLayout(form)
        self.train_pair = PairPicker(form)
        self.grid_tile_size = _spin(256, 32, 4096, 32)
        form.addRow("Tile size (px)", self.grid_tile_size)
        self.grid_output = _file_widget(True, "GeoPackage (*.gpkg)")
        self.grid_output.lineEdit().setPlaceholderText("[temporary file: save it to keep tags]")
        form.addRow("Tile grid", self.grid_output)
        self.grid_button = QPushButton("1. Create a tile grid to tag")
        self.grid_button.clicked.connect(self.start_grid)
        form.addRow(self.grid_button)
        form.addRow(
            QLabel(
                "2. Set the field 'changed' of some tiles to 1 (changed) or 0 (not changed); "
                "at least two of each."
            )
        )
        self.tags = QgsMapLayerComboBox()
        self.tags.setFilters(POLYGON_FILTER)
        form.addRow("Tagged tiles", self.tags)
        self.kd_backbone = _combo(BACKBONES, BACKBONES.index(DEFAULT_BACKBONE))
        self.detector_backbone = _combo(
            DETECTOR_BACKBONES, DETECTOR_BACKBONES.index(DEFAULT_BACKBONE)
        )
        self.speed_button = QPushButton("Measure speed here")
        self.speed_button.clicked.connect(self.measure_speed)
        self.speed_label = QLabel(reference_speed_text())
        self.speed_label.setWordWrap(True)
        self.speeds: Dict[str, tuple] = {}
        self.detector_backbone.currentIndexChanged.connect(self.show_speed)
        detector_row = QHBoxLayout()
        detector_row.addWidget(self.detector_backbone, 1)
        detector_row.addWidget(self.speed_button)
        self.quality = QCheckBox("the two images differ in quality (resolution, blur, noise)")
        self.write_report = QCheckBox("write a training report (HTML) beside the model")
        self.write_report.setChecked(True)
        self.kd_epochs = _spin(KD_EPOCHS, 1, 1000)
        self.cd_epochs = _spin(CD_EPOCHS, 1, 1000)
        self.train_batch = _spin(8, 1, 256)
        self.time_label = QLabel()
        self.time_label.setWordWrap(True)
        for signal in (
            self.tags.layerChanged,
            self.kd_epochs.valueChanged,
            self.cd_epochs.valueChanged,
            self.kd_backbone.currentIndexChanged,
            self.detector_backbone.currentIndexChanged,
            self.grid_tile_size.valueChanged,
        ):
            signal.connect(self.show_expected_time)
        self.train_device = _combo(DEVICES)
        self.model_output = _file_widget(True, "KD-MSI model (*.kdmsi)")
        for label, widget in (
            ("Teacher/student backbone", self.kd_backbone),
            ("Detector backbone", detector_row),
            ("", self.speed_label),
            ("", self.quality),
            ("Teacher/student epochs", self.kd_epochs),
            ("Detector epochs", self.cd_epochs),
            ("", self.time_label),
            ("Batch size", self.train_batch),
            ("Device", self.train_device),
            ("Model file", self.model_output),
            ("", self.write_report),
        ):
            form.addRow(label, widget)
        self.train_button = QPushButton("3. Train the change detector")
        self.train_button.clicked.connect(self.start_training)
        self.report_button = QPushButton("Open the training report")
        self.report_button.setEnabled(False)
        self.report_button.clicked.connect(self.open_report)
        self.report_path = ""
        buttons = QHBoxLayout()
        buttons.addWidget(self.train_button, 1)
        buttons.addWidget(self.report_button)
        form.addRow(buttons)
        return tab

    # ------------------------------------------------------------------ parameters
    def detection_parameters(self) -> dict:
        """Parameters of `kdmsi:detect_changes` from the Detect tab; ValueError when incomplete."""
        params = self.detect_pair.parameters()
        model = self.model_file.filePath()
        if not model or not Path(model).is_file():
            raise ValueError("choose a model file (.kdmsi) that exists")
        params.update(
            MODEL=model,
            TILE_SIZE=self.tile_size.value(),
            OVERLAP=self.overlap.value(),
            BATCH_SIZE=self.batch_size.value(),
            DEVICE=self.device.currentIndex(),
            RUNTIME=self.runtime.currentIndex(),
            THRESHOLD=self.threshold.value() if self.use_threshold.isChecked() else None,
            MIN_AREA=self.min_area.value(),
            SIMPLIFY=self.simplify.value(),
            OUTPUT=self.detect_output.filePath() or TEMPORARY,
            PROBABILITY=TEMPORARY if self.write_probability.isChecked() else None,
        )
        return params

    def grid_parameters(self) -> dict:
        params = self.train_pair.parameters()
        params.update(
            TILE_SIZE=self.grid_tile_size.value(), OUTPUT=self.grid_output.filePath() or TEMPORARY
        )
        return params

    def training_parameters(self) -> dict:
        params = self.train_pair.parameters()
        tags = self.tags.currentLayer()
        if tags is None:
            raise ValueError("choose the tagged tile layer (create one with step 1)")
        if tags.fields().indexOf("changed") < 0:
            raise ValueError(f"{tags.name()} has no field 'changed': create the grid with step 1")
        output = self.model_output.filePath()
        if not output:
            raise ValueError("choose where to save the model file (.kdmsi)")
        if not output.lower().endswith(".kdmsi"):
            output += ".kdmsi"
        params.update(
            TILES=tags.id(),
            KD_BACKBONE=self.kd_backbone.currentIndex(),
            DETECTOR_BACKBONE=self.detector_backbone.currentIndex(),
            QUALITY_ROBUST=self.quality.isChecked(),
            WRITE_REPORT=self.write_report.isChecked(),
            KD_EPOCHS=self.kd_epochs.value(),
            CD_EPOCHS=self.cd_epochs.value(),
            BATCH_SIZE=self.train_batch.value(),
            TILE_SIZE=0,  # the tagged tiles' own size
            DEVICE=self.train_device.currentIndex(),
            OUTPUT=output,
        )
        return params

    def show_expected_time(self, *_) -> None:
        """The expected training time of the tagged tiles with these settings (2 CPU cores)."""
        before = self.train_pair.before.currentLayer()
        pixel = before.rasterUnitsPerPixelX() if isinstance(before, QgsRasterLayer) else None
        self.time_label.setText(
            training_time_text(
                self.tags.currentLayer(),
                pixel,
                self.grid_tile_size.value(),
                self.kd_epochs.value(),
                self.cd_epochs.value(),
                BACKBONES[self.kd_backbone.currentIndex()],
                DETECTOR_BACKBONES[self.detector_backbone.currentIndex()],
            )
        )

    # ------------------------------------------------------------------------ runs
    def start_detection(self) -> None:
        self._start("kdmsi:detect_changes", self.detection_parameters, self._detection_done)

    def start_grid(self) -> None:
        self._start("kdmsi:create_tile_grid", self.grid_parameters, self._grid_done)

    def start_training(self) -> None:
        self._start("kdmsi:train_from_tags", self.training_parameters, self._training_done)

    def _start(self, algorithm_id: str, build: Callable[[], dict], done: Callable) -> None:
        if self.run is not None:
            return
        if self.show_missing_dependencies():
            return
        try:
            parameters = build()
        except ValueError as exc:
            self.notify(str(exc), Qgis.Warning)
            return
        self.log.clear()
        self.progress.setValue(0)
        run = AlgorithmRun(algorithm_id, parameters, parent=self)
        run.progress.connect(lambda value: self.progress.setValue(int(value)))
        run.message.connect(self.log.appendPlainText)
        run.finished.connect(lambda ok, results, error: self._finished(ok, results, error, done))
        self.run = run
        self._set_running(True)
        if not run.start():
            self.run = None
            self._set_running(False)

    def cancel(self) -> None:
        if self.run is not None:
            self.log.appendPlainText("Cancelling after the current batch…")
            self.run.cancel()

    def _set_running(self, running: bool) -> None:
        for button in (self.detect_button, self.grid_button, self.train_button):
            button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _finished(self, ok: bool, results: dict, error: str, done: Callable) -> None:
        self.run = None
        self._set_running(False)
        if ok:
            self.progress.setValue(100)
            try:
                done(results)
            except ValueError as exc:
                self.notify(str(exc), Qgis.Critical)
        elif error:
            self.notify(error, Qgis.Critical)
        else:
            self.notify("cancelled; no partial output was kept", Qgis.Info)

    def _detection_done(self, results: dict) -> None:
        before = self.detect_pair.before.currentLayer()
        after = self.detect_pair.after.currentLayer()
        name = f"Changes {before.name()} → {after.name()}" if before and after else "Changes"
        _, layers = add_detection_results(results, name)
        count = int(results.get("POLYGON_COUNT") or 0)
        self.notify(f"{count} change polygons added to the group '{name}'", Qgis.Success)
        if results.get("QUALITY_WARNING"):
            self.notify(results["QUALITY_WARNING"], Qgis.Warning)
        if layers and self.iface is not None:
            self.iface.mapCanvas().refresh()

    def _grid_done(self, results: dict) -> None:
        layer = add_tile_grid(results["OUTPUT"])
        self.tags.setLayer(layer)
        self.notify(
            f"{layer.featureCount()} tiles added as '{layer.name()}': tag them, then train",
            Qgis.Success,
        )

    def _training_done(self, results: dict) -> None:
        self.model_file.setFilePath(results["OUTPUT"])
        self.notify(f"model saved to {results['OUTPUT']} and chosen for detection", Qgis.Success)
        self.report_path = results.get("REPORT") or ""
        self.report_button.setEnabled(bool(self.report_path))
        if self.report_path:
            self.log.appendPlainText(f"training report: {self.report_path}")

    def open_report(self) -> None:
        if self.report_path:
            QDesktopServices.openUrl(QUrl.fromLocalFile(self.report_path))

    # ------------------------------------------------------------------------ speed
    def measure_speed(self) -> None:
        """Time every detector backbone here, in the background (a few seconds each)."""
        if self.show_missing_dependencies():
            return
        self.speed_button.setEnabled(False)
        self.speed_label.setText("Measuring each backbone on this machine…")
        device = DEVICES[self.train_device.currentIndex()]
        before = self.train_pair.before.currentLayer()
        size = (before.width(), before.height()) if before is not None else None
        tile = self.grid_tile_size.value()
        overlap = self.overlap.value()  # the detect tab's, as detection will use it
        self.probe = SpeedProbe(DETECTOR_BACKBONES, device, tile, size, overlap, parent=self)
        self.probe.finished.connect(self._speed_measured)
        self.probe.start()

    def _speed_measured(self, seconds: dict, error: str) -> None:
        self.speed_button.setEnabled(True)
        if error:
            self.speed_label.setText("Speed not measured")
            self.notify(f"speed probe failed: {error}", Qgis.Warning)
            return
        self.speeds = seconds
        self.show_speed()

    def show_speed(self) -> None:
        """Seconds per tile of each backbone and the expected detection time for this pair."""
        if not self.speeds:
            return
        chosen = DETECTOR_BACKBONES[self.detector_backbone.currentIndex()]
        parts = [f"{name} {tile:.2f} s" for name, (tile, _) in self.speeds.items()]
        text = "Per tile pair here: " + ", ".join(parts) + "."
        pair_seconds = self.speeds.get(chosen, (None, None))[1]
        if pair_seconds is not None:
            text += f" Detecting the chosen pair with {chosen}: about {pair_seconds / 60:.1f} min."
        self.speed_label.setText(text)

    # ---------------------------------------------------------------------- messages
    def show_missing_dependencies(self) -> bool:
        """Tell the user what to install when torch/kdmsi are missing; True if something is."""
        if not missing_dependencies():
            return False
        self.notify(install_hint(), Qgis.Critical)
        return True

    def notify(self, message: str, level) -> None:
        """Message bar (when QGIS runs), the QGIS log and the dialog's own log."""
        log_message(message, level)
        self.log.appendPlainText(message)
        if self.iface is not None:
            bar = self.iface.messageBar()
            bar.pushMessage(TITLE, message, level, 0 if level == Qgis.Critical else 8)


def reference_speed_text() -> str:
    """The speed label before anything was measured here: the reference figures of 2 CPU
    cores (`kdmsi.runtime.speed.REFERENCE_SECONDS_PER_TILE`), so the choice of backbone is
    informed."""
    try:
        from kdmsi.runtime.speed import REFERENCE_SECONDS_PER_TILE
    except ImportError:  # kdmsi missing: the dialog says what to install elsewhere
        return "Expected speed on this machine: not measured yet"
    reference = REFERENCE_SECONDS_PER_TILE
    parts = [
        f"{name} {reference[(name, 'torch')]:.2f} s ({reference[(name, 'onnx')]:.2f} s ONNX)"
        for name in DETECTOR_BACKBONES
        if {(name, "torch"), (name, "onnx")} <= set(reference)
    ]
    return (
        "Not measured here yet. Per tile pair on 2 CPU cores: "
        + ", ".join(parts)
        + ". A GPU is tens of times faster."
    )
