"""The Dependencies page and its QGIS task, under a real QgsApplication (offscreen).

The installer itself is tested in `test_dependency_installer.py`; here: the task runs it in
QGIS's task manager with progress and cancel, the page lists what QGIS's Python has, offers
Install only when something is missing, checks its own options, and copies diagnostics; the
plugin's path edit makes a fresh install importable without restarting QGIS.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import time
from pathlib import Path

import pytest
from wheel_helpers import make_wheel

from kdmsi_qgis.install.catalog import Package
from kdmsi_qgis.install.installer import Request

APP = Package("kfake-qt", "kfake_qt", "kfake-qt", "the test")


@pytest.fixture
def wheels(tmp_path) -> Path:
    make_wheel(tmp_path / "wheels", "kfake-qt", "1.0")
    return tmp_path / "wheels"


def _wait(run, app, seconds: float = 60) -> list:
    outcome = []
    run.finished.connect(lambda ok, message: outcome.append((ok, message)))
    end = time.monotonic() + seconds
    while not outcome and time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)
    assert outcome, "the task did not finish"
    return outcome


def test_task_installs_and_a_fresh_install_imports_without_restart(
    qgis_app, tmp_path, wheels, monkeypatch
):
    from kdmsi_qgis import deps
    from kdmsi_qgis.install_task import DependencyRun

    profile = tmp_path / "profile"
    monkeypatch.setattr(deps, "current_profile", lambda: profile)
    monkeypatch.setattr(sys, "path", list(sys.path))
    folder = deps.add_plugin_paths()  # at plugin load: the folder does not exist yet
    assert sys.path[0] == str(folder) and not folder.exists()
    assert importlib.util.find_spec("kfake_qt") is None
    request = Request(sys.executable, folder, find_links=[str(wheels)], no_index=True,
                      isolated=True, packages=(APP,))  # fmt: skip
    run = DependencyRun("install", request)
    progress = []
    run.progress.connect(progress.append)
    run.start()
    [(ok, message)] = _wait(run, qgis_app)
    assert ok and message.startswith(f"installed into {folder}: kfake-qt==1.0"), message
    assert progress and max(progress) == 100
    importlib.invalidate_caches()  # what missing_dependencies() does first
    module = importlib.import_module("kfake_qt")
    assert Path(module.__file__).is_relative_to(folder)
    sys.modules.pop("kfake_qt")


def test_task_cancel_changes_nothing(qgis_app, tmp_path, wheels):
    from kdmsi_qgis.install_task import DependencyRun

    folder = tmp_path / "profile" / "kdmsi_qgis" / "python3.11"
    request = Request(sys.executable, folder, find_links=[str(wheels)], no_index=True,
                      isolated=True, packages=(APP,))  # fmt: skip
    run = DependencyRun("install", request)
    run.message.connect(lambda message: run.cancel())  # at its first step
    run.start()
    [(ok, message)] = _wait(run, qgis_app)
    assert not ok and message == "cancelled; nothing was changed"
    assert not folder.exists()
    assert [p.name for p in folder.parent.iterdir()] == ["pip-python3.11.log"]


def _page(monkeypatch, tmp_path, python: str):
    from kdmsi_qgis import dependencies_page

    monkeypatch.setattr(dependencies_page, "qgis_python", lambda: python)
    monkeypatch.setattr(dependencies_page, "plugin_deps_dir", lambda: tmp_path / "deps")
    return dependencies_page.DependenciesDialog(None)


def test_page_lists_what_this_python_has(qgis_app, tmp_path, monkeypatch):
    from importlib.metadata import version

    page = _page(monkeypatch, tmp_path, sys.executable)
    rows = {page.table.item(i, 0).text(): page.table.item(i, 1).text()
            for i in range(page.table.rowCount())}  # fmt: skip
    assert rows["torch"] == version("torch") and rows["fiona"] != "missing"
    assert page.table.item(0, 2).text() == "QGIS's Python"
    assert not page.install_button.isEnabled() and page.repair_button.isEnabled()
    assert not page.remove_button.isEnabled()  # no package folder yet
    assert "Everything is installed." in page.summary.text()
    text = page.copy_diagnostics()
    from qgis.PyQt.QtWidgets import QApplication

    assert QApplication.clipboard().text() == text
    assert f"torch: {version('torch')}" in text and "QGIS: 3." in text
    assert f"plugin folder: {tmp_path / 'deps'} (absent)" in text


def test_page_offers_install_where_torch_is_absent(qgis_app, tmp_path, monkeypatch):
    python = "/usr/bin/python3"
    code = "import importlib.util as u, sys; sys.exit(bool(u.find_spec('torch')))"
    import subprocess

    if not Path(python).is_file() or subprocess.run([python, "-c", code]).returncode != 0:
        pytest.skip("no Python without torch on this machine")
    page = _page(monkeypatch, tmp_path, python)
    assert page.table.item(0, 1).text() == "missing" and page.install_button.isEnabled()
    page.offline.setChecked(True)
    with pytest.raises(ValueError, match="needs a wheels folder"):
        page.request()
    page.wheels.setFilePath(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="does not exist"):
        page.request()
    page.start("install")  # refused before any task starts, said on the page
    assert page.run is None and "does not exist" in page.status.text()


def test_proxy_comes_from_qgis_network_settings(qgis_app, monkeypatch):
    from qgis.core import QgsSettings

    from kdmsi_qgis.dependencies_page import qgis_proxy

    settings = QgsSettings()
    keys = ("proxy/proxyEnabled", "proxy/proxyHost", "proxy/proxyPort", "proxy/proxyUser")
    saved = {key: settings.value(key) for key in keys}
    try:
        settings.setValue("proxy/proxyEnabled", False)
        assert qgis_proxy() is None
        settings.setValue("proxy/proxyEnabled", True)
        settings.setValue("proxy/proxyHost", "proxy.example")
        settings.setValue("proxy/proxyPort", "3128")
        settings.setValue("proxy/proxyUser", "")
        assert qgis_proxy() == "http://proxy.example:3128"
    finally:
        for key, value in saved.items():
            settings.remove(key) if value is None else settings.setValue(key, value)
