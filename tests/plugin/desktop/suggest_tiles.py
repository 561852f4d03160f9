"""Run inside the QGIS desktop (`qgis --code suggest_tiles.py`): on the Landsat sample pair, make
a suggested tile grid from the dialog's Train tab, tag the first suggestions, screenshot the
styled grid, then use Raster > KD-MSI > Next tile to tag and screenshot again; write what was
seen to suggest_state.json and quit.

Paths come from the environment: KDMSI_BEFORE, KDMSI_AFTER, KDMSI_SHOTS (folder).
"""

import json
import os
import traceback
from pathlib import Path

from qgis.core import QgsMultiBandColorRenderer, QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import QTimer
from qgis.utils import iface, plugins

SHOTS = Path(os.environ["KDMSI_SHOTS"])
STATE = {"plugin_loaded": False}
TAGS = 4  # suggestions tagged before the screenshot


def finish(code: int) -> None:
    (SHOTS / "suggest_state.json").write_text(json.dumps(STATE, indent=1))
    QgsProject.instance().setDirty(False)
    os._exit(code)  # no "save project?" prompt, no teardown to hang on


def guarded(step):
    def run(*args):
        try:
            step(*args)
        except Exception:  # noqa: BLE001 (report, never hang the test)
            STATE["error"] = f"{step.__name__}: {traceback.format_exc()}"
            finish(4)

    return run


@guarded
def make_grid() -> None:
    for key, name in (("KDMSI_BEFORE", "Landsat 2000"), ("KDMSI_AFTER", "Landsat 2003")):
        layer = QgsRasterLayer(os.environ[key], name)
        provider = layer.dataProvider()
        layer.setRenderer(QgsMultiBandColorRenderer(provider, 3, 2, 1))  # ETM+ red, green, blue
        QgsProject.instance().addMapLayer(layer)
    plugin = plugins.get("kdmsi_qgis")
    STATE["plugin_loaded"] = plugin is not None
    if plugin is None:
        finish(3)
    plugin.action.trigger()
    dialog = plugin.dialog
    dialog.tabs.setCurrentIndex(1)
    dialog.train_pair.before.setLayer(QgsProject.instance().mapLayersByName("Landsat 2000")[0])
    dialog.train_pair.after.setLayer(QgsProject.instance().mapLayersByName("Landsat 2003")[0])
    dialog.grid_tile_size.setValue(64)
    STATE["suggest_checked"] = dialog.suggest.isChecked()
    dialog.grid_button.click()
    wait(dialog, 0.0)


@guarded
def wait(dialog, waited_s: float) -> None:
    if dialog.run is not None and waited_s < 120:
        QTimer.singleShot(500, lambda: wait(dialog, waited_s + 0.5))
        return
    STATE["log"] = dialog.log.toPlainText()[-2000:]
    grid = dialog.tags.currentLayer()
    STATE["grid"] = grid.name()
    STATE["tiles"] = grid.featureCount()
    STATE["renderer"] = grid.renderer().type()
    STATE["labels"] = grid.labelsEnabled()
    changed = grid.fields().indexOf("changed")
    grid.startEditing()
    for feature in grid.getFeatures():  # the analyst tags the first suggestions
        rank = feature["suggest_rank"]
        if rank is not None and rank <= TAGS:
            grid.changeAttributeValue(feature.id(), changed, 1 if rank % 2 else 0)
    grid.commitChanges()
    dialog.hide()
    root = QgsProject.instance().layerTreeRoot()
    for layer in QgsProject.instance().mapLayersByName("Landsat 2000"):
        root.findLayer(layer.id()).setItemVisibilityChecked(False)
    iface.setActiveLayer(grid)
    iface.mapCanvas().zoomToFullExtent()
    iface.mapCanvas().refreshAllLayers()
    QTimer.singleShot(2500, grab_grid)


@guarded
def grab_grid() -> None:
    iface.mainWindow().grab().save(str(SHOTS / "qgis_suggested_tiles.png"))
    plugin = plugins["kdmsi_qgis"]
    STATE["menu_action"] = plugin.next_tile_action.text()
    plugin.next_tile_action.trigger()  # Raster > KD-MSI Change Detection > Next tile to tag
    grid = iface.activeLayer()
    selected = list(grid.getSelectedFeatures())
    STATE["selected_rank"] = [f["suggest_rank"] for f in selected]
    bar = iface.messageBar().currentItem()
    STATE["message"] = bar.text() if bar is not None else ""
    QTimer.singleShot(2500, grab_next)


@guarded
def grab_next() -> None:
    iface.mainWindow().grab().save(str(SHOTS / "qgis_next_tile.png"))
    finish(0)


QTimer.singleShot(1000, make_grid)
