"""Tests for kdmsi.geo.raster: opening, pair alignment, validity masks, stretch, probability
output."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from osgeo import gdal, osr

from kdmsi.geo.align import align_pair
from kdmsi.geo.probability_raster import (
    SCRATCH_BLOCK_ROWS,
    create_probability_raster,
    finalize_probability_raster,
    overview_levels,
    read_metadata,
)
from kdmsi.geo.raster import PROB_NODATA, RasterInputError, RasterNotFoundError, open_raster
from kdmsi.geo.stretch import BandStretch, compute_stretch, pair_stretches, sample_shape

UTM_ORIGIN = (500000.0, 5000000.0)  # EPSG:32633, 15 E 45.15 N
PIXEL = 10.0


def wkt(epsg: int) -> str:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    return srs.ExportToWkt()


def make_raster(
    path: Path,
    data: np.ndarray,
    epsg: Optional[int] = 32633,
    origin: tuple[float, float] = UTM_ORIGIN,
    pixel: float = PIXEL,
    nodata: Optional[float] = None,
    alpha: Optional[np.ndarray] = None,
) -> Path:
    """GeoTIFF from ``data`` [C, H, W] (dtype kept), optional nodata and alpha band."""
    dtype = gdal.GetDataTypeByName(
        {"uint8": "Byte", "uint16": "UInt16", "float32": "Float32"}[str(data.dtype)]
    )
    c, h, w = data.shape
    ds = gdal.GetDriverByName("GTiff").Create(str(path), w, h, c + (alpha is not None), dtype)
    ds.SetGeoTransform((origin[0], pixel, 0.0, origin[1], 0.0, -pixel))
    if epsg is not None:
        ds.SetProjection(wkt(epsg))
    for i in range(c):
        band = ds.GetRasterBand(i + 1)
        band.WriteArray(data[i])
        if nodata is not None:
            band.SetNoDataValue(nodata)
    if alpha is not None:
        band = ds.GetRasterBand(c + 1)
        band.WriteArray(alpha)
        band.SetColorInterpretation(gdal.GCI_AlphaBand)
    ds = None
    return path


def smooth_image(h: int = 60, w: int = 80, c: int = 3) -> np.ndarray:
    """uint8 [c, h, w] with gentle gradients (bilinear resampling barely changes it)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    bands = [40 + 1.5 * x + 0.8 * y, 200 - 1.2 * y + 0.5 * x, 100 + 60 * np.sin(x / 15 + y / 20)]
    return np.stack(bands[:c]).round().clip(0, 255).astype(np.uint8)


@pytest.fixture
def before(tmp_path) -> Path:
    return make_raster(tmp_path / "before.tif", smooth_image())


def test_identical_pair_reads_back_exactly(before):
    with align_pair(before, before) as pair:
        assert (pair.width, pair.height) == (80, 60)
        assert pair.geotransform == pytest.approx((500000, 10, 0, 5000000, 0, -10))
        assert pair.offset == (0, 0) and pair.bands == (1, 2, 3)
        pre, post, valid = pair.read_window(5, 7, 30, 20)
        assert pre.dtype == np.uint8 and pre.shape == (3, 20, 30)
        np.testing.assert_array_equal(pre, smooth_image()[:, 7:27, 5:35])
        np.testing.assert_array_equal(post, pre)
        assert valid.dtype == bool and valid.all()
        with pytest.raises(ValueError, match="outside"):
            pair.read_window(70, 0, 20, 5)


@pytest.mark.parametrize("epsg", [4326, 3857])
def test_after_in_another_crs_lands_on_before_grid(tmp_path, before, epsg):
    after = tmp_path / f"after_{epsg}.tif"
    gdal.Warp(str(after), str(before), dstSRS=f"EPSG:{epsg}", resampleAlg="bilinear", dstAlpha=True)
    with align_pair(before, after) as pair:
        assert (pair.width, pair.height) == (80, 60)  # the after footprint covers before
        assert pair.crs_wkt == gdal.Open(str(before)).GetProjection()
        pre, post, valid = pair.read_window(0, 0, 80, 60)
        inner = np.zeros_like(valid)
        inner[3:-3, 3:-3] = True
        assert valid[inner].all()
        diff = np.abs(pre.astype(int) - post.astype(int))[:, inner]
        assert diff.max() <= 3 and diff.mean() < 1.0


