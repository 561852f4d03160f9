"""The plugin's dialog: pick two rasters and a model, run detection or training in the background.

Two tabs build the parameters of the `kdmsi` Processing algorithms: `kdmsi_qgis.detect_tab`
and `kdmsi_qgis.train_tab`, mixed into `KdmsiDialog`, which adds what they share: a progress
bar, cancel, the log and messages. Runs go through `kdmsi_qgis.tasks.AlgorithmRun` (the same
algorithms as the Processing Toolbox, as QGIS tasks) and their outputs are added to the project
by `kdmsi_qgis.results`. These modules hold widgets only: no file is read or written and no
kdmsi code runs here.
"""

from __future__ import annotations

from typing import Callable, Optional

from qgis.core import Qgis
from qgis.PyQt.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from .bridge import log_message
from .dependencies_page import offer_dependencies_page, open_dependencies_page
from .deps import install_hint, missing_dependencies
from .detect_tab import DetectTab
from .tasks import AlgorithmRun
from .train_tab import TrainTab

TITLE = "KD-MSI Change Detection"


class KdmsiDialog(DetectTab, TrainTab, QDialog):
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
        close = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        close.rejected.connect(self.close)
        dependencies = close.addButton("Dependencies…", QDialogButtonBox.ButtonRole.ActionRole)
        dependencies.setObjectName("kdmsiDependenciesButton")
        dependencies.clicked.connect(lambda: open_dependencies_page(self.iface))
        layout = QVBoxLayout(self)
        for part in (self.tabs, self.log):
            layout.addWidget(part)
        layout.addLayout(bar)
        layout.addWidget(close)
        self.resize(560, 640)
        self.show_missing_dependencies()

    # ------------------------------------------------------------------------ runs
    def _start(self, algorithm_id: str, build: Callable[[], dict], done: Callable) -> None:
        if self.run is not None:
            return
        if self.show_missing_dependencies():
            return
        try:
            parameters = build()
        except ValueError as exc:
            self.notify(str(exc), Qgis.MessageLevel.Warning)
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
                self.notify(str(exc), Qgis.MessageLevel.Critical)
        elif error:
            self.notify(error, Qgis.MessageLevel.Critical)
        else:
            self.notify("cancelled; no partial output was kept", Qgis.MessageLevel.Info)

    # ---------------------------------------------------------------------- messages
    def show_missing_dependencies(self) -> bool:
        """Tell the user what to install when torch/kdmsi are missing; True if something is."""
        if not missing_dependencies():
            return False
        hint = install_hint()
        log_message(hint, Qgis.MessageLevel.Critical)
        self.log.appendPlainText(hint)
        offer_dependencies_page(self.iface, hint)
        return True

    def notify(self, message: str, level, sticky: bool = False) -> None:
        """Message bar (when QGIS runs), the QGIS log and the dialog's own log. A critical or
        ``sticky`` message stays on the bar until the user closes it."""
        log_message(message, level)
        self.log.appendPlainText(message)
        if self.iface is not None:
            bar = self.iface.messageBar()
            stays = sticky or level == Qgis.MessageLevel.Critical
            bar.pushMessage(TITLE, message, level, 0 if stays else 8)
