"""ONNX export (`kdmsi export-onnx`) and the ONNX Runtime detect path (`--runtime onnx`).

One random-init ResNet-18 detector for 64 px tiles is exported once per module; the detect
runs use a 160 x 192 px pair (a 4 x 4 tile grid), so the whole file takes seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from osgeo import gdal, osr

from kdmsi.cli import main
from kdmsi.data.normalisation import Normalisation
from kdmsi.detect.with_model import detect_changes
from kdmsi.models import SiameseDeepLabV3Plus
from kdmsi.models.checkpoint import save_detector
from kdmsi.runtime.load import choose_runtime
from kdmsi.runtime.onnx_export import ExportError, export_onnx, max_difference
from kdmsi.runtime.onnx_model import (
    ONNX_TOLERANCE,
    OnnxModelError,
    OnnxPredictor,
    RuntimeUnavailable,
    read_onnx_info,
    require_onnxruntime,
)

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

TILE, BATCH, OVERLAP = 64, 2, 16
GT = (500000.0, 2.0, 0.0, 5000000.0, 0.0, -2.0)


def _write(path: Path, data: np.ndarray) -> Path:
    c, h, w = data.shape
    ds = gdal.GetDriverByName("GTiff").Create(str(path), w, h, c, gdal.GDT_Byte)
    ds.SetGeoTransform(GT)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    ds.SetProjection(srs.ExportToWkt())
    for i in range(c):
        ds.GetRasterBand(i + 1).WriteArray(data[i])
    ds = None
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    net = SiameseDeepLabV3Plus("resnet18", in_channels=3)
    ckpt = save_detector(folder / "det.kdmsi", net, [1, 2, 3], Normalisation.default(3), TILE)
    onnx_path = export_onnx(ckpt, folder / "det.onnx", batch_size=BATCH)
    return {"kdmsi": ckpt, "onnx": onnx_path}


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("pair")
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:160, 0:192]
    pre = np.stack([40 + x // 3, 90 - y // 4, 60 + (x + y) % 50]).astype(np.uint8)
    post = pre.copy()
    post[:, 50:110, 70:150] += 110
    post = (post + rng.integers(0, 6, post.shape)).astype(np.uint8)
    return _write(folder / "before.tif", pre), _write(folder / "after.tif", post)


def test_export_has_concrete_shapes_and_metadata(models):
    proto = onnx.load(str(models["onnx"]))
    shapes = {
        v.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in _dims(v)]
        for v in [*proto.graph.input, *proto.graph.output]
    }
    assert shapes == {
        "pre": [BATCH, 3, TILE, TILE],
        "post": [BATCH, 3, TILE, TILE],
        "probability": [BATCH, 1, TILE, TILE],
    }
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert meta["kdmsi_format"] == "kdmsi-onnx" and meta["kind"] == "detector"
    assert meta["tile_size"] == TILE and meta["batch_size"] == BATCH
    assert meta["overlap_px"] == OVERLAP  # a quarter of a 64 px tile
    assert meta["bands"] == [1, 2, 3] and meta["backbone"] == "resnet18"
    assert meta["normalisation"] == Normalisation.default(3).to_dict()
    assert meta["threshold"] == 0.5 and meta["class_names"] == ["no change", "change"]
    info = read_onnx_info(models["onnx"])
    assert (info.tile_size, info.batch_size, info.channels) == (TILE, BATCH, 3)
    # written by appending to torch's file: the appended fields win, nothing is duplicated
    assert (proto.producer_name, proto.doc_string) == (
        "kdmsi",
        "kdmsi detector (resnet18) change probability",
    )
    assert len(proto.metadata_props) == len(meta)
    onnx.checker.check_model(proto)


def _dims(value):
    return value.type.tensor_type.shape.dim


def test_onnx_matches_torch_within_tolerance(models):
    from kdmsi.models.checkpoint import load_checkpoint
    from kdmsi.runtime.onnx_export import ProbabilityModule

    net, _ = load_checkpoint(models["kdmsi"])
    difference = max_difference(ProbabilityModule(net, "detector"), models["onnx"], seed=3)
    assert difference <= ONNX_TOLERANCE
    predictor = OnnxPredictor(models["onnx"])
    one = np.random.default_rng(1).standard_normal((1, 3, TILE, TILE), dtype=np.float32)
    assert predictor(one, one).shape == (1, 1, TILE, TILE)  # a short batch is padded


def _probability(path: Path) -> np.ndarray:
    ds = gdal.Open(str(path))  # kept alive while its band is read (GDAL < 3.8)
    return ds.GetRasterBand(1).ReadAsArray()


def test_detect_with_onnx_equals_torch(models, pair, tmp_path):
    before, after = pair
    common = dict(overlap_px=OVERLAP, batch_size=BATCH, device="cpu", threshold=0.5)
    results = {}
    for name, model, runtime in (
        ("torch", models["kdmsi"], "torch"),
        ("exported", models["kdmsi"], "onnx"),
        ("file", models["onnx"], "auto"),
    ):
        out, prob = tmp_path / f"{name}.gpkg", tmp_path / f"{name}.tif"
        result = detect_changes(before, after, model, out, prob, runtime=runtime, **common)
        results[name] = (result, _probability(prob))
    reference = results["torch"][1]
    assert results["torch"][0].runtime == "torch"
    for name in ("exported", "file"):
        result, prob = results[name]
        assert result.runtime == "onnx" and result.device == "cpu"
        assert np.abs(prob - reference).max() <= ONNX_TOLERANCE
        near = np.abs(reference - 0.5) <= ONNX_TOLERANCE  # a threshold tie may flip
        assert ((prob >= 0.5) == (reference >= 0.5))[~near].all()
        if not near.any():
            assert result.polygon_count == results["torch"][0].polygon_count


def test_onnx_detect_never_imports_torch(models, pair, tmp_path):
    before, after = pair
    code = (
        "import sys; from kdmsi.cli import main; "
        f"code = main(['-q', 'detect', '--before', {str(before)!r}, '--after', {str(after)!r}, "
        f"'--model', {str(models['onnx'])!r}, '--out', {str(tmp_path / 'c.gpkg')!r}, "
        f"'--overlap', '{OVERLAP}']); "
        "assert code == 0, code; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "c.gpkg").is_file()


def test_mismatched_tile_size_and_torch_runtime_are_refused(models, pair, tmp_path, capsys):
    before, after = pair
    with pytest.raises(OnnxModelError, match="exported for 64 px tiles.*--tile-size 128"):
        detect_changes(before, after, models["onnx"], tmp_path / "a.gpkg", tile_size=128)
    with pytest.raises(RuntimeUnavailable, match="--runtime onnx"):
        detect_changes(before, after, models["onnx"], tmp_path / "a.gpkg", runtime="torch")
    argv = ["detect", "--before", str(before), "--after", str(after), "--model"]
    assert main([*argv, str(models["onnx"]), "--out", str(tmp_path / "b.gpkg")]) == 0
    code = main(
        [*argv, str(models["onnx"]), "--out", str(tmp_path / "c.gpkg"), "--tile-size", "32"]
    )
    assert code == 2 and "exported for 64 px tiles" in capsys.readouterr().err
    assert not (tmp_path / "a.gpkg").exists() and not (tmp_path / "c.gpkg").exists()


def test_missing_onnxruntime_gives_the_pip_command(models, pair, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    with pytest.raises(RuntimeUnavailable, match="pip install onnxruntime"):
        require_onnxruntime()
    before, after = pair
    argv = ["detect", "--before", str(before), "--after", str(after), "--out"]
    out = tmp_path / "x.gpkg"
    assert main([*argv, str(out), "--model", str(models["kdmsi"]), "--runtime", "onnx"]) == 2
    assert "pip install onnxruntime" in capsys.readouterr().err
    # auto falls back to torch without a word of error
    assert main([*argv, str(out), "--model", str(models["kdmsi"]), "--overlap", "16"]) == 0
    assert out.is_file()


def test_export_onnx_cli_and_refusals(models, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export-onnx", str(models["kdmsi"]), str(out), "--batch-size", "1"]) == 0
    assert read_onnx_info(out).batch_size == 1
    assert main(["export-onnx", str(models["kdmsi"]), str(out)]) == 2  # exists
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export-onnx", str(models["kdmsi"]), str(tmp_path / "m.txt")]) == 2
    assert ".onnx extension" in capsys.readouterr().err
    foreign = tmp_path / "foreign.onnx"
    proto = onnx.load(str(out))
    del proto.metadata_props[:]
    onnx.save(proto, str(foreign))
    with pytest.raises(OnnxModelError, match="not exported by kdmsi"):
        OnnxPredictor(foreign)


def test_auto_runtime_picks_the_faster_runner():
    def slow(pre, post):
        time.sleep(0.02)
        return np.zeros((pre.shape[0], *pre.shape[2:]), np.float32)

    def fast(pre, post):
        return np.zeros((pre.shape[0], *pre.shape[2:]), np.float32)

    choice, seconds = choose_runtime({"torch": slow, "onnx": fast}, 2, 3, 16)
    assert choice == "onnx" and seconds["torch"] >= 0.01 > seconds["onnx"]
    assert choose_runtime({"torch": fast, "onnx": slow}, 2, 3, 16)[0] == "torch"


def test_auto_runtime_exports_the_loaded_model_and_checks_it(models, pair, tmp_path, monkeypatch):
    # grids of AUTO_PROBE_MIN_TILES and more: export, check against torch, time both
    import kdmsi.runtime.load as detect_model

    monkeypatch.setattr(detect_model, "AUTO_PROBE_MIN_TILES", 1)
    before, after = pair
    common = dict(overlap_px=OVERLAP, batch_size=BATCH, device="cpu", threshold=0.5)
    reference = detect_changes(
        before,
        after,
        models["kdmsi"],
        tmp_path / "t.gpkg",
        tmp_path / "t.tif",
        runtime="torch",
        **common,
    )
    auto = detect_changes(
        before,
        after,
        models["kdmsi"],
        tmp_path / "a.gpkg",
        tmp_path / "a.tif",
        runtime="auto",
        **common,
    )
    assert reference.runtime == "torch" and auto.runtime in ("torch", "onnx")
    got, expected = _probability(tmp_path / "a.tif"), _probability(tmp_path / "t.tif")
    assert np.abs(got - expected).max() <= ONNX_TOLERANCE

    # an export that does not match torch: auto runs torch, --runtime onnx refuses
    import kdmsi.runtime.onnx_export as onnx_export

    monkeypatch.setenv("KDMSI_CACHE_DIR", str(tmp_path / "fresh-cache"))  # export again

    monkeypatch.setattr(onnx_export, "max_difference", lambda *a, **k: 1.0)
    fallback = detect_changes(
        before, after, models["kdmsi"], tmp_path / "f.gpkg", runtime="auto", **common
    )
    assert fallback.runtime == "torch"
    with pytest.raises(ExportError, match="differs from torch.*--runtime torch"):
        detect_changes(
            before, after, models["kdmsi"], tmp_path / "o.gpkg", runtime="onnx", **common
        )
    assert not (tmp_path / "o.gpkg").exists()


def test_auto_runtime_keeps_its_export_and_choice(models, pair, tmp_path, monkeypatch):
    import kdmsi.models.checkpoint
    import kdmsi.runtime.load as detect_model
    from kdmsi.runtime import onnx_cache

    monkeypatch.setattr(detect_model, "AUTO_PROBE_MIN_TILES", 1)
    monkeypatch.setattr(
        detect_model, "choose_runtime", lambda *a: ("onnx", {"torch": 0.2, "onnx": 0.1})
    )
    before, after = pair
    common = dict(overlap_px=OVERLAP, batch_size=BATCH, device="cpu", threshold=0.5)
    first = detect_changes(
        before,
        after,
        models["kdmsi"],
        tmp_path / "1.gpkg",
        tmp_path / "1.tif",
        runtime="auto",
        **common,
    )
    key = onnx_cache.export_key(models["kdmsi"], None, BATCH, None, True)
    kept = onnx_cache.lookup(key)
    assert first.runtime == "onnx" and kept is not None and kept.choice == "onnx"
    assert kept.seconds_per_tile == {"torch": 0.2, "onnx": 0.1}
    assert read_onnx_info(kept.onnx_path).batch_size == BATCH

    # the second run loads the kept export: no checkpoint read, no export, same result
    def no_checkpoint(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded again")

    load_checkpoint = kdmsi.models.checkpoint.load_checkpoint
    monkeypatch.setattr(kdmsi.models.checkpoint, "load_checkpoint", no_checkpoint)
    second = detect_changes(
        before,
        after,
        models["kdmsi"],
        tmp_path / "2.gpkg",
        tmp_path / "2.tif",
        runtime="auto",
        **common,
    )
    assert second.runtime == "onnx"
    np.testing.assert_array_equal(
        _probability(tmp_path / "2.tif"), _probability(tmp_path / "1.tif")
    )

    # ... and in a fresh process torch is never imported (the grid is small: the kept
    # export is used whatever the grid)
    code = (
        "import sys; from kdmsi.cli import main; "
        f"code = main(['-q', 'detect', '--before', {str(before)!r}, '--after', {str(after)!r}, "
        f"'--model', {str(models['kdmsi'])!r}, '--out', {str(tmp_path / '3.gpkg')!r}, "
        f"'--overlap', '{OVERLAP}', '--batch-size', '{BATCH}', '--device', 'cpu']); "
        "assert code == 0, code; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]

    # a damaged kept export is dropped and made again
    monkeypatch.setattr(kdmsi.models.checkpoint, "load_checkpoint", load_checkpoint)
    kept.onnx_path.write_bytes(b"truncated")
    again = detect_changes(
        before, after, models["kdmsi"], tmp_path / "4.gpkg", runtime="auto", **common
    )
    assert again.runtime == "onnx" and read_onnx_info(kept.onnx_path).batch_size == BATCH

    # another batch size is another export
    assert onnx_cache.lookup(onnx_cache.export_key(models["kdmsi"], None, 1, None, True)) is None


def test_onnx_cache_keeps_the_most_recent_entries(tmp_path, monkeypatch):
    from kdmsi.runtime import onnx_cache

    model = tmp_path / "m.onnx"
    model.write_bytes(b"not really onnx")
    keys = [f"key{i}" for i in range(onnx_cache.MAX_ENTRIES + 1)]
    for i, key in enumerate(keys):
        assert onnx_cache.store(key, model, "torch" if i else "bogus") is not None
        os.utime(onnx_cache.cache_dir() / key, (i, i))  # older first, whatever the clock
    onnx_cache.store("key-last", model)
    kept = sorted(p.name for p in onnx_cache.cache_dir().iterdir())
    assert kept == sorted(keys[-(onnx_cache.MAX_ENTRIES - 1) :] + ["key-last"])
    hit = onnx_cache.lookup(keys[-1])
    assert hit.choice == "torch" and hit.onnx_path.read_bytes() == b"not really onnx"
    assert onnx_cache.lookup("key-last").choice is None

    monkeypatch.setenv("KDMSI_CACHE_DIR", "")  # empty: no cache at all
    assert onnx_cache.cache_dir() is None and onnx_cache.store("x", model) is None
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setenv("KDMSI_CACHE_DIR", str(blocked / "cache"))  # cannot be created
    assert onnx_cache.store("x", model) is None and onnx_cache.lookup("x") is None


def test_auto_runtime_remembers_choosing_torch(models, pair, tmp_path, monkeypatch):
    import kdmsi.runtime.load as detect_model
    import kdmsi.runtime.onnx_export as onnx_export

    monkeypatch.setattr(detect_model, "AUTO_PROBE_MIN_TILES", 1)
    monkeypatch.setattr(
        detect_model, "choose_runtime", lambda *a: ("torch", {"torch": 0.1, "onnx": 0.2})
    )
    before, after = pair
    common = dict(overlap_px=OVERLAP, batch_size=BATCH, device="cpu", threshold=0.5)
    first = detect_changes(
        before, after, models["kdmsi"], tmp_path / "1.gpkg", runtime="auto", **common
    )
    assert first.runtime == "torch"

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_export, "export_loaded", no_export)
    monkeypatch.setattr(detect_model, "choose_runtime", no_export)
    second = detect_changes(
        before, after, models["kdmsi"], tmp_path / "2.gpkg", runtime="auto", **common
    )
    assert second.runtime == "torch"
    # --runtime onnx uses the kept export as it is
    third = detect_changes(
        before, after, models["kdmsi"], tmp_path / "3.gpkg", runtime="onnx", **common
    )
    assert third.runtime == "onnx"
