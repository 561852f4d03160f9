"""The real QGIS desktop under Xvfb with the packaged plugin enabled in a fresh profile.

`tests/plugin/desktop/open_dialog.py` runs inside QGIS (`qgis --code`): it adds two rasters, clicks
the plugin's toolbar action, and saves screenshots of the dialog and the main window to
`build/screenshots/` (KDMSI_SCREENSHOTS to change), which this test checks are not blank;
then it runs detection from the dialog and saves the main window with the result layers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

SCRIPT = Path(__file__).resolve().parent / "desktop" / "open_dialog.py"
DEPENDENCIES_SCRIPT = SCRIPT.with_name("open_dependencies.py")


def _not_blank(path: Path) -> dict:
    from PIL import Image

    image = np.asarray(Image.open(path).convert("RGB"))
    colours = len(np.unique(image.reshape(-1, 3), axis=0))
    return {"size": image.shape[:2], "colours": colours, "std": float(image.std())}


@pytest.fixture(scope="module")
def screenshots() -> Path:
    folder = Path(os.environ.get("KDMSI_SCREENSHOTS", REPO / "build" / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*"):
        old.unlink()
    return folder


def _desktop(script: Path, env: dict, state_file: Path) -> dict:
    """The QGIS desktop on a 1400 x 900 Xvfb screen running `script`; what it wrote to
    `state_file`, checked for a clean exit."""
    qgis = shutil.which("qgis.bin") or shutil.which("qgis")
    xvfb = shutil.which("xvfb-run")
    if qgis is None or xvfb is None:
        pytest.skip("the QGIS desktop or xvfb-run is not installed")
    command = [xvfb, "-a", "-s", "-screen 0 1400x900x24", qgis, "--nologo", "--noversioncheck"]
    done = subprocess.run(
        [*command, "--code", str(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert state_file.is_file(), done.stdout[-2000:] + done.stderr[-2000:]
    state = json.loads(state_file.read_text())
    assert done.returncode == 0 and "error" not in state, state
    return state


def _display_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("QT_QPA_PLATFORM", "PYTHONPATH")}
    env.update(extra)  # a real X display; PYTHONPATH only when given
    return env


def test_desktop_opens_the_dialog(profile_root, scene_pair, qgis_detector, screenshots):
    import torch

    env = _display_env(
        QGIS_CUSTOM_CONFIG_PATH=str(profile_root),
        PYTHONPATH=str(Path(torch.__file__).resolve().parents[1]),  # as in run_qgis_process
        KDMSI_BEFORE=str(scene_pair["before"]),
        KDMSI_AFTER=str(scene_pair["after"]),
        KDMSI_MODEL=str(qgis_detector),
        KDMSI_SHOTS=str(screenshots),
    )
    state = _desktop(SCRIPT, env, screenshots / "state.json")
    assert state["plugin_loaded"] and state["toolbar_action"] and state["dialog_visible"]
    assert state["tabs"] == ["Detect changes", "Train from tagged tiles"]
    assert (state["before"], state["after"]) == ("before (2019)", "after (2024)")
    assert state["model"] == str(qgis_detector)
    assert "missing" not in state["missing"]  # torch found: no install hint in the dialog
    assert state["running"] and state["progress"] == 100
    assert state["group"] == "Changes before (2019) → after (2024)"
    assert state["group_layers"] == ["Change polygons", "Change probability"]
    dialog = _not_blank(screenshots / "kdmsi_dialog.png")
    window = _not_blank(screenshots / "qgis_results.png")
    assert dialog["size"][0] > 300 and dialog["size"][1] > 300
    assert dialog["colours"] > 20 and dialog["std"] > 10, dialog
    assert window["colours"] > 100 and window["std"] > 10, window


def test_desktop_dependencies_page_where_torch_is_absent(profile_root, screenshots, tmp_path):
    """QGIS's own Python (no PYTHONPATH to the venv) lacks torch: the message bar offers the
    page, the page lists what is missing with Install enabled, and an offline install from an
    empty wheels folder is refused in one line, the package folder never created."""
    code = "import importlib.util as u, sys; sys.exit(bool(u.find_spec('torch')))"
    if subprocess.run(["/usr/bin/python3", "-c", code]).returncode != 0:
        pytest.skip("QGIS's own Python has torch here (e.g. Debian 13's python3-torch)")
    empty = tmp_path / "wheels"
    empty.mkdir()
    env = _display_env(
        QGIS_CUSTOM_CONFIG_PATH=str(profile_root), KDMSI_SHOTS=str(screenshots),
        KDMSI_EMPTY_WHEELS=str(empty), PIP_CONFIG_FILE=os.devnull,  # this machine's pip.conf off
    )  # fmt: skip
    for name in [name for name in env if name.startswith("PIP_") and name != "PIP_CONFIG_FILE"]:
        del env[name]  # e.g. PIP_FIND_LINKS: the page must see only the empty folder
    state = _desktop(DEPENDENCIES_SCRIPT, env, screenshots / "deps_state.json")
    assert state["plugin_loaded"] and state["message_bar_button"] and state["page_visible"]
    assert state["menu_action"] == "Dependencies…"
    assert state["rows"]["torch"] == "missing" and state["rows"]["torchvision"] == "missing"
    assert state["install_enabled"] and state["install_text"] == "Install missing"
    assert "Missing: torch, torchvision" in state["summary"]
    assert "torch: missing" in state["diagnostics"] and "QGIS: 3." in state["diagnostics"]
    assert state["running"], state
    assert state["status"].startswith("torch==2.13.0 is not in the wheel folder"), state["status"]
    assert not state["deps_exists_after"]
    assert state["deps_dir"].startswith(str(profile_root))
    for name in ("kdmsi_dependencies.png", "qgis_missing_dependencies.png"):
        shot = _not_blank(screenshots / name)
        assert shot["colours"] > 20 and shot["std"] > 10, (name, shot)


SUGGEST_SCRIPT = SCRIPT.with_name("suggest_tiles.py")


def test_desktop_suggested_grid_and_next_tile(profile_root, screenshots):
    """On the Landsat sample pair: the Train tab makes a suggested grid (zero-shot ranks),
    styled by priority with the next ranks labelled; Next tile to tag selects and zooms to the
    first untagged suggestion after four are tagged."""
    import torch

    sample = REPO / "resources" / "sample_data" / "landsat_taizhou"
    env = _display_env(
        QGIS_CUSTOM_CONFIG_PATH=str(profile_root),
        PYTHONPATH=str(Path(torch.__file__).resolve().parents[1]),  # as in run_qgis_process
        KDMSI_BEFORE=str(sample / "A" / "taizhou.tif"),
        KDMSI_AFTER=str(sample / "B" / "taizhou.tif"),
        KDMSI_SHOTS=str(screenshots),
    )
    state = _desktop(SUGGEST_SCRIPT, env, screenshots / "suggest_state.json")
    assert state["plugin_loaded"] and state["suggest_checked"]
    assert state["grid"] == "Tiles to tag (ranked)" and state["tiles"] == 49  # 7 x 7 of 64 px
    assert state["renderer"] == "RuleRenderer" and state["labels"]
    assert state["menu_action"] == "Next tile to tag"
    assert state["selected_rank"] == [5], state  # four tagged: the fifth suggestion is next
    assert "suggested #5" in state["message"], state["message"]
    for name in ("qgis_suggested_tiles.png", "qgis_next_tile.png"):
        shot = _not_blank(screenshots / name)
        assert shot["colours"] > 100 and shot["std"] > 10, (name, shot)
