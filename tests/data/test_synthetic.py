"""Tests for kdmsi.data.synthetic: determinism, scene statistics, nuisance, GeoTIFF and tile
output."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kdmsi.data.synthetic import Scene, make_scene, write_scene, write_tile_dataset
from kdmsi.data.synthetic import write as synthetic_write

TILE = 256


@pytest.fixture(scope="module")
def default_scenes() -> list[Scene]:
    """Three full-size scenes with default parameters."""
    return [make_scene(seed=seed) for seed in range(3)]


@pytest.fixture()
def gdal():
    """The GDAL module (tests that write files are skipped without it)."""
    return pytest.importorskip("osgeo.gdal")


def _tile_flags(change: np.ndarray, tile: int = TILE) -> np.ndarray:
    """Bool [rows, cols]: does each full tile of the [H, W] mask hold any change?"""
    rows, cols = change.shape[0] // tile, change.shape[1] // tile
    cut = change[: rows * tile, : cols * tile].reshape(rows, tile, cols, tile)
    return cut.any(axis=(1, 3))


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Square dilation of a bool [H, W] mask by ``radius`` pixels."""
    out = mask.copy()
    for _ in range(radius):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def _read(gdal, path: Path) -> np.ndarray:
    """All bands of a raster as [C, H, W]."""
    ds = gdal.Open(str(path))
    assert ds is not None, path
    return np.stack([ds.GetRasterBand(i + 1).ReadAsArray() for i in range(ds.RasterCount)])


# ---------------------------------------------------------------------------- make_scene


def test_same_seed_is_bit_identical():
    a = make_scene(height=192, width=320, seed=7)
    b = make_scene(height=192, width=320, seed=7)
    np.testing.assert_array_equal(a.pre, b.pre)
    np.testing.assert_array_equal(a.post, b.post)
    np.testing.assert_array_equal(a.change, b.change)
    assert a.geotransform == b.geotransform
    assert a.crs_wkt == b.crs_wkt


def test_different_seeds_differ():
    a = make_scene(height=192, width=192, seed=1)
    b = make_scene(height=192, width=192, seed=2)
    assert not np.array_equal(a.pre, b.pre)
    assert not np.array_equal(a.change, b.change)


@pytest.mark.parametrize(
    ("height", "width", "bands"),
    [(128, 128, 3), (96, 200, 4), (200, 96, 1), (64, 80, 2), (80, 48, 6), (16, 16, 3)],
)
def test_shapes_and_dtypes(height, width, bands):
    scene = make_scene(height=height, width=width, seed=3, bands=bands, pixel_size_m=0.25)
    assert scene.pre.shape == scene.post.shape == (bands, height, width)
    assert scene.pre.dtype == scene.post.dtype == np.uint8
    assert scene.change.shape == (height, width)
    assert scene.change.dtype == np.bool_
    assert scene.geotransform == (500000.0, 0.25, 0.0, 5500000.0, 0.0, -0.25)
    assert scene.seed == 3
    assert scene.shape == (height, width)
    assert scene.bands == bands


def test_default_change_fraction_and_tile_balance(default_scenes):
    for scene in default_scenes:
        assert scene.pre.shape == (3, 1024, 1024)
        assert 0.05 <= scene.change.mean() <= 0.2
        flags = _tile_flags(scene.change)
        unchanged = 1.0 - flags.mean()
        assert 0.2 <= unchanged <= 0.7, f"seed {scene.seed}: {unchanged:.2f} unchanged tiles"


def test_change_fraction_argument_controls_amount():
    low = make_scene(height=512, width=512, seed=4, change_fraction=0.03).change.mean()
    high = make_scene(height=512, width=512, seed=4, change_fraction=0.12).change.mean()
    none = make_scene(height=512, width=512, seed=4, change_fraction=0.0).change.mean()
    assert none == 0.0
    assert 0.01 < low < high


