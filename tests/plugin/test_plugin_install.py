"""The packaged plugin as a user gets it: `make package` -> zip -> a fresh QGIS profile.

`qgis_process` (QGIS's own command-line runner, no GUI) then lists the provider's algorithms
and runs `resources/models/tile_grid_then_detect.model3`, a graphical-modeler model that
feeds the tile grid into detection's area. PYTHONPATH carries only torch's site-packages
(where the QGIS user would have pip-installed torch): the `kdmsi` library comes from the
zip's bundled `libs/`, since an editable install's .pth file is not read from PYTHONPATH.

Debian's `/usr/bin/qgis_process` wrapper passes `--noversioncheck`, which qgis_process
3.22 rejects ("Command --noversioncheck not known!"), so the real binary is called.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from conftest import REPO, run_qgis_process
from osgeo import ogr

MODEL3 = REPO / "resources" / "models" / "tile_grid_then_detect.model3"
ALGORITHMS = ("create_tile_grid", "detect_changes", "evaluate_changes", "train_from_tags")


def test_zip_holds_the_plugin_and_the_library(plugin_zip):
    names = set(zipfile.ZipFile(plugin_zip).namelist())
    for name in ("metadata.txt", "icon.svg", "__init__.py", "provider.py", "dialog.py"):
        assert f"kdmsi_qgis/{name}" in names
    for name in ("__init__.py", "base.py", "detect_changes.py", "train_from_tags.py"):
        assert f"kdmsi_qgis/algorithms/{name}" in names
    assert "kdmsi_qgis/libs/kdmsi/detect/with_model.py" in names
    assert not any("__pycache__" in name for name in names)
    metadata = zipfile.ZipFile(plugin_zip).read("kdmsi_qgis/metadata.txt").decode()
    for field in ("name=", "qgisMinimumVersion=3.22", "description=", "about=", "version=",
                  "author=", "email=", "repository=", "hasProcessingProvider=yes", "icon=",
                  "tags=", "changelog=", "supportsQt6=True"):  # fmt: skip
        assert f"\n{field}" in metadata


def test_fresh_profile_lists_the_algorithms(profile_root):
    listing = run_qgis_process(profile_root, "list")
    for name in ALGORITHMS:
        assert f"kdmsi:{name}" in listing
    assert "kdmsi_qgis" in run_qgis_process(profile_root, "plugins")


def test_model_chains_tile_grid_into_detect(profile_root, scene_pair, qgis_detector, tmp_path):
    x0, y0 = 500000.0, 5500000.0
    out = run_qgis_process(
        profile_root,
        "--json",
        "run",
        str(MODEL3),
        "--",
        f"before={scene_pair['before']}",
        f"after={scene_pair['after']}",
        f"model={qgis_detector}",
        "tile_size=128",
        f"area={x0 + 64},{x0 + 192},{y0 - 128},{y0 - 64} [EPSG:32633]",
        f"tile_grid:tiles={tmp_path / 'tiles.gpkg'}",
        f"detect:changes={tmp_path / 'changes.gpkg'}",
    )
    results = json.loads(out[out.index("{") :])["results"]
    assert Path(results["tile_grid:tiles"]) == tmp_path / "tiles.gpkg"
    assert Path(results["detect:changes"]) == tmp_path / "changes.gpkg"
    tiles_ds = ogr.Open(str(tmp_path / "tiles.gpkg"))  # keep: its layer dies with it
    tiles = tiles_ds.GetLayer(0)
    assert tiles.GetFeatureCount() == 1  # one 128 px tile cut to the 128 x 64 m area
    xmin, xmax, ymin, ymax = tiles.GetExtent()
    assert (xmin, xmax, ymin, ymax) == (x0 + 64, x0 + 192, y0 - 128, y0 - 64)
    changes_ds = ogr.Open(str(tmp_path / "changes.gpkg"))
    changes = changes_ds.GetLayer(0)
    if changes.GetFeatureCount():  # whatever was found lies inside the grid's extent
        cx0, cx1, cy0, cy1 = changes.GetExtent()
        assert cx0 >= xmin and cx1 <= xmax and cy0 >= ymin and cy1 <= ymax
