"""Tests for kdmsi.detect.with_model (the detect path) and the `kdmsi detect` / `tile-grid`
commands.

Most tests run the real tile loop with an "oracle" predict callable whose probability comes
from |post - pre|, so the polygons must match a known square of change; the model-file tests
use random-init ResNet-18 networks (their output is meaningless, the pipeline properties are
not).
"""

from __future__ import annotations

from pathlib import Path

import fiona
import numpy as np
import pytest
from detect_helpers import (
    GT,
    HEIGHT,
    NORM,
    PIXEL,
    SQUARE,
    TILE,
    WIDTH,
    blurred_oracle,
    features,
    files_in,
    oracle,
    run_oracle,
    scene,
    wkt,
    write_raster,
)
from osgeo import gdal, ogr, osr
from shapely.geometry import shape
from shapely.ops import unary_union

from kdmsi.cli import main
from kdmsi.detect.with_model import detect_changes
from kdmsi.geo.probability_raster import read_metadata
from kdmsi.geo.raster import PROB_NODATA
from kdmsi.geo.tile_layer import make_tile_grid

# ------------------------------------------------------------------------ model file, CLI


def test_cli_detect_writes_georeferenced_outputs(tmp_path, pair, detector_model):
    before, after = pair
    out, prob = tmp_path / "changes.gpkg", tmp_path / "prob.tif"
    argv = [
        "detect",
        "--before",
        str(before),
        "--after",
        str(after),
        "--model",
        str(detector_model),
    ]
    assert main([*argv, "--out", str(out), "--probability", str(prob), *TILE]) == 0

    ds = gdal.Open(str(prob))
    assert (ds.RasterXSize, ds.RasterYSize) == (WIDTH, HEIGHT)
    assert ds.GetGeoTransform() == pytest.approx(GT)
    assert ds.GetSpatialRef().IsSame(osr.SpatialReference(wkt(32633)))
    assert ds.GetRasterBand(1).GetOverviewCount() >= 1
    values = ds.GetRasterBand(1).ReadAsArray()
    assert values.min() >= 0.0 and values.max() <= 1.0  # every pixel valid here
    meta = read_metadata(prob)
    assert meta["model_kind"] == "detector" and meta["stretch"]["before"]["method"] == "uint8"

    with fiona.open(str(out)) as src:
        crs = osr.SpatialReference(src.crs.to_wkt())
        assert crs.IsSame(osr.SpatialReference(wkt(32633)))
        assert set(src.schema["properties"]) == {"id", "area_m2", "mean_prob", "max_prob"}
    source = ogr.Open(str(out))  # keep the data source alive while its layer is used
    assert "kdmsi_stretch" in source.GetLayer(0).GetMetadata()
    source = None
    assert files_in(tmp_path) == {"before.tif", "after.tif", "changes.gpkg", "prob.tif"}


def test_kd_model_runs_msi(tmp_path, pair, kd_model):
    before, after = pair
    result = detect_changes(
        before,
        after,
        kd_model,
        tmp_path / "kd.geojson",
        tile_size=128,
        overlap_px=32,
        scales=(1.0,),
        flip=False,
    )
    assert result.model_kind == "kd" and result.threshold == 0.5
    assert result.probability_path is None and result.vector_path.is_file()
    assert files_in(tmp_path) == {"before.tif", "after.tif", "kd.geojson"}


# ------------------------------------------------------------------------------ oracle runs


def test_oracle_polygon_matches_the_square(tmp_path, pair):
    before, after = pair
    progress: list[float] = []
    result, prob = run_oracle(
        before, after, tmp_path / "c.gpkg", progress=lambda f, m: progress.append(f)
    )
    assert result.polygon_count == 1 and result.tiles == result.tiles_computed == 12
    (feature,) = features(tmp_path / "c.gpkg")
    xs = [p[0] for p in feature.geometry["coordinates"][0]]
    ys = [p[1] for p in feature.geometry["coordinates"][0]]
    assert (min(xs), max(xs)) == (GT[0] + 200 * PIXEL, GT[0] + 280 * PIXEL)
    assert (min(ys), max(ys)) == (GT[3] - 160 * PIXEL, GT[3] - 100 * PIXEL)
    assert feature.properties["area_m2"] == pytest.approx(60 * 80 * PIXEL**2, rel=0.01)
    assert feature.properties["mean_prob"] > 0.99
    truth = np.zeros((HEIGHT, WIDTH), bool)
    truth[SQUARE] = True
    assert np.array_equal(prob >= 0.5, truth)
    assert progress[-1] == 1.0 and progress == sorted(progress)