def test_nuisance_changes_unchanged_pixels_but_not_the_mask():
    noisy = make_scene(height=384, width=384, seed=5, nuisance=True)
    clean = make_scene(height=384, width=384, seed=5, nuisance=False)
    np.testing.assert_array_equal(noisy.change, clean.change)
    stable = ~noisy.change
    diff = np.abs(noisy.pre.astype(np.int16) - noisy.post.astype(np.int16))
    assert diff[:, stable].mean() > 3.0
    # Without nuisance the dates agree exactly away from the changes (the sensor blur spreads
    # each change by one pixel).
    far = ~_dilate(clean.change, 2)
    np.testing.assert_array_equal(clean.pre[:, far], clean.post[:, far])


def test_true_changes_are_visible():
    scene = make_scene(height=384, width=384, seed=6, nuisance=False)
    assert scene.change.any()
    diff = np.abs(scene.pre.astype(np.int16) - scene.post.astype(np.int16)).max(axis=0)
    assert diff[scene.change].mean() > 20.0


def test_uint16_has_same_content():
    s8 = make_scene(height=160, width=224, seed=8, nuisance=False)
    s16 = make_scene(height=160, width=224, seed=8, nuisance=False, dtype="uint16")
    assert s16.pre.dtype == s16.post.dtype == np.uint16
    assert 255 < s16.pre.max() <= 4095
    np.testing.assert_array_equal(s16.change, s8.change)
    back = s16.pre.astype(np.float64) * 255.0 / 4095.0
    assert np.abs(back - s8.pre).max() <= 1.0


def test_extra_bands_extend_rgb_with_nir():
    rgb = make_scene(height=128, width=128, seed=9, nuisance=False)
    multi = make_scene(height=128, width=128, seed=9, nuisance=False, bands=5)
    np.testing.assert_array_equal(multi.pre[:3], rgb.pre)
    nir = multi.pre[3].astype(np.float64)
    assert nir.std() > 5.0
    assert nir.mean() > multi.pre[0].mean()  # vegetation is bright in the near infrared
    assert not np.array_equal(multi.pre[4], multi.pre[3])


@pytest.mark.parametrize(
    "kwargs",
    [{"dtype": "float32"}, {"bands": 0}, {"height": 8}, {"change_fraction": 0.9}],
)
def test_invalid_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        make_scene(**{"height": 64, "width": 64, **kwargs})


