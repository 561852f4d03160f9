"""The Dependencies page: what QGIS's Python has, and Install / Repair / Remove / Copy
diagnostics for what the plugin needs (`kdmsi_qgis.install` does the work, as a QGIS task).

Opened from Raster > KD-MSI Change Detection > Dependencies…, from the main dialog, and from
the message bar whenever an algorithm stops because something is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from qgis.core import Qgis, QgsSettings
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtGui import QBrush, QColor
from qgis.PyQt.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QCheckBox,
    QComboBox,
    QDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .bridge import log_message
from .deps import plugin_deps_dir, qgis_python
from .install.environment import Environment, ProbeError, choose_build, detect_gpu, probe
from .install.installer import Request
from .install.location import pip_log
from .install.report import diagnostics, ready, rows
from .install_task import DependencyRun

TITLE = "KD-MSI dependencies"
MISSING = QColor(200, 30, 30)


def qgis_proxy() -> Optional[str]:
    """pip's --proxy from QGIS's Settings > Options > Network, when a proxy is on there."""
    settings = QgsSettings()
    if not settings.value("proxy/proxyEnabled", False, type=bool):
        return None
    host = settings.value("proxy/proxyHost", "", type=str).strip()
    if not host:
        return None
    port = settings.value("proxy/proxyPort", "", type=str).strip()
    user = settings.value("proxy/proxyUser", "", type=str)
    password = settings.value("proxy/proxyPassword", "", type=str)
    auth = f"{user}:{password}@" if user else ""
    return f"http://{auth}{host}{':' + port if port else ''}"


class DependenciesDialog(QDialog):
    """Lists the plugin's packages and installs what is missing with one button."""

    def __init__(self, iface=None, parent: Optional[QWidget] = None):
        super().__init__(parent or (iface.mainWindow() if iface else None))
        self.iface = iface
        self.run: Optional[DependencyRun] = None
        self.environment: Optional[Environment] = None
        self.problem = ""
        self.missing: list = []  # catalogue names not found, set by refresh()
        self.ready = False
        self.gpu = detect_gpu()
        self.deps = plugin_deps_dir()
        self.setWindowTitle(TITLE)
        self.setObjectName("kdmsiDependencies")
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["Package", "Version", "Where", "Needed for"])
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        layout = QVBoxLayout(self)
        layout.addWidget(self.summary)
        layout.addWidget(self.table, 1)
        layout.addLayout(self._options())
        layout.addLayout(self._buttons())
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(300)
        self.log.setFixedHeight(90)
        for part in (self.status, self.progress, self.log):
            layout.addWidget(part)
        self.resize(780, 620)
        self.refresh()

    # ------------------------------------------------------------------ layout
    def _options(self) -> QFormLayout:
        form = QFormLayout()
        self.build = QComboBox()
        auto, why = choose_build("auto", self.gpu)
        self.build.addItem(f"Automatic: {auto.upper()} ({why})", "auto")
        self.build.addItem("CPU", "cpu")
        self.build.addItem("CUDA (NVIDIA GPU)", "cuda")
        self.wheels = QgsFileWidget()
        self.wheels.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.wheels.setToolTip("A folder of .whl files (for machines without internet access)")
        self.offline = QCheckBox("Only from this folder (no internet)")
        wheels = QHBoxLayout()
        wheels.addWidget(self.wheels, 1)
        wheels.addWidget(self.offline)
        form.addRow("PyTorch build", self.build)
        form.addRow("Wheels folder (optional)", wheels)
        return form

    def _buttons(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.install_button = QPushButton("Install missing")
        self.install_button.setObjectName("kdmsiInstall")
        self.repair_button = QPushButton("Repair")
        self.repair_button.setToolTip("Reinstall every package the plugin installs")
        self.remove_button = QPushButton("Remove")
        self.remove_button.setToolTip("Delete the plugin's package folder")
        self.copy_button = QPushButton("Copy diagnostics")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        close = QPushButton("Close")
        self.install_button.clicked.connect(lambda: self.start("install"))
        self.repair_button.clicked.connect(lambda: self.start("repair"))
        self.remove_button.clicked.connect(lambda: self.start("remove"))
        self.copy_button.clicked.connect(self.copy_diagnostics)
        self.cancel_button.clicked.connect(self.cancel)
        close.clicked.connect(self.close)
        for button in (self.install_button, self.repair_button, self.remove_button):
            row.addWidget(button)
        row.addStretch(1)
        for button in (self.copy_button, self.cancel_button, close):
            row.addWidget(button)
        return row

    # ------------------------------------------------------------------ state
    def refresh(self) -> None:
        """Ask QGIS's Python what it has (a subprocess, no import here) and fill the table."""
        try:
            self.environment = probe(qgis_python(), [self.deps])
            self.problem = ""
        except ProbeError as exc:
            self.environment, self.problem = None, str(exc)
        if self.environment is None:
            self.summary.setText(f"QGIS's Python could not be asked: {self.problem}")
            self.table.setRowCount(0)
            self._set_running(False)
            return
        found = rows(self.environment, self.deps)
        self.table.setRowCount(len(found))
        for i, row in enumerate(found):
            cells = (row.package.dist, row.version or row.state, row.where, row.package.needed_for)
            for j, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if row.state == "missing":
                    item.setForeground(QBrush(MISSING))
                self.table.setItem(i, j, item)
        self.table.resizeColumnsToContents()
        env = self.environment
        missing = [r.package.dist for r in found if r.state != "ok"]
        self.summary.setText(
            f"QGIS's Python {env.version} ({env.python}), numpy "
            f"{env.version_of('numpy') or 'missing'}. "
            f"PyTorch build: {env.torch_build() or 'not installed'}; GPU: "
            f"{self.gpu or 'none found'}. Packages are installed into {self.deps}; QGIS's own "
            "packages are never changed. "
            + (f"Missing: {', '.join(missing)}." if missing else "Everything is installed.")
        )
        self.missing = missing
        self.ready = ready(found)
        self._set_running(False)

    def _set_running(self, running: bool) -> None:
        self.install_button.setEnabled(
            not running and self.environment is not None and bool(self.missing)
        )
        self.repair_button.setEnabled(not running and self.environment is not None)
        self.remove_button.setEnabled(not running and self.deps.exists())
        self.cancel_button.setEnabled(running)

    def request(self) -> Request:
        """The installer's request from the page's choices and QGIS's proxy settings."""
        folder = self.wheels.filePath().strip()
        if self.offline.isChecked() and not folder:
            raise ValueError("'Only from this folder' needs a wheels folder; choose one")
        if folder and not Path(folder).is_dir():
            raise ValueError(f"the wheels folder {folder} does not exist; choose a folder")
        return Request(
            python=qgis_python(),
            deps=self.deps,
            build=self.build.currentData(),
            find_links=[folder] if folder else [],
            no_index=self.offline.isChecked(),
            proxy=qgis_proxy(),
        )

    # ------------------------------------------------------------------ actions
    def start(self, action: str) -> None:
        if self.run is not None:
            return
        try:
            request = self.request()
        except ValueError as exc:
            self.notify(str(exc), Qgis.MessageLevel.Warning)
            return
        self.log.clear()
        self.progress.setValue(0)
        self.run = DependencyRun(action, request, parent=self)
        self.run.progress.connect(lambda value: self.progress.setValue(int(value)))
        self.run.message.connect(self.status.setText)
        self.run.message.connect(self.log.appendPlainText)
        self.run.finished.connect(self._finished)
        self._set_running(True)
        self.run.start()

    def cancel(self) -> None:
        if self.run is not None:
            self.status.setText("cancelling…")
            self.run.cancel()

    def _finished(self, ok: bool, message: str) -> None:
        self.run = None
        self.refresh()
        if ok:
            self.progress.setValue(100)
            ready_now = "; the plugin is ready" if self.ready else ""
            self.notify(message + ready_now, Qgis.MessageLevel.Success)
        else:
            self.progress.setValue(0)
            level = (
                Qgis.MessageLevel.Info
                if message.startswith("cancelled")
                else Qgis.MessageLevel.Critical
            )
            self.notify(message, level)

    def copy_diagnostics(self) -> str:
        """Put the diagnostics text on the clipboard (for a bug report) and return it."""
        text = diagnostics(
            self.environment,
            self.deps,
            self.gpu,
            pip_log(self.deps),
            qgis_version=Qgis.QGIS_VERSION,
            problem=self.problem,
        )
        QApplication.clipboard().setText(text)
        self.status.setText("diagnostics copied to the clipboard")
        return text

    def notify(self, message: str, level) -> None:
        """The page's status line, the QGIS log and, when QGIS runs, the message bar."""
        self.status.setText(message)
        self.log.appendPlainText(message)
        log_message(message, level)
        if self.iface is not None:
            self.iface.messageBar().pushMessage(TITLE, message, level, 10)


def offer_dependencies_page(iface, message: str, level=Qgis.MessageLevel.Critical) -> None:
    """A message-bar entry with the missing packages and a button that opens the page."""
    if iface is None:
        return
    bar = iface.messageBar()
    item = bar.createMessage(TITLE, message)
    button = QPushButton("Open Dependencies…")
    button.setObjectName("kdmsiOpenDependencies")
    button.clicked.connect(lambda: open_dependencies_page(iface))
    item.layout().addWidget(button)
    bar.pushWidget(item, level, 0)


# The one page of this QGIS session: kept while hidden so a running install survives closing it.
_PAGE: dict = {}


def open_dependencies_page(iface) -> DependenciesDialog:
    """Show the Dependencies page, refreshed unless an install is running."""
    page = _PAGE.get("page")
    if page is None:
        page = _PAGE["page"] = DependenciesDialog(iface)
    elif page.run is None:
        page.refresh()
    page.show()
    page.raise_()
    page.activateWindow()
    return page


def close_dependencies_page() -> None:
    """Cancel a running install and drop the page (the plugin is being unloaded)."""
    page = _PAGE.pop("page", None)
    if page is not None:
        if page.run is not None:
            page.run.cancel()
        page.close()
        page.deleteLater()
