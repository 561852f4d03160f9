"""The dialog's "Detect changes" tab: two rasters and a model file -> `kdmsi:detect_changes`.

`DetectTab` is a mixin of `kdmsi_qgis.dialog.KdmsiDialog`: it builds the tab's widgets as
attributes of the dialog, turns them into the algorithm's parameters, and adds the results to
the project when the run (started by the dialog's `_start`) is done.
"""

from __future__ import annotations

from pathlib import Path

from qgis.core import Qgis
from qgis.PyQt.QtWidgets import QCheckBox, QFormLayout, QHBoxLayout, QPushButton, QWidget

from .algorithms import DEVICES, MODEL_FILTER, RUNTIMES
from .results import add_detection_results
from .widgets import TEMPORARY, PairPicker, combo_box, double_box, file_widget, spin_box


class DetectTab:
    """The Detect tab's widgets, parameters and results (mixed into `KdmsiDialog`)."""

    def _detect_tab(self) -> QWidget:
        tab, form = QWidget(), QFormLayout()
        tab.setLayout(form)
        self.detect_pair = PairPicker(form, model_bands=True)
        self.model_file = file_widget(False, MODEL_FILTER)
        form.addRow("Model file", self.model_file)
        self.zero_shot = QCheckBox("zero-shot: no model, a first map before any tag")
        self.zero_shot.toggled.connect(lambda on: self.model_file.setEnabled(not on))
        form.addRow("", self.zero_shot)
        # at their minimum the boxes say "model's" / "auto": the library's defaults (the model's
        # tile size, its export's overlap) apply, so an ONNX export runs at its own size
        self.tile_size = spin_box(0, 0, 4096, 32)
        self.tile_size.setSpecialValueText("model's")
        self.overlap = spin_box(-1, -1, 1024, 16)
        self.overlap.setSpecialValueText("auto")
        self.batch_size = spin_box(4, 1, 256)
        self.device = combo_box(DEVICES)
        self.runtime = combo_box(RUNTIMES)
        self.use_threshold = QCheckBox("own threshold")
        self.threshold = double_box(0.5, 1.0)
        self.threshold.setEnabled(False)
        self.use_threshold.toggled.connect(self.threshold.setEnabled)
        threshold_row = QHBoxLayout()
        threshold_row.addWidget(self.use_threshold)
        threshold_row.addWidget(self.threshold, 1)
        self.min_area = double_box(0.0, 1e9, 1, " m²")
        self.simplify = double_box(0.0, 1e4, 2, " m")
        self.detect_output = file_widget(True, "GeoPackage (*.gpkg)")
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

    def detection_parameters(self) -> dict:
        """Parameters of `kdmsi:detect_changes` from the Detect tab; ValueError when incomplete."""
        params = self.detect_pair.parameters()
        zero_shot = self.zero_shot.isChecked()
        model = "" if zero_shot else self.model_file.filePath()
        if not zero_shot and (not model or not Path(model).is_file()):
            raise ValueError("choose a model file (.kdmsi) that exists, or tick zero-shot")
        params.update(
            ZERO_SHOT=zero_shot,
            MODEL=model or None,
            TILE_SIZE=self.tile_size.value(),
            OVERLAP=self.overlap.value() if self.overlap.value() >= 0 else None,
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

    def start_detection(self) -> None:
        self._start("kdmsi:detect_changes", self.detection_parameters, self._detection_done)

    def _detection_done(self, results: dict) -> None:
        before = self.detect_pair.before.currentLayer()
        after = self.detect_pair.after.currentLayer()
        name = f"Changes {before.name()} → {after.name()}" if before and after else "Changes"
        _, layers = add_detection_results(results, name)
        count = int(results.get("POLYGON_COUNT") or 0)
        if count == 0:
            from kdmsi.detect.outputs import no_change_message

            self.notify(
                no_change_message(float(results["THRESHOLD_USED"])), Qgis.MessageLevel.Warning
            )
        else:
            self.notify(
                f"{count} change polygons added to the group '{name}'", Qgis.MessageLevel.Success
            )
        if results.get("QUALITY_WARNING"):
            self.notify(results["QUALITY_WARNING"], Qgis.MessageLevel.Warning)
        if layers and self.iface is not None:
            self.iface.mapCanvas().refresh()