def test_intersection_only(tmp_path, before):
    img = smooth_image()
    # after = before's pixels [10:50, 20:70] (rows, cols), as EPSG:3857
    part = make_raster(
        tmp_path / "part.tif",
        img[:, 10:50, 20:70],
        origin=(UTM_ORIGIN[0] + 20 * PIXEL, UTM_ORIGIN[1] - 10 * PIXEL),
    )
    after = tmp_path / "after.tif"
    gdal.Warp(str(after), str(part), dstSRS="EPSG:3857", resampleAlg="bilinear", dstAlpha=True)
    with align_pair(before, after) as pair:
        # the transformed bounding box may add a pixel of margin on each side
        assert 50 <= pair.width <= 52 and 40 <= pair.height <= 42
        col, row = pair.offset
        assert 19 <= col <= 20 and 9 <= row <= 10
        assert pair.geotransform[0] == UTM_ORIGIN[0] + col * PIXEL
        assert pair.geotransform[3] == UTM_ORIGIN[1] - row * PIXEL
        pre, post, valid = pair.read_window(0, 0, pair.width, pair.height)
        np.testing.assert_array_equal(pre, img[:, row : row + pair.height, col : col + pair.width])
        assert valid.mean() > 0.85
        core = (slice(None), slice(12 - row, 38 - row), slice(23 - col, 67 - col))
        assert valid[core[1:]].all()
        assert np.abs(pre[core].astype(int) - post[core].astype(int)).max() <= 3


def test_outside_rotated_footprint_is_invalid(tmp_path, before):
    # after covers the same area in EPSG:4326 without alpha but with nodata 0 outside
    after = tmp_path / "after.tif"
    gdal.Warp(str(after), str(before), dstSRS="EPSG:4326", dstNodata=0, resampleAlg="near")
    small = make_raster(
        tmp_path / "small.tif",
        smooth_image(20, 20),
        origin=(UTM_ORIGIN[0] + 300, UTM_ORIGIN[1] - 200),
    )
    with align_pair(small, after) as pair:
        assert (pair.width, pair.height) == (20, 20)
        assert pair.read_window(0, 0, 20, 20)[2].all()