def test_shifted_tile_grid_gives_the_same_result(tmp_path):
    pre, post = scene()
    pad = ((0, 0), (37, 0), (53, 0))
    shifted_gt = (GT[0] - 53 * PIXEL, PIXEL, 0.0, GT[3] + 37 * PIXEL, 0.0, -PIXEL)
    a = write_raster(tmp_path / "a.tif", pre)
    b = write_raster(tmp_path / "b.tif", post)
    a2 = write_raster(tmp_path / "a2.tif", np.pad(pre, pad, mode="reflect"), shifted_gt)
    b2 = write_raster(tmp_path / "b2.tif", np.pad(post, pad, mode="reflect"), shifted_gt)
    r1, p1 = run_oracle(a, b, tmp_path / "one.gpkg", blurred_oracle)
    r2, p2 = run_oracle(a2, b2, tmp_path / "two.gpkg", blurred_oracle, overlap_px=48)
    common = p2[37:, 53:]
    assert np.abs(common - p1).max() < 0.02
    assert np.mean((common >= 0.5) != (p1 >= 0.5)) < 1e-3
    assert r1.polygon_count == r2.polygon_count == 1
    area1 = features(tmp_path / "one.gpkg")[0].properties["area_m2"]
    area2 = features(tmp_path / "two.gpkg")[0].properties["area_m2"]
    assert area2 == pytest.approx(area1, rel=0.01)


@pytest.mark.parametrize("epsg", [4326, 3857])
def test_after_in_another_crs_gives_the_same_result(tmp_path, pair, epsg):
    before, after = pair
    warped = tmp_path / f"after_{epsg}.tif"
    gdal.Warp(str(warped), str(after), dstSRS=f"EPSG:{epsg}", resampleAlg="near", dstAlpha=True)
    _, p_same = run_oracle(before, after, tmp_path / "same.gpkg")
    result, p_other = run_oracle(before, warped, tmp_path / "other.gpkg")
    valid = p_other != PROB_NODATA
    assert valid.mean() > 0.97  # only a rim can fall outside the warped footprint
    a, b = p_same >= 0.5, (p_other >= 0.5) & valid
    assert (a & b).sum() / (a | b).sum() > 0.9
    (feature, *rest) = features(tmp_path / "other.gpkg")
    assert feature.properties["area_m2"] == pytest.approx(60 * 80 * PIXEL**2, rel=0.1)
    with fiona.open(str(tmp_path / "other.gpkg")) as src:
        assert osr.SpatialReference(src.crs.to_wkt()).IsSame(osr.SpatialReference(wkt(32633)))


def test_nodata_is_never_change(tmp_path):
    pre, post = scene()
    post[:, 200:260, 40:100] += 120  # a second changed square
    pre[:, :, 240:] = 0  # before nodata: right part, half of the first square
    post[:, 230:, :] = 0  # after nodata: bottom, half of the second square
    before = write_raster(tmp_path / "before.tif", pre, nodata=0)
    after = write_raster(tmp_path / "after.tif", post, nodata=0)
    result, prob = run_oracle(before, after, tmp_path / "c.gpkg")
    invalid = np.zeros((HEIGHT, WIDTH), bool)
    invalid[:, 240:] = True
    invalid[230:, :] = True
    assert np.array_equal(prob == PROB_NODATA, invalid)
    assert result.polygon_count == 2
    areas = sorted(f.properties["area_m2"] for f in features(tmp_path / "c.gpkg"))
    expected = sorted([60 * 40 * PIXEL**2, 30 * 60 * PIXEL**2])
    assert areas == pytest.approx(expected, rel=0.01)


def test_16bit_input_is_stretched_and_recorded(tmp_path):
    pre, post = scene()
    small = (slice(100, 130), slice(200, 240))  # 1 % of the pixels: percentiles barely move
    post = pre.copy()
    post[:, small[0], small[1]] += 120
    before = write_raster(tmp_path / "before.tif", pre.astype(np.uint16) * 16 + 100)
    after = write_raster(tmp_path / "after.tif", post.astype(np.uint16) * 16 + 100)
    result, prob = run_oracle(before, after, tmp_path / "c.gpkg")
    assert result.stretch["before"]["method"] == result.stretch["after"]["method"] == "percentile"
    assert read_metadata(tmp_path / "c.tif")["stretch"] == result.stretch
    truth = np.zeros((HEIGHT, WIDTH), bool)
    truth[small] = True
    assert result.polygon_count == 1
    assert np.array_equal(prob >= 0.5, truth)


# -------------------------------------------------------------------------------- tile grid