def test_make_scene_needs_no_gdal():
    code = (
        "import sys; sys.modules['osgeo'] = None\n"
        "from kdmsi.data.synthetic import make_scene\n"
        "s = make_scene(height=64, width=64, epsg=32610)\n"
        "assert 'UTM zone 10N' in s.crs_wkt\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_utm_wkt_matches_gdal():
    osr = pytest.importorskip("osgeo.osr")
    for epsg in (32601, 32633, 32660, 32719):
        ours = osr.SpatialReference()
        ours.ImportFromWkt(make_scene(height=16, width=16, epsg=epsg).crs_wkt)
        ref = osr.SpatialReference()
        ref.ImportFromEPSG(epsg)
        assert ours.IsSame(ref), epsg
        assert ours.GetAuthorityCode(None) == str(epsg)


# ---------------------------------------------------------------------------- write_scene


def test_write_scene_roundtrip(tmp_path, gdal):
    osr = pytest.importorskip("osgeo.osr")
    scene = make_scene(height=300, width=270, seed=10, origin=(400000.0, 6000000.0))
    paths = write_scene(scene, tmp_path / "out")
    assert set(paths) == {"before", "after", "truth"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "after.tif",
        "before.tif",
        "truth.tif",
    ]
    np.testing.assert_array_equal(_read(gdal, paths["before"]), scene.pre)
    np.testing.assert_array_equal(_read(gdal, paths["after"]), scene.post)
    truth = _read(gdal, paths["truth"])
    assert truth.dtype == np.uint8
    np.testing.assert_array_equal(truth[0], scene.change.astype(np.uint8) * 255)
    for path in paths.values():
        ds = gdal.Open(str(path))
        assert ds.GetGeoTransform() == pytest.approx(scene.geotransform)
        srs = osr.SpatialReference()
        srs.ImportFromWkt(ds.GetProjection())
        ref = osr.SpatialReference()
        ref.ImportFromEPSG(32633)
        assert srs.IsSame(ref)
        assert ds.GetMetadata("IMAGE_STRUCTURE").get("COMPRESSION") == "DEFLATE"
        assert ds.GetRasterBand(1).GetBlockSize() == [256, 256]  # tiled, not striped


def test_write_scene_uint16_with_nodata(tmp_path, gdal):
    scene = make_scene(height=128, width=160, seed=11, bands=4, dtype="uint16")
    paths = write_scene(scene, tmp_path, nodata=0)
    ds = gdal.Open(str(paths["before"]))
    assert ds.RasterCount == 4
    assert ds.GetRasterBand(1).DataType == gdal.GDT_UInt16
    assert ds.GetRasterBand(1).GetNoDataValue() == 0
    data = _read(gdal, paths["before"])
    assert data.min() > 0
    assert np.abs(data.astype(np.int32) - scene.pre).max() <= 1


def test_write_scene_failure_leaves_nothing(tmp_path, monkeypatch, gdal):
    real = synthetic_write._write_geotiff
    calls = []

    def flaky(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            real(path, *args, **kwargs)
            raise OSError("disk full")
        real(path, *args, **kwargs)

    monkeypatch.setattr(synthetic_write, "_write_geotiff", flaky)
    with pytest.raises(OSError, match="disk full"):
        write_scene(make_scene(height=64, width=64, seed=12), tmp_path)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- tile dataset


def test_tile_dataset_layout_and_labels(tmp_path, gdal):
    scenes = [make_scene(height=512, width=640, seed=seed) for seed in (13, 14)]
    root = write_tile_dataset(scenes, tmp_path / "ds", tile_size=TILE)
    assert root == tmp_path / "ds"
    with open(root / "labels.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["name", "changed"]
    labels = {name: int(flag) for name, flag in rows[1:]}
    expected = {}
    for scene in scenes:
        flags = _tile_flags(scene.change)
        for (row, col), flag in np.ndenumerate(flags):
            expected[f"s{scene.seed}_{row:03d}_{col:03d}"] = int(flag)
    assert labels == expected  # 2 x 2 full tiles per scene; the partial column is dropped
    assert sorted(p.stem for p in (root / "A").iterdir()) == sorted(expected)
    assert sorted(p.stem for p in (root / "B").iterdir()) == sorted(expected)
    assert sorted(p.stem for p in (root / "label").iterdir()) == sorted(expected)

    scene = scenes[1]
    name = f"s{scene.seed}_001_000"
    window = (slice(TILE, 2 * TILE), slice(0, TILE))
    np.testing.assert_array_equal(
        _read(gdal, root / "A" / f"{name}.png"), scene.pre[:, window[0], window[1]]
    )
    np.testing.assert_array_equal(
        _read(gdal, root / "B" / f"{name}.png"), scene.post[:, window[0], window[1]]
    )
    label = _read(gdal, root / "label" / f"{name}.png")
    assert label.shape == (1, TILE, TILE)
    np.testing.assert_array_equal(label[0], scene.change[window].astype(np.uint8) * 255)
    assert set(labels.values()) <= {0, 1}


def test_tile_dataset_has_both_classes(tmp_path, gdal, default_scenes):
    root = write_tile_dataset(default_scenes[:1], tmp_path, tile_size=TILE)
    with open(root / "labels.csv", newline="") as handle:
        flags = [int(row["changed"]) for row in csv.DictReader(handle)]
    assert len(flags) == 16
    assert 0 < sum(flags) < 16


def test_tile_dataset_multiband_writes_tiff(tmp_path, gdal):
    scene = make_scene(height=256, width=256, seed=15, bands=4)
    root = write_tile_dataset([scene], tmp_path, tile_size=128)
    assert (root / "A" / "s15_001_001.tif").exists()
    assert (root / "label" / "s15_001_001.png").exists()
    tile = _read(gdal, root / "B" / "s15_000_001.tif")
    np.testing.assert_array_equal(tile, scene.post[:, :128, 128:])


def test_tile_dataset_rejects_uint16_and_duplicate_seeds(tmp_path):
    with pytest.raises(ValueError):
        write_tile_dataset([make_scene(height=64, width=64, dtype="uint16")], tmp_path)
    scene = make_scene(height=64, width=64, seed=1)
    with pytest.raises(ValueError):
        write_tile_dataset([scene, scene], tmp_path)
