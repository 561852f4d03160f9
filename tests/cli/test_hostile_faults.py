"""Hostile but realistic rasters, model files, tag layers, signals and faults: each ends with
one line naming the problem and the fix, exit status 2 (130 on Ctrl+C, 143 on SIGTERM), no
traceback, nothing left in the output folder and no input touched."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from detect_helpers import GT, write_raster
from hostile_helpers import SIZE, detect_argv, digest, refused, snapshot
from osgeo import gdal, osr

from kdmsi.cli import main

# ---------------------------------------------------------------------------------- rasters


def float_pair(work: dict[str, Path], pre: np.ndarray, post: np.ndarray) -> dict[str, Path]:
    root = work["root"]
    return {
        **work,
        "before": write_raster(root / "fb.tif", pre),
        "after": write_raster(root / "fa.tif", post),
    }


def test_nan_and_inf_pixels_are_nodata(work, capsys):
    pre = np.random.default_rng(1).uniform(0, 1, (3, SIZE, SIZE)).astype(np.float32)
    post = pre.copy()
    post[:, 0:40, 0:40] = np.nan
    post[:, 60:80, 60:80] = np.inf
    pair = float_pair(work, pre, post)
    probability = work["out"] / "p.tif"
    argv = detect_argv(pair, "--probability", str(probability), "--threshold", "0")
    assert main(argv) == 0, capsys.readouterr().err
    ds = gdal.Open(str(probability))
    band = ds.GetRasterBand(1)
    prob = band.ReadAsArray()
    nodata = band.GetNoDataValue()
    assert (prob[0:40, 0:40] == nodata).all() and (prob[60:80, 60:80] == nodata).all()
    assert (prob[45:55, 45:55] != nodata).all()
    from kdmsi.geo.polygons import polygonize_changes

    cells = sum(p.area_m2 for p in polygonize_changes(str(probability), threshold=0.0)) / 100
    assert cells == pytest.approx(SIZE * SIZE - 40 * 40 - 20 * 20, rel=2e-3)  # ellipsoidal m²


def test_an_all_nan_raster_is_named(work, capsys):
    pre = np.full((3, SIZE, SIZE), np.nan, np.float32)
    pair = float_pair(work, pre, np.ones((3, SIZE, SIZE), np.float32))
    refused(detect_argv(pair), capsys, "fb.tif has no valid pixel")
    assert snapshot(work["out"]) == {}


def test_an_all_nodata_raster_is_an_error_not_an_empty_map(work, capsys):
    zeros = np.zeros((3, SIZE, SIZE), np.uint8)
    pair = {**work, "before": write_raster(work["root"] / "nd.tif", zeros, nodata=0)}
    refused(detect_argv(pair), capsys, "share no valid pixel")
    assert snapshot(work["out"]) == {}


# ----------------------------------------------------------------------------------- models


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_files_never_run_and_get_one_line(work, capsys):
    marker = work["root"] / "pwned"
    Payload.marker = marker
    evil = work["root"] / "evil.pth"
    evil.write_bytes(pickle.dumps({"weights": Payload()}))
    data = work["root"] / "data"
    main(["synth", "--out", str(data), "--scenes", "1", "--size", "64", "--tile-size", "64"])
    capsys.readouterr()
    argv = ["train-kd", "--data", str(data), "--out", str(work["out"] / "m.kdmsi")]
    err = refused([*argv, "--weights", str(evil)], capsys, "pickled code, which kdmsi never runs")
    assert "weights_only=False" not in err
    evil_model = work["root"] / "evil.kdmsi"
    torch.save({"format": Payload()}, evil_model)
    argv = detect_argv(work)
    argv[argv.index("--model") + 1] = str(evil_model)
    refused(argv, capsys, "not a readable kdmsi model file")
    assert not marker.exists()
    assert snapshot(work["out"]) == {}


# ------------------------------------------------------------------------ signals and faults


def send_once(monkeypatch, module, name: str, signum: int) -> None:
    """Send ``signum`` to this process the first time ``module.name`` is called."""
    real = getattr(module, name)
    sent = []

    def wrapper(*args, **kwargs):
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)


def test_ctrl_c_while_polygonizing_exits_130_and_leaves_nothing(work, capsys, monkeypatch):
    import kdmsi.geo.polygons as polygons

    real = polygons._gdal_callback

    def interrupting(*args, **kwargs):
        callback = real(*args, **kwargs)
        sent = []

        def inner(fraction, msg, data):
            if not sent:
                sent.append(True)
                os.kill(os.getpid(), signal.SIGINT)  # lands inside GDAL's Polygonize
            return callback(fraction, msg, data)

        return inner

    monkeypatch.setattr(polygons, "_gdal_callback", interrupting)
    probability = str(work["out"] / "p.tif")
    refused(
        detect_argv(work, "--probability", probability), capsys, "cancelled (SIGINT)", status=130
    )
    assert snapshot(work["out"]) == {}


def test_sigterm_is_a_cancel_exit_143_and_leaves_nothing(work, capsys, monkeypatch):
    import kdmsi.detect.tile_loop as tile_loop

    send_once(monkeypatch, tile_loop, "crop_tile", signal.SIGTERM)
    probability = str(work["out"] / "p.tif")
    refused(
        detect_argv(work, "--probability", probability), capsys, "cancelled (SIGTERM)", status=143
    )
    assert snapshot(work["out"]) == {}


def test_sigterm_from_outside_the_process(work, tmp_path):
    """A real `timeout`-style SIGTERM on the console script, during the tile loop."""
    big = np.random.default_rng(2).integers(0, 255, (3, 1024, 1024), dtype=np.uint8)
    before = write_raster(tmp_path / "bb.tif", big)
    after = write_raster(tmp_path / "ba.tif", big[::-1].copy())
    out = work["out"]
    argv = detect_argv({**work, "before": before, "after": after}, "--probability")
    argv.append(str(out / "p.tif"))
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "kdmsi"), *argv],
        stderr=subprocess.PIPE,
        text=True,
    )
    for _ in range(600):  # wait for the temporary probability raster to appear
        if any(p.name.startswith(".p.tmp-") for p in out.iterdir()) or proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("detect finished before the signal")
    assert proc.returncode == 143, err
    assert "cancelled (SIGTERM)" in err and "Traceback" not in err
    assert snapshot(out) == {}


def test_stale_temporary_files_of_a_killed_run_are_removed_and_named(work, capsys, caplog):
    dead = 2**22 + 12345  # above the default pid_max: no such process
    stale = work["out"] / f".changes.tmp-{dead}-abcd.gpkg"
    stale.write_bytes(b"half a file")
    live = work["out"] / f".changes.tmp-{os.getppid()}-efgh.gpkg"
    live.write_bytes(b"a live writer's file")
    assert main(detect_argv(work)) == 0
    err = capsys.readouterr().err
    assert f"removed 1 temporary file(s) left by an interrupted run: {stale.name}" in err
    assert not stale.exists() and live.exists()


def test_disk_full_while_writing_the_geopackage(work, capsys):
    full = work["root"] / "full"
    full.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(full)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        err = refused(detect_argv(work, out=str(full / "changes.gpkg")), capsys, "disk space")
        assert f"writing {full / 'changes.gpkg'} failed" in err and ".tmp-" not in err
        assert os.listdir(full) == []
    finally:
        subprocess.run(["umount", str(full)], check=True)


def test_identical_runs_give_byte_identical_geopackages(work, capsys):
    (work["out"] / "a").mkdir()
    (work["out"] / "b").mkdir()
    first, second = work["out"] / "a" / "changes.gpkg", work["out"] / "b" / "changes.gpkg"
    assert main(detect_argv(work, "--threshold", "0.3", out=str(first))) == 0
    assert main(detect_argv(work, "--threshold", "0.3", out=str(second))) == 0
    capsys.readouterr()
    assert digest(first) == digest(second)


def test_training_checks_its_outputs_before_training(work, capsys):
    """A model file that cannot be written is refused at once, not after training."""
    data = work["root"] / "data"
    main(["synth", "--out", str(data), "--scenes", "1", "--size", "64", "--tile-size", "64"])
    capsys.readouterr()
    for verb in (["train-kd"], ["train-cd", "--labels", str(data / "label")]):
        err = refused(
            [*verb, "--data", str(data), "--out", str(work["before"] / "m.kdmsi")],
            capsys,
            "is a file, not a folder",
        )
        assert "training on" not in err
    argv = ["train-hicd", "--teacher", str(work["model"]), "--data", str(data)]
    refused([*argv, "--out", str(work["root"] / "no" / "m.kdmsi")], capsys, "does not exist")


# ---------------------------------------------------------------------------------- tag layers


def tag_layer(path: Path, values: list, field: str = "changed", crs: bool = True) -> Path:
    """A GeoPackage of 32 px tiles over the pair, with ``field`` set to ``values`` in turn."""
    from osgeo import ogr

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    source = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = source.CreateLayer("tiles", srs if crs else None, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn(field, ogr.OFTInteger))
    x0, y0, step = GT[0], GT[3], 320.0
    for i, value in enumerate(values):
        col, row = i % 3, i // 3
        ring = ogr.Geometry(ogr.wkbLinearRing)
        for dx, dy in ((0, 0), (1, 0), (1, 1), (0, 1), (0, 0)):
            ring.AddPoint_2D(x0 + (col + dx) * step, y0 - (row + dy) * step)
        polygon = ogr.Geometry(ogr.wkbPolygon)
        polygon.AddGeometry(ring)
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetGeometry(polygon)
        if value is not None:
            feature.SetField(field, value)
        layer.CreateFeature(feature)
    source = None
    return path


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda p: tag_layer(p, [1, 0, 1], field="tag"), "has no field 'changed'"),
        (lambda p: tag_layer(p, [1, 2, 0]), "has changed=2; use 1, 0 or leave it empty"),
        (lambda p: tag_layer(p, [1, 0, 1], crs=False), "has no CRS"),
        (lambda p: p.write_text("not a vector file"), "cannot open tile layer"),
        (lambda p: None, "the file does not exist"),
    ],
)
def test_bad_tag_layers_are_named_before_training(work, capsys, make, expected):
    tiles = work["root"] / "tiles.gpkg"
    make(tiles)
    argv = ["train", "--before", str(work["before"]), "--after", str(work["after"])]
    argv += ["--tiles", str(tiles), "--out", str(work["out"] / "m.kdmsi"), "--no-report"]
    err = refused(argv, capsys, expected)
    assert "tiles.gpkg" in err and "epoch" not in err
    assert snapshot(work["out"]) == {}


def test_tag_layer_as_output_is_refused(work, capsys):
    tiles = tag_layer(work["root"] / "tiles.gpkg", [1, 0, 1])
    original = digest(tiles)
    argv = ["train", "--before", str(work["before"]), "--after", str(work["after"])]
    argv += ["--tiles", str(tiles), "--out", str(work["out"] / "m.kdmsi")]
    refused([*argv, "--kd-model", str(tiles), "--overwrite"], capsys, "same file as --tiles")
    refused(
        [
            "tile-grid",
            "--before",
            str(work["before"]),
            "--after",
            str(work["after"]),
            "--out",
            str(work["before"]),
            "--overwrite",
        ],  # fmt: skip
        capsys,
        "same file as --before",
    )
    assert digest(tiles) == original