def test_tile_grid(tmp_path, pair, capsys):
    before, after = pair
    out = make_tile_grid(before, after, tmp_path / "grid.gpkg", tile_size=128)
    tiles = features(out)
    assert len(tiles) == 3 * 3  # 384 / 128 = 3 columns, 320 / 128 -> 3 rows (last one 64 px)
    assert [t.properties["tile_id"] for t in tiles] == list(range(1, 10))
    assert all(t.properties["changed"] is None for t in tiles)
    assert {(t.properties["row"], t.properties["col"]) for t in tiles} == {
        (r, c) for r in range(3) for c in range(3)
    }
    with fiona.open(str(out)) as src:
        assert src.schema["properties"]["changed"].startswith("int")
        assert osr.SpatialReference(src.crs.to_wkt()).IsSame(osr.SpatialReference(wkt(32633)))
    geoms = [shape(t.geometry) for t in tiles]
    assert sum(g.area for g in geoms) == pytest.approx(WIDTH * HEIGHT * PIXEL**2)
    assert unary_union(geoms).area == pytest.approx(WIDTH * HEIGHT * PIXEL**2)  # no overlap
    assert unary_union(geoms).bounds == pytest.approx(
        (GT[0], GT[3] - HEIGHT * PIXEL, GT[0] + WIDTH * PIXEL, GT[3])
    )
    argv = ["tile-grid", "--before", str(before), "--after", str(after), "--out", str(out)]
    assert main(argv) == 2  # exists
    assert main([*argv, "--overwrite", "--tile-size", "256"]) == 0
    assert len(features(out)) == 2 * 2


# -------------------------------------------------------------------------------- real data


@pytest.mark.real_data
def test_landsat_pair_end_to_end(tmp_path, real_data, detector_model):
    folder = real_data / "Landsat-Taizhou"
    before, after = folder / "A" / "taizhou.tif", folder / "B" / "taizhou.tif"
    out, prob = tmp_path / "taizhou.gpkg", tmp_path / "taizhou_prob.tif"
    argv = [
        "detect",
        "--before",
        str(before),
        "--after",
        str(after),
        "--model",
        str(detector_model),
    ]
    assert (
        main([*argv, "--out", str(out), "--probability", str(prob), "--bands", "4,3,2", *TILE]) == 0
    )
    src, ds = gdal.Open(str(before)), gdal.Open(str(prob))
    assert ds.GetGeoTransform() == pytest.approx(src.GetGeoTransform())
    assert ds.GetSpatialRef().IsSame(src.GetSpatialRef())
    values = ds.GetRasterBand(1).ReadAsArray()
    assert ((values >= 0) & (values <= 1)).mean() > 0.99
    assert read_metadata(prob)["bands"] == [4, 3, 2]
    with fiona.open(str(out)) as layer:
        assert osr.SpatialReference(layer.crs.to_wkt()).IsSame(src.GetSpatialRef())
        for feature in layer:
            assert feature.properties["area_m2"] > 0
            assert 0.5 <= feature.properties["max_prob"] <= 1.0


def _georeferenced_copy(png: Path, out: Path) -> Path:
    """The PNG as a GeoTIFF on a made-up 0.5 m grid (LEVIR tiles carry no georeferencing)."""
    bounds = [500000.0, 4000512.0, 500512.0, 4000000.0]  # ulx, uly, lrx, lry: 1024 px of 0.5 m
    gdal.Translate(str(out), str(png), outputSRS="EPSG:32651", outputBounds=bounds)
    return out


@pytest.mark.real_data
def test_levir_tiles_stitch_consistently(tmp_path, real_data, detector_model, capsys):
    folder = real_data / "LEVIR-CD-1024"
    png_a, png_b = folder / "A" / "test_102.png", folder / "B" / "test_102.png"
    argv = ["detect", "--before", str(png_a), "--after", str(png_b), "--model", str(detector_model)]
    assert main([*argv, "--out", str(tmp_path / "x.gpkg")]) == 2  # no georeferencing
    assert "has no CRS" in capsys.readouterr().err

    a = _georeferenced_copy(png_a, tmp_path / "a.tif")
    b = _georeferenced_copy(png_b, tmp_path / "b.tif")
    _, stitched = run_oracle(a, b, tmp_path / "pointwise.gpkg", tile_size=256, overlap_px=64)
    # a pointwise model must come out of the tile loop exactly as on the whole image at once
    pre, post = (NORM(gdal.Open(str(p)).ReadAsArray())[None] for p in (a, b))
    whole = oracle(pre, post)[0, 0].numpy()
    assert np.abs(stitched - whole).max() < 1e-5
    # a model with context: two different tile grids agree away from nothing but tile seams
    _, p1 = run_oracle(a, b, tmp_path / "one.gpkg", blurred_oracle, tile_size=256, overlap_px=64)
    _, p2 = run_oracle(a, b, tmp_path / "two.gpkg", blurred_oracle, tile_size=320, overlap_px=96)
    assert np.abs(p1 - p2).max() < 0.05
    assert np.mean((p1 >= 0.5) != (p2 >= 0.5)) < 1e-3
