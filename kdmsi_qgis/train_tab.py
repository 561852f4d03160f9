"""The dialog's "Train from tagged tiles" tab: the tile grid to tag (`kdmsi:create_tile_grid`),
then training (`kdmsi:train_from_tags`), with the expected training time and the detector
backbones' speed measured here (`kdmsi_qgis.tasks.SpeedProbe`).

`TrainTab` is a mixin of `kdmsi_qgis.dialog.KdmsiDialog`: it builds the tab's widgets as
attributes of the dialog, turns them into the algorithms' parameters, and handles their results
once the runs (started by the dialog's `_start`) are done. It reads two widgets of the Detect
tab: the tile overlap (for the speed probe) and the model file (set to the trained model).
The texts it shows come from `kdmsi_qgis.estimates`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

from qgis.core import Qgis, QgsRasterLayer
from qgis.gui import QgsMapLayerComboBox
from qgis.PyQt.QtCore import QUrl
from qgis.PyQt.QtGui import QDesktopServices
from qgis.PyQt.QtWidgets import QCheckBox, QFormLayout, QHBoxLayout, QLabel, QPushButton, QWidget

from .algorithms import CD_EPOCHS, DEVICES, KD_EPOCHS, backbone_choices
from .estimates import measured_speed_text, reference_speed_text, training_time_text
from .results import add_tile_grid
from .tasks import SpeedProbe
from .widgets import POLYGON_FILTER, TEMPORARY, PairPicker, combo_box, file_widget, spin_box


class TrainTab:
    """The Train tab's widgets, parameters, results and speed figures (mixed into
    `KdmsiDialog`)."""

    def _train_tab(self) -> QWidget:
        tab, form = QWidget(), QFormLayout()
        tab.setLayout(form)
        self.train_pair = PairPicker(form)
        self.grid_tile_size = spin_box(0, 0, 4096, 32)
        self.grid_tile_size.setSpecialValueText("auto")
        self.grid_size_label = QLabel()
        grid_row = QHBoxLayout()
        grid_row.addWidget(self.grid_tile_size)
        grid_row.addWidget(self.grid_size_label, 1)
        form.addRow("Tile size (px)", grid_row)
        self.train_pair.before.layerChanged.connect(self.show_grid_size)
        self.grid_tile_size.valueChanged.connect(self.show_grid_size)
        self.show_grid_size()
        self.grid_output = file_widget(True, "GeoPackage (*.gpkg)")
        self.grid_output.lineEdit().setPlaceholderText("[temporary file: save it to keep tags]")
        form.addRow("Tile grid", self.grid_output)
        self.suggest = QCheckBox("suggest what to tag first (zero-shot map, no training)")
        self.suggest.setChecked(True)
        form.addRow("", self.suggest)
        self.grid_button = QPushButton("1. Create a tile grid to tag")
        self.grid_button.clicked.connect(self.start_grid)
        form.addRow(self.grid_button)
        form.addRow(
            QLabel(
                "2. Set the field 'changed' of some tiles to 1 (changed) or 0 (not changed); "
                "at least two of each. Stronger orange: tag sooner."
            )
        )
        self.tags = QgsMapLayerComboBox()
        self.tags.setFilters(POLYGON_FILTER)
        self.next_tile_button = QPushButton("Next tile to tag")
        self.next_tile_button.clicked.connect(self.show_next_tile)
        self.rerank_button = QPushButton("Re-rank with the model")
        self.rerank_button.setToolTip(
            "A copy of the grid, tags kept, ranked by what the Detect tab's model is least "
            "sure about"
        )
        self.rerank_button.clicked.connect(self.start_rerank)
        tags_row = QHBoxLayout()
        tags_row.addWidget(self.tags, 1)
        tags_row.addWidget(self.next_tile_button)
        tags_row.addWidget(self.rerank_button)
        form.addRow("Tagged tiles", tags_row)
        self.backbones = backbone_choices()
        kd, detector, default = self.backbones
        self.kd_backbone = combo_box(kd, kd.index(default))
        self.detector_backbone = combo_box(detector, detector.index(default))
        self.speed_button = QPushButton("Measure speed here")
        self.speed_button.clicked.connect(self.measure_speed)
        self.speed_label = QLabel(reference_speed_text(detector))
        self.speed_label.setWordWrap(True)
        self.speeds: Dict[str, tuple] = {}
        self.detector_backbone.currentIndexChanged.connect(self.show_speed)
        detector_row = QHBoxLayout()
        detector_row.addWidget(self.detector_backbone, 1)
        detector_row.addWidget(self.speed_button)
        self.quality = QCheckBox("the two images differ in quality (resolution, blur, noise)")
        self.warm_start = QCheckBox("start from the Detect tab's model (re-run as tags are added)")
        self.write_report = QCheckBox("write a training report (HTML) beside the model")
        self.write_report.setChecked(True)
        self.kd_epochs = spin_box(KD_EPOCHS, 1, 1000)
        self.cd_epochs = spin_box(CD_EPOCHS, 1, 1000)
        self.train_batch = spin_box(8, 1, 256)
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
        self.train_device = combo_box(DEVICES)
        self.model_output = file_widget(True, "KD-MSI model (*.kdmsi)")
        for label, widget in (
            ("Teacher/student backbone", self.kd_backbone),
            ("Detector backbone", detector_row),
            ("", self.speed_label),
            ("", self.quality),
            ("", self.warm_start),
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

    def grid_tile_pixels(self) -> int:
        """The grid's tile side: the box's, or with "auto" the one `kdmsi tile-grid` picks for
        the before raster (`kdmsi.recipe.grid_tile_size`; 256 while no raster is chosen)."""
        from kdmsi.recipe import GRID_TILE_SIZES, grid_tile_size  # torch-free, bundled

        if self.grid_tile_size.value():
            return self.grid_tile_size.value()
        before = self.train_pair.before.currentLayer()
        if not isinstance(before, QgsRasterLayer):
            return GRID_TILE_SIZES[0]
        return grid_tile_size(before.width(), before.height())

    def show_grid_size(self, *_) -> None:
        """Beside the box: the tile size and the number of tiles the analyst will see."""
        before = self.train_pair.before.currentLayer()
        if not isinstance(before, QgsRasterLayer):
            self.grid_size_label.setText("auto: chosen from the before raster")
            return
        from kdmsi.recipe import grid_tile_count  # torch-free, bundled

        tile = self.grid_tile_pixels()
        count = grid_tile_count(before.width(), before.height(), tile)
        chosen = "auto: " if not self.grid_tile_size.value() else ""
        self.grid_size_label.setText(f"{chosen}{tile} px, about {count} tiles over this raster")

    def grid_parameters(self) -> dict:
        params = self.train_pair.parameters()
        params.update(
            TILE_SIZE=self.grid_tile_size.value(),
            SUGGEST=self.suggest.isChecked(),
            OUTPUT=self.grid_output.filePath() or TEMPORARY,
        )
        return params

    def rerank_parameters(self) -> dict:
        """`kdmsi:create_tile_grid` on the tagged layer's tiles, ranked by the model."""
        tags = self.tags.currentLayer()
        if tags is None or tags.fields().indexOf("row") < 0:
            raise ValueError("choose the tile grid being tagged (create one with step 1)")
        model = self.model_file.filePath()
        if not model or not Path(model).is_file():
            raise ValueError("train a model first (step 3), or choose one in the Detect tab")
        params = self.train_pair.parameters()
        params.update(
            TILE_SIZE=self.grid_tile_size.value(),
            SUGGEST=True,
            MODEL=model,
            TAGS_FROM=tags.id(),
            OUTPUT=TEMPORARY,
        )
        return params

    def training_parameters(self) -> dict:
        params = self.train_pair.parameters()
        tags = self.tags.currentLayer()
        if tags is None:
            raise ValueError("choose the tagged tile layer (create one with step 1)")
        from kdmsi.recipe import TAG_FIELD  # torch-free, bundled

        if tags.fields().indexOf(TAG_FIELD) < 0:
            raise ValueError(
                f"{tags.name()} has no field '{TAG_FIELD}': create the grid with step 1"
            )
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
        if self.warm_start.isChecked():
            previous = self.model_file.filePath()
            if not previous or not Path(previous).is_file():
                raise ValueError("warm start: choose the earlier model in the Detect tab")
            if Path(previous).resolve() == Path(output).resolve():
                raise ValueError("warm start: save the new model under another name")
            params["WARM_START"] = previous
        return params

    def show_expected_time(self, *_) -> None:
        """The expected training time of the tagged tiles with these settings (2 CPU cores)."""
        before = self.train_pair.before.currentLayer()
        pixel = before.rasterUnitsPerPixelX() if isinstance(before, QgsRasterLayer) else None
        self.time_label.setText(
            training_time_text(
                self.tags.currentLayer(),
                pixel,
                self.grid_tile_pixels(),
                self.kd_epochs.value(),
                self.cd_epochs.value(),
                self.backbones.kd[self.kd_backbone.currentIndex()],
                self.backbones.detector[self.detector_backbone.currentIndex()],
            )
        )

    def start_grid(self) -> None:
        self._start("kdmsi:create_tile_grid", self.grid_parameters, self._grid_done)

    def start_rerank(self) -> None:
        self._start("kdmsi:create_tile_grid", self.rerank_parameters, self._grid_done)

    def show_next_tile(self) -> None:
        """Zoom to the next tile to tag of the tagged-tiles layer (`kdmsi_qgis.tagging`)."""
        from .tagging import describe_tile, is_tile_grid, show_next_tile

        layer = self.tags.currentLayer()
        if not is_tile_grid(layer):
            self.notify(
                "choose the tile grid being tagged (create one with step 1)",
                Qgis.MessageLevel.Warning,
            )
            return
        canvas = self.iface.mapCanvas() if self.iface is not None else None
        feature = show_next_tile(canvas, layer)
        if feature is None:
            self.notify(f"every tile of {layer.name()} is tagged", Qgis.MessageLevel.Info)
        else:
            self.notify(
                f"tag {describe_tile(feature)}: set 'changed' to 1 or 0", Qgis.MessageLevel.Info
            )

    def start_training(self) -> None:
        self._start("kdmsi:train_from_tags", self.training_parameters, self._training_done)

    def _grid_done(self, results: dict) -> None:
        ranked = bool(results.get("FIRST"))
        name = "Tiles to tag (ranked)" if ranked else "Tiles to tag"
        layer = add_tile_grid(results["OUTPUT"], name)
        self.tags.setLayer(layer)
        hint = "; 'Next tile to tag' zooms to the first" if ranked else ""
        self.notify(
            f"{layer.featureCount()} tiles added as '{layer.name()}': tag them, then train{hint}",
            Qgis.MessageLevel.Success,
        )

    def _training_done(self, results: dict) -> None:
        self.model_file.setFilePath(results["OUTPUT"])
        saved = f"model saved to {results['OUTPUT']} and chosen for detection"
        warnings = results.get("WARNINGS") or ""
        if warnings:  # the model contradicts the tags: said loudly, and it stays on the bar
            self.notify(f"{saved}, but {warnings}", Qgis.MessageLevel.Warning, sticky=True)
        else:
            self.notify(
                f"{saved}; {results.get('TAG_CHECK') or ''}".rstrip("; "), Qgis.MessageLevel.Success
            )
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
        tile = self.grid_tile_pixels()
        overlap = self.overlap.value()  # the detect tab's, as detection will use it
        overlap = overlap if overlap >= 0 else None  # "auto": the library's default
        self.probe = SpeedProbe(self.backbones.detector, device, tile, size, overlap, parent=self)
        self.probe.finished.connect(self._speed_measured)
        self.probe.start()

    def _speed_measured(self, seconds: dict, error: str) -> None:
        self.speed_button.setEnabled(True)
        if error:
            self.speed_label.setText("Speed not measured")
            self.notify(f"speed probe failed: {error}", Qgis.MessageLevel.Warning)
            return
        self.speeds = seconds
        self.show_speed()

    def show_speed(self) -> None:
        """Seconds per tile of each backbone and the expected detection time for this pair."""
        if not self.speeds:
            return
        chosen = self.backbones.detector[self.detector_backbone.currentIndex()]
        self.speed_label.setText(measured_speed_text(self.speeds, chosen))
