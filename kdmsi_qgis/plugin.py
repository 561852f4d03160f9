"""The plugin object QGIS loads: registers the Processing provider, a menu entry and a button."""

from __future__ import annotations

from qgis.core import Qgis, QgsApplication
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction, QMessageBox

from .algorithms import log_message
from .deps import install_hint, missing_dependencies
from .provider import ICON_PATH, KdmsiProvider

MENU = "&KD-MSI Change Detection"
TITLE = "KD-MSI Change Detection"


class KdmsiPlugin:
    """Adds the `kdmsi` Processing provider, a Raster menu entry and a toolbar button."""

    def __init__(self, iface):
        self.iface = iface
        self.provider = None
        self.action = None

    def initProcessing(self) -> None:  # noqa: N802 (QGIS API)
        if self.provider is None:
            self.provider = KdmsiProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802 (QGIS API)
        self.initProcessing()
        self.action = QAction(QIcon(str(ICON_PATH)), "Detect changes…", self.iface.mainWindow())
        self.action.setObjectName("kdmsiDetectChanges")
        self.action.triggered.connect(self.run)
        self.iface.addPluginToRasterMenu(MENU, self.action)
        self.iface.addToolBarIcon(self.action)
        missing = missing_dependencies()
        if missing:
            log_message(install_hint(), Qgis.Warning)

    def unload(self) -> None:
        if self.action is not None:
            self.iface.removePluginRasterMenu(MENU, self.action)
            self.iface.removeToolBarIcon(self.action)
            self.action.deleteLater()
            self.action = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None

    def run(self) -> None:
        """Open the Processing dialog of `kdmsi:detect_changes` (a dedicated dialog comes later)."""
        if missing_dependencies():
            QMessageBox.warning(self.iface.mainWindow(), TITLE, install_hint())
            return
        try:
            import processing

            processing.execAlgorithmDialog("kdmsi:detect_changes", {})
        except Exception as exc:  # noqa: BLE001 (fall back to a plain explanation)
            log_message(f"cannot open the Processing dialog: {exc}", Qgis.Warning)
            QMessageBox.information(
                self.iface.mainWindow(),
                TITLE,
                "A dedicated dialog comes in a later version. Use the Processing Toolbox, "
                "group 'KD-MSI change detection': Create tile grid for tagging, Train from "
                "tagged tiles, Detect changes.",
            )