def test_outside_tilted_footprint_is_invalid(tmp_path, before):
    """An after raster, all valid, whose grid is rotated 30 degrees against the before grid."""
    tilted = osr.SpatialReference()
    tilted.ImportFromProj4(
        "+proj=omerc +lat_0=45 +lonc=15 +alpha=30 +gamma=0 +k=1 +x_0=0 +y_0=0 +ellps=WGS84"
    )
    tilted.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    utm = osr.SpatialReference(wkt(32633))
    utm.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    cx, cy = osr.CoordinateTransformation(utm, tilted).TransformPoint(500400.0, 4999700.0)[:2]
    after = make_raster(
        tmp_path / "tilted.tif", smooth_image(20, 20), epsg=None, origin=(cx - 100, cy + 100)
    )
    ds = gdal.Open(str(after), gdal.GA_Update)
    ds.SetProjection(tilted.ExportToWkt())
    ds = None
    with align_pair(before, after) as pair:
        # the rotated 200 m square's bounding box: 200 * (cos 30 + sin 30) = 273 m
        assert 27 <= pair.width <= 29 and 27 <= pair.height <= 29
        valid = pair.read_window(0, 0, pair.width, pair.height)[2]
    assert valid[pair.height // 2, pair.width // 2]
    assert not valid[0, 0] and not valid[-1, -1] and not valid[0, -1] and not valid[-1, 0]
    # valid area ~ the square's 200 m x 200 m = 400 pixels
    assert 360 <= valid.sum() <= 440


def test_valid_mask_from_nodata_and_alpha(tmp_path):
    img = smooth_image()
    img[1, 5:10, 5:10] = 0  # nodata in one band only
    before = make_raster(tmp_path / "b.tif", img, nodata=0)
    alpha = np.full((60, 80), 255, np.uint8)
    alpha[40:50, 60:70] = 0
    after = make_raster(tmp_path / "a.tif", smooth_image(), alpha=alpha)
    with align_pair(before, after) as pair:
        assert pair.bands == (1, 2, 3)  # the alpha band is not a data band
        assert pair.before_nodata == [0.0, 0.0, 0.0] and pair.after_nodata == [None] * 3
        _, _, valid = pair.read_window(0, 0, 80, 60)
    expected = np.ones((60, 80), bool)
    expected[5:10, 5:10] = False
    expected[40:50, 60:70] = False
    np.testing.assert_array_equal(valid, expected)


def test_after_nodata_survives_the_warp(tmp_path, before):
    img = smooth_image()
    img[2, 20:30, 30:40] = 0
    after = make_raster(tmp_path / "a.tif", img, nodata=0)
    with align_pair(before, after) as pair:
        _, _, valid = pair.read_window(0, 0, 80, 60)
    assert not valid[20:30, 30:40].any()
    assert valid.sum() == 80 * 60 - 100


def test_band_selection(tmp_path, before):
    with align_pair(before, before, bands=[3, 1]) as pair:
        pre, post, _ = pair.read_window(0, 0, 80, 60)
    np.testing.assert_array_equal(pre, smooth_image()[[2, 0]])
    np.testing.assert_array_equal(post, pre)


def test_single_band_rasters_use_all_bands(tmp_path):
    one = make_raster(tmp_path / "one.tif", smooth_image(c=1))
    alpha = np.full((60, 80), 255, np.uint8)
    alpha[:, :10] = 0
    gray_alpha = make_raster(tmp_path / "ga.tif", smooth_image(c=1), alpha=alpha)
    with align_pair(one, gray_alpha) as pair:
        assert pair.bands == (1,)  # the alpha band is skipped by default
        pre, _, valid = pair.read_window(0, 0, 20, 4)
        assert pre.shape == (1, 4, 20) and valid[:, 10:].all() and not valid[:, :10].any()


def test_error_no_overlap(tmp_path, before):
    far = make_raster(
        tmp_path / "far.tif", smooth_image(), epsg=4326, origin=(-70.0, -30.0), pixel=0.001
    )
    with pytest.raises(RasterInputError, match="do not overlap") as info:
        align_pair(before, far)
    msg = str(info.value)
    assert "EPSG:32633" in msg and "EPSG:4326" in msg and "far.tif" in msg


def test_error_no_crs(tmp_path, before):
    bare = make_raster(tmp_path / "after.tif", smooth_image(), epsg=None)
    with pytest.raises(RasterInputError, match=r"after\.tif has no CRS: assign one with gdal_edit"):
        align_pair(before, bare)
    assert open_raster(bare, require_crs=False).RasterCount == 3


def test_error_not_a_raster(tmp_path, before):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(RasterInputError, match="not a raster"):
        align_pair(before, text)


def test_error_missing_file(tmp_path, before):
    with pytest.raises(RasterNotFoundError, match="does not exist") as info:
        align_pair(tmp_path / "missing.tif", before)
    assert isinstance(info.value, FileNotFoundError)


def test_error_bad_band_index(tmp_path, before):
    with pytest.raises(RasterInputError, match="band 4 does not exist .* which has 3 bands"):
        align_pair(before, before, bands=[1, 4])
    with pytest.raises(RasterInputError, match="band 0 does not exist"):
        align_pair(before, before, bands=[0])


def test_error_different_band_counts(tmp_path, before):
    one = make_raster(tmp_path / "one.tif", smooth_image(c=1))
    with pytest.raises(RasterInputError, match="same bands"):
        align_pair(before, one)


def test_stretch_8bit_is_identity(before):
    stretch = compute_stretch(open_raster(before), [1, 2, 3])
    assert stretch == BandStretch.identity(3)
    arr = smooth_image()
    out = stretch.apply(arr)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, arr.astype(np.float32))


