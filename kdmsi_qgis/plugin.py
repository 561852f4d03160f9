"""The plugin object QGIS loads: the Processing provider, a Raster menu entry and a button."""

from __future__ import annotations

from typing import Optional

from qgis.core import Qgis, QgsApplication
from qgis.PyQt.QtGui import QIcon

try:  # Qt6 moved QAction to QtGui
    from qgis.PyQt.QtGui import QAction
except ImportError:
    from qgis.PyQt.QtWidgets import QAction

from .bridge import log_message
from .dependencies_page import (
    close_dependencies_page,
    offer_dependencies_page,
    open_dependencies_page,
)
from .deps import install_hint, missing_dependencies
from .icon import ICON_PATH
from .provider import KdmsiProvider

MENU = "&KD-MSI Change Detection"


class KdmsiPlugin:
    """Adds the `kdmsi` Processing provider, a Raster menu entry and a toolbar button that
    open the KD-MSI dialog; `unload` removes all three."""

    def __init__(self, iface):
        self.iface = iface
        self.provider: Optional[KdmsiProvider] = None
        self.action: Optional[QAction] = None
        self.dependencies_action: Optional[QAction] = None
        self.next_tile_action: Optional[QAction] = None
        self.dialog = None

    def initProcessing(self) -> None:  # noqa: N802 (QGIS API)
        if self.provider is None:
            self.provider = KdmsiProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802 (QGIS API)
        self.initProcessing()
        self.action = QAction(QIcon(str(ICON_PATH)), "Change detection…", self.iface.mainWindow())
        self.action.setObjectName("kdmsiOpenDialog")
        self.action.triggered.connect(self.run)
        self.iface.addPluginToRasterMenu(MENU, self.action)
        self.iface.addToolBarIcon(self.action)
        self.dependencies_action = QAction("Dependencies…", self.iface.mainWindow())
        self.dependencies_action.setObjectName("kdmsiDependencies")
        self.dependencies_action.triggered.connect(self.show_dependencies)
        self.iface.addPluginToRasterMenu(MENU, self.dependencies_action)
        self.next_tile_action = QAction("Next tile to tag", self.iface.mainWindow())
        self.next_tile_action.setObjectName("kdmsiNextTile")
        self.next_tile_action.triggered.connect(self.next_tile)
        self.iface.addPluginToRasterMenu(MENU, self.next_tile_action)
        if missing_dependencies():
            hint = install_hint()
            log_message(hint, Qgis.MessageLevel.Warning)
            offer_dependencies_page(self.iface, hint, Qgis.MessageLevel.Warning)

    def unload(self) -> None:
        close_dependencies_page()
        if self.next_tile_action is not None:
            self.iface.removePluginRasterMenu(MENU, self.next_tile_action)
            self.next_tile_action.deleteLater()
            self.next_tile_action = None
        if self.dependencies_action is not None:
            self.iface.removePluginRasterMenu(MENU, self.dependencies_action)
            self.dependencies_action.deleteLater()
            self.dependencies_action = None
        if self.dialog is not None:
            if self.dialog.run is not None:
                self.dialog.run.cancel()
            self.dialog.close()
            self.dialog.deleteLater()
            self.dialog = None
        if self.action is not None:
            self.iface.removePluginRasterMenu(MENU, self.action)
            self.iface.removeToolBarIcon(self.action)
            self.action.deleteLater()
            self.action = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None

    def run(self) -> None:
        """Show the dialog (one instance, kept so a running job survives closing it)."""
        from .dialog import KdmsiDialog

        if self.dialog is None:
            self.dialog = KdmsiDialog(self.iface)
        self.dialog.show()
        self.dialog.raise_()
        self.dialog.activateWindow()

    def show_dependencies(self) -> None:
        """Raster > KD-MSI Change Detection > Dependencies…"""
        open_dependencies_page(self.iface)

    def next_tile(self) -> None:
        """Raster > KD-MSI Change Detection > Next tile to tag: on the active layer when it is
        a tile grid, else on the dialog's tagged-tiles layer."""
        from .tagging import describe_tile, is_tile_grid, show_next_tile

        layer = self.iface.activeLayer()
        if not is_tile_grid(layer) and self.dialog is not None:
            layer = self.dialog.tags.currentLayer()
        bar = self.iface.messageBar()
        if not is_tile_grid(layer):
            bar.pushMessage(
                "KD-MSI",
                "select a tile grid layer (Create a tile grid to tag)",
                Qgis.MessageLevel.Warning,
                6,
            )
            return
        feature = show_next_tile(self.iface.mapCanvas(), layer)
        if feature is None:
            bar.pushMessage(
                "KD-MSI", f"every tile of {layer.name()} is tagged", Qgis.MessageLevel.Info, 6
            )
        else:
            bar.pushMessage(
                "KD-MSI",
                f"tag {describe_tile(feature)}: set 'changed' to 1 or 0",
                Qgis.MessageLevel.Info,
                6,
            )
