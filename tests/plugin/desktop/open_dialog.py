"""Run inside the QGIS desktop (`qgis --code open_dialog.py`): open the plugin's dialog on two
rasters, screenshot it, run detection from it (CPU, 128 px tiles), screenshot the main window
with the result layers, write what was seen to state.json, and quit.

Paths come from the environment: KDMSI_BEFORE, KDMSI_AFTER, KDMSI_MODEL, KDMSI_SHOTS (folder).
"""

import json
import os
import traceback
from pathlib import Path

from qgis.core import QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import QTimer
from qgis.utils import iface, plugins

SHOTS = Path(os.environ["KDMSI_SHOTS"])
STATE = {"plugin_loaded": False}


def finish(code: int) -> None:
    (SHOTS / "state.json").write_text(json.dumps(STATE, indent=1))
    QgsProject.instance().setDirty(False)
    os._exit(code)  # no "save project?" prompt, no teardown to hang on


def open_dialog() -> None:
    try:
        for key, name in (("KDMSI_AFTER", "after (2024)"), ("KDMSI_BEFORE", "before (2019)")):
            layer = QgsRasterLayer(os.environ[key], name)
            QgsProject.instance().addMapLayer(layer)
        plugin = plugins.get("kdmsi_qgis")
        STATE["plugin_loaded"] = plugin is not None
        if plugin is None:
            STATE["error"] = f"plugin not loaded; loaded: {sorted(plugins)}"
            finish(3)
        actions = [a.objectName() for a in iface.mainWindow().findChildren(type(plugin.action))]
        STATE["toolbar_action"] = "kdmsiOpenDialog" in actions
        plugin.action.trigger()  # what a click on the toolbar button does
        dialog = plugin.dialog
        dialog.model_file.setFilePath(os.environ["KDMSI_MODEL"])
        dialog.move(60, 60)
        iface.mapCanvas().zoomToFullExtent()
        QTimer.singleShot(2500, grab)
    except Exception:  # noqa: BLE001 (report, never hang the test)
        STATE["error"] = traceback.format_exc()
        finish(4)


def grab() -> None:
    try:
        dialog = iface.mainWindow().findChild(type(plugins["kdmsi_qgis"].dialog), "kdmsiDialog")
        STATE["dialog_visible"] = dialog is not None and dialog.isVisible()
        STATE["title"] = dialog.windowTitle()
        STATE["tabs"] = [dialog.tabs.tabText(i) for i in range(dialog.tabs.count())]
        STATE["before"] = dialog.detect_pair.before.currentLayer().name()
        STATE["after"] = dialog.detect_pair.after.currentLayer().name()
        STATE["model"] = dialog.model_file.filePath()
        STATE["missing"] = dialog.log.toPlainText()
        dialog.grab().save(str(SHOTS / "kdmsi_dialog.png"))
        dialog.tile_size.setValue(128)
        dialog.device.setCurrentIndex(1)  # cpu
        dialog.detect_button.click()
        STATE["running"] = dialog.run is not None and dialog.cancel_button.isEnabled()
        wait_for_results(dialog, 0)
    except Exception:  # noqa: BLE001
        STATE["error"] = traceback.format_exc()
        finish(5)


def wait_for_results(dialog, waited_s: float) -> None:
    """Poll (the event loop keeps running) until the dialog's background run is over."""
    try:
        if dialog.run is not None and waited_s < 150:
            QTimer.singleShot(500, lambda: wait_for_results(dialog, waited_s + 0.5))
            return
        STATE["progress"] = dialog.progress.value()
        STATE["log"] = dialog.log.toPlainText()
        group = QgsProject.instance().layerTreeRoot().children()[0]
        STATE["group"] = group.name()
        STATE["group_layers"] = [child.name() for child in group.children()]
        dialog.hide()
        iface.mapCanvas().refreshAllLayers()
        QTimer.singleShot(2500, grab_results)
    except Exception:  # noqa: BLE001
        STATE["error"] = traceback.format_exc()
        finish(6)


def grab_results() -> None:
    root = QgsProject.instance().layerTreeRoot()
    for layer in QgsProject.instance().mapLayersByName("before (2019)"):
        root.findLayer(layer.id()).setItemVisibilityChecked(False)  # polygons over the after
    iface.mapCanvas().refreshAllLayers()
    QTimer.singleShot(1500, save_results)


def save_results() -> None:
    iface.mainWindow().grab().save(str(SHOTS / "qgis_results.png"))
    finish(0)


QTimer.singleShot(1000, open_dialog)