def test_stretch_16bit_percentiles(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(1000, 11001, size=(2, 300, 400)).astype(np.uint16)
    data[1] //= 2
    data[:, :100, :] = 0  # nodata, left out of the statistics
    path = make_raster(tmp_path / "u16.tif", data, nodata=0)
    stretch = compute_stretch(open_raster(path), max_samples=20_000)
    assert stretch.method == "percentile" and stretch.percentiles == (2.0, 98.0)
    assert stretch.low[0] == pytest.approx(1200, rel=0.05)
    assert stretch.high[0] == pytest.approx(10800, rel=0.02)
    assert stretch.low[1] == pytest.approx(600, rel=0.05)
    out = stretch.apply(data[:, 100:, :])
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 255.0
    assert 0.015 < (out[0] == 0).mean() < 0.03
    assert BandStretch.from_dict(stretch.to_dict()) == stretch
    with pytest.raises(ValueError, match=r"expected \[2, h, w\]"):
        stretch.apply(data[:1])


def test_float_stretch_handles_nan_and_constant_band():
    stretch = BandStretch((0.0, 5.0), (1.0, 6.0), "percentile", (2.0, 98.0))
    arr = np.array([[[np.nan, 0.5]], [[5.0, 7.0]]], dtype=np.float32)
    np.testing.assert_allclose(stretch.apply(arr), [[[0.0, 127.5]], [[0.0, 255.0]]])


def test_sample_shape_is_bounded():
    assert sample_shape(100, 50, 10**6) == (100, 50)
    w, h = sample_shape(200_000, 150_000, 10**6)
    assert w * h <= 10**6 * 1.01 and abs(w / h - 4 / 3) < 0.01


def test_pair_stretches_16bit(tmp_path):
    data = (smooth_image().astype(np.uint16) * 40 + 500).astype(np.uint16)
    b = make_raster(tmp_path / "b.tif", data)
    a = tmp_path / "a.tif"
    gdal.Warp(str(a), str(b), dstSRS="EPSG:3857", dstAlpha=True)
    with align_pair(b, a) as pair:
        s_before, s_after = pair_stretches(pair, max_samples=2000)
    np.testing.assert_allclose(s_after.low, s_before.low, rtol=0.05)
    np.testing.assert_allclose(s_after.high, s_before.high, rtol=0.05)


def test_scratch_probability_raster_holds_short_block_rows(tmp_path):
    # the writer buffers one block row of the raster's width: short blocks keep that small
    path = tmp_path / "scratch.tif"
    width, height = 700, 150
    gt = (500000.0, 10.0, 0.0, 5000000.0, 0.0, -10.0)
    truth = np.random.default_rng(2).random((height, width)).astype(np.float32)
    with create_probability_raster(path, width, height, gt, wkt(32633), scratch=True) as writer:
        assert writer.block_height == SCRATCH_BLOCK_ROWS == 64
        y = 0
        for n in (100, 13, 37):
            writer.write_rows(y, truth[y : y + n])
            y += n
    ds = gdal.Open(str(path))  # kept: a band outlives no dataset
    band = ds.GetRasterBand(1)
    assert band.GetBlockSize() == [256, SCRATCH_BLOCK_ROWS]
    np.testing.assert_array_equal(band.ReadAsArray(), truth)


def test_probability_raster_roundtrip(tmp_path):
    path = tmp_path / "prob.tif"
    width, height = 600, 300
    gt = (500000.0, 10.0, 0.0, 5000000.0, 0.0, -10.0)
    meta = {"model": "kdmsi-resnet50", "tile_size": 256, "stretch": {"low": [1, 2]}}
    truth = np.random.default_rng(1).random((height, width)).astype(np.float32)
    truth[5, 5] = np.nan
    valid = np.ones((height, width), bool)
    valid[100:110, 200:210] = False
    with create_probability_raster(path, width, height, gt, wkt(32633), meta) as writer:
        y = 0
        for n in (7, 250, 1, 42):  # odd strip heights, not aligned to blocks
            writer.write_rows(y, truth[y : y + n], valid[y : y + n])
            y += n
        with pytest.raises(ValueError, match="in order"):
            writer.write_rows(0, truth[:1])
    finalize_probability_raster(path)
    ds = gdal.Open(str(path))
    band = ds.GetRasterBand(1)
    assert band.DataType == gdal.GDT_Float32 and band.GetNoDataValue() == PROB_NODATA
    assert band.GetBlockSize() == [256, 256]
    assert ds.GetMetadata("IMAGE_STRUCTURE")["COMPRESSION"] == "DEFLATE"
    assert band.GetOverviewCount() == len(overview_levels(width, height)) == 2
    assert osr.SpatialReference(ds.GetProjection()).GetAuthorityCode(None) == "32633"
    got = band.ReadAsArray()
    expected = np.where(np.isnan(truth) | ~valid, PROB_NODATA, truth)
    expected[300:] = PROB_NODATA
    np.testing.assert_array_equal(got, expected)
    stored = read_metadata(path)
    assert {k: stored[k] for k in meta} == meta


def test_overview_levels():
    assert overview_levels(256, 100) == []
    assert overview_levels(300, 100) == [2]
    assert overview_levels(5000, 4000) == [2, 4, 8, 16, 32]
