"""Run inside the QGIS desktop (`qgis --code open_dependencies.py`) where torch is absent: check
the message bar offers the Dependencies page, open it from the Raster menu entry, screenshot it
and the main window, then press Install with an empty wheels folder (offline) and record the
refusal; write what was seen to deps_state.json and quit.

Paths come from the environment: KDMSI_SHOTS (folder), KDMSI_EMPTY_WHEELS (an empty folder).
"""

import json
import os
import traceback
from pathlib import Path

from qgis.core import QgsProject
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtWidgets import QPushButton
from qgis.utils import iface, plugins

SHOTS = Path(os.environ["KDMSI_SHOTS"])
STATE = {"plugin_loaded": False}


def finish(code: int) -> None:
    (SHOTS / "deps_state.json").write_text(json.dumps(STATE, indent=1))
    QgsProject.instance().setDirty(False)
    os._exit(code)  # no "save project?" prompt, no teardown to hang on


def guarded(step):
    def run(*args):
        try:
            step(*args)
        except Exception:  # noqa: BLE001 (report, never hang the test)
            STATE["error"] = traceback.format_exc()
            finish(4)

    return run


@guarded
def open_page() -> None:
    plugin = plugins.get("kdmsi_qgis")
    STATE["plugin_loaded"] = plugin is not None
    if plugin is None:
        STATE["error"] = f"plugin not loaded; loaded: {sorted(plugins)}"
        finish(3)
    buttons = iface.messageBar().findChildren(QPushButton, "kdmsiOpenDependencies")
    STATE["message_bar_button"] = len(buttons) > 0
    iface.mainWindow().grab().save(str(SHOTS / "qgis_missing_dependencies.png"))
    STATE["menu_action"] = plugin.dependencies_action.text()
    plugin.dependencies_action.trigger()  # Raster > KD-MSI Change Detection > Dependencies…
    QTimer.singleShot(1500, grab_page)


@guarded
def grab_page() -> None:
    from kdmsi_qgis.dependencies_page import DependenciesDialog

    page = iface.mainWindow().findChild(DependenciesDialog, "kdmsiDependencies")
    STATE["page_visible"] = page is not None and page.isVisible()
    STATE["rows"] = {
        page.table.item(i, 0).text(): page.table.item(i, 1).text()
        for i in range(page.table.rowCount())
    }
    STATE["summary"] = page.summary.text()
    STATE["install_enabled"] = page.install_button.isEnabled()
    STATE["install_text"] = page.install_button.text()
    STATE["deps_dir"] = str(page.deps)
    page.move(60, 60)
    page.grab().save(str(SHOTS / "kdmsi_dependencies.png"))
    STATE["diagnostics"] = page.copy_diagnostics()
    page.wheels.setFilePath(os.environ["KDMSI_EMPTY_WHEELS"])
    page.offline.setChecked(True)
    page.install_button.click()
    STATE["running"] = page.run is not None and page.cancel_button.isEnabled()
    wait_for_install(page, 0)


@guarded
def wait_for_install(page, waited_s: float) -> None:
    if page.run is not None and waited_s < 120:
        QTimer.singleShot(500, lambda: wait_for_install(page, waited_s + 0.5))
        return
    STATE["status"] = page.status.text()
    STATE["deps_exists_after"] = page.deps.exists()
    page.grab().save(str(SHOTS / "kdmsi_dependencies_refused.png"))
    finish(0)


QTimer.singleShot(2000, open_page)
