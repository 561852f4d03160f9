"""Tests for kdmsi.geo.vector: polygonizing change, true areas, statistics, vector output."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from osgeo import gdal, ogr, osr

from kdmsi.geo.polygons import polygonize_changes
from kdmsi.geo.raster import PROB_NODATA
from kdmsi.geo.vector import ChangePolygon, VectorOutputError, vector_driver, write_vector
from kdmsi.progress import Cancelled

UTM_GT = (500000.0, 10.0, 0.0, 5000000.0, 0.0, -10.0)  # EPSG:32633, near the central meridian


def wkt(epsg: int) -> str:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    return srs.ExportToWkt()


def write_prob(path: Path, prob: np.ndarray, gt, epsg: int, nodata: Optional[float] = None):
    ds = gdal.GetDriverByName("GTiff").Create(
        str(path), prob.shape[1], prob.shape[0], 1, gdal.GDT_Float32
    )
    ds.SetGeoTransform(gt)
    ds.SetProjection(wkt(epsg))
    ds.GetRasterBand(1).WriteArray(prob)
    if nodata is not None:
        ds.GetRasterBand(1).SetNoDataValue(nodata)
    ds = None
    return path


def square_with_hole() -> np.ndarray:
    """100 x 100 probabilities: a 20 x 20 px square (0.6..0.99) with a 4 x 4 px hole."""
    prob = np.full((100, 100), 0.1, np.float32)
    y, x = np.mgrid[0:20, 0:20]
    prob[30:50, 40:60] = 0.6 + 0.39 * (x + y) / 38.0
    prob[38:42, 48:52] = 0.2
    return prob


def ellipsoid_box_area(lon0, lat0, lon1, lat1, a=6378137.0, f=1 / 298.257223563) -> float:
    """Exact area of a lon/lat box on the ellipsoid (authalic formula)."""
    e2 = f * (2 - f)
    e = math.sqrt(e2)

    def q(lat):
        s = math.sin(math.radians(lat))
        return s / (1 - e2 * s * s) - (1 / (2 * e)) * math.log((1 - e * s) / (1 + e * s))

    b2 = (a * (1 - f)) ** 2
    return b2 / 2 * math.radians(lon1 - lon0) * (q(lat1) - q(lat0))


def test_square_with_hole_in_utm(tmp_path):
    prob = square_with_hole()
    path = write_prob(tmp_path / "p.tif", prob, UTM_GT, 32633)
    (poly,) = polygonize_changes(path, threshold=0.5)
    assert isinstance(poly, ChangePolygon) and poly.id == 1
    assert poly.area_m2 == pytest.approx((400 - 16) * 100.0, rel=0.01)
    geom = poly.ogr_geometry()
    assert geom.GetGeometryName() == "POLYGON" and geom.GetGeometryCount() == 2  # shell + hole
    xmin, xmax, ymin, ymax = geom.GetEnvelope()
    assert (xmin, xmax, ymin, ymax) == (500400.0, 500600.0, 4999500.0, 4999700.0)
    inside = prob[30:50, 40:60][prob[30:50, 40:60] >= 0.5]
    assert poly.mean_prob == pytest.approx(float(inside.mean()), abs=1e-6)
    assert poly.max_prob == pytest.approx(float(inside.max()), abs=1e-6)


def test_square_in_geographic_crs_has_true_area(tmp_path):
    step = 0.0005  # degrees; 20 px = 0.01 degree ~ 790 m x 1110 m at 45 N
    gt = (15.0, step, 0.0, 45.05, 0.0, -step)
    path = write_prob(tmp_path / "p.tif", square_with_hole(), gt, 4326)
    (poly,) = polygonize_changes(path, threshold=0.5)
    lon0, lat1 = 15.0 + 40 * step, 45.05 - 30 * step
    outer = ellipsoid_box_area(lon0, lat1 - 20 * step, lon0 + 20 * step, lat1)
    hole = ellipsoid_box_area(lon0 + 8 * step, lat1 - 12 * step, lon0 + 12 * step, lat1 - 8 * step)
    assert poly.area_m2 == pytest.approx(outer - hole, rel=0.01)
    assert poly.area_m2 == pytest.approx(outer - hole, rel=1e-4)  # in fact much better


def test_min_area_ids_and_invalid_pixels(tmp_path):
    prob = np.zeros((60, 60), np.float32)
    prob[5:25, 5:25] = 0.9  # 40 000 m2
    prob[40:43, 40:43] = 0.8  # 900 m2
    prob[50:55, 5:10] = 0.95  # nodata below: never change
    valid = np.ones_like(prob, bool)
    valid[50:55, 5:10] = False
    polys = polygonize_changes(prob, 0.5, valid, UTM_GT, wkt(32633))
    assert [p.id for p in polys] == [1, 2]
    assert sorted(round(p.area_m2, -2) for p in polys) == [900.0, 40000.0]
    big = polygonize_changes(prob, 0.5, valid, UTM_GT, wkt(32633), min_area_m2=1000)
    assert [(p.id, round(p.area_m2, -2), p.max_prob) for p in big] == [
        (1, 40000.0, pytest.approx(0.9))
    ]
    # the same through a file whose nodata marks the invalid pixels
    prob[~valid] = PROB_NODATA
    path = write_prob(tmp_path / "p.tif", prob, UTM_GT, 32633, nodata=PROB_NODATA)
    from_file = polygonize_changes(path, 0.5, strip_rows=7)
    assert [(p.area_m2, p.mean_prob, p.max_prob) for p in from_file] == [
        (p.area_m2, p.mean_prob, p.max_prob) for p in polys
    ]


def test_nan_never_changes_and_nothing_found():
    prob = np.full((10, 10), np.nan, np.float32)
    assert polygonize_changes(prob, 0.5, None, UTM_GT, wkt(32633)) == []


def test_connectedness():
    prob = np.zeros((10, 10), np.float32)
    prob[2, 2] = prob[3, 3] = 1.0
    assert len(polygonize_changes(prob, 0.5, None, UTM_GT, wkt(32633))) == 1
    assert len(polygonize_changes(prob, 0.5, None, UTM_GT, wkt(32633), connectedness=4)) == 2


def test_simplify_keeps_statistics():
    y, x = np.mgrid[0:80, 0:80]
    prob = ((x - 40) ** 2 + (y - 40) ** 2 < 30**2).astype(np.float32)  # pixelated disc
    exact = polygonize_changes(prob, 0.5, None, UTM_GT, wkt(32633))[0]
    simple = polygonize_changes(prob, 0.5, None, UTM_GT, wkt(32633), simplify_m=15.0)[0]

    def count(polygon: ChangePolygon) -> int:
        geom = polygon.ogr_geometry()  # keep the parent alive while using the ring
        return geom.GetGeometryRef(0).GetPointCount()

    assert count(simple) < count(exact) / 2
    assert simple.area_m2 == pytest.approx(exact.area_m2, rel=0.03)
    assert simple.mean_prob == exact.mean_prob == 1.0


def test_cancel(tmp_path):
    path = write_prob(tmp_path / "p.tif", square_with_hole(), UTM_GT, 32633)
    with pytest.raises(Cancelled):
        polygonize_changes(path, 0.5, cancel=lambda: True)
    calls = []
    polygonize_changes(path, 0.5, progress=lambda f, m: calls.append(f))
    assert calls and calls[-1] == 1.0 and all(0 <= f <= 1 for f in calls)


def test_array_input_needs_georeferencing():
    with pytest.raises(ValueError, match="geotransform"):
        polygonize_changes(np.zeros((4, 4), np.float32), 0.5)
    with pytest.raises(ValueError, match="does not match"):
        polygonize_changes(
            np.zeros((4, 4), np.float32), 0.5, np.ones((3, 4), bool), UTM_GT, wkt(32633)
        )


@pytest.fixture
def polygons():
    return polygonize_changes(square_with_hole(), 0.5, None, UTM_GT, wkt(32633))


def test_write_geopackage_keeps_crs_and_attributes(tmp_path, polygons):
    import fiona

    out = tmp_path / "changes.gpkg"
    write_vector(polygons, out, wkt(32633))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["changes.gpkg"]
    assert fiona.listlayers(str(out)) == ["changes"]
    with fiona.open(str(out)) as src:
        assert src.crs.to_epsg() == 32633
        assert src.schema["geometry"] == "Polygon"
        assert dict(src.schema["properties"]) == {
            "id": "int",
            "area_m2": "float",
            "mean_prob": "float",
            "max_prob": "float",
        }
        (feature,) = list(src)
    assert dict(feature.properties) == polygons[0].properties()
    assert len(feature.geometry.coordinates) == 2  # the hole survived
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_vector(polygons, out, wkt(32633))
    write_vector(polygons[:0], out, wkt(32633), overwrite=True)
    with fiona.open(str(out)) as src:
        assert len(src) == 0


@pytest.mark.parametrize("ext", [".shp", ".geojson", ".fgb"])
def test_write_other_formats(tmp_path, polygons, ext):
    out = tmp_path / f"changes{ext}"
    write_vector(polygons, out, wkt(32633))
    ds = ogr.Open(str(out))
    layer = ds.GetLayer(0)
    assert layer.GetFeatureCount() == 1
    assert layer.GetSpatialRef().GetAuthorityCode(None) == "32633"
    feature = layer.GetNextFeature()
    assert feature.GetField("id") == 1
    assert feature.GetField("area_m2") == pytest.approx(polygons[0].area_m2)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_write_multipolygon(tmp_path, polygons):
    import fiona

    multi = ogr.ForceToMultiPolygon(polygons[0].ogr_geometry())
    feature = ChangePolygon(2, 1.0, 0.5, 0.6, bytes(multi.ExportToIsoWkb()))
    write_vector([polygons[0], feature], tmp_path / "m.gpkg", wkt(32633))
    with fiona.open(str(tmp_path / "m.gpkg")) as src:
        assert src.schema["geometry"] == "MultiPolygon" and len(src) == 2


def test_unknown_extension(tmp_path, polygons):
    with pytest.raises(VectorOutputError, match=r"\.xyz.*\.gpkg"):
        write_vector(polygons, tmp_path / "out.xyz", wkt(32633))
    assert vector_driver("a.GPKG") == "GPKG"


def test_failed_write_leaves_nothing(tmp_path, monkeypatch, polygons):
    import kdmsi.geo.vector as vector

    real = vector._ogr_features

    def broken(*args, **kwargs):
        yield from real(*args, **kwargs)
        raise RuntimeError("disk full")

    monkeypatch.setattr(vector, "_ogr_features", broken)
    with pytest.raises(OSError, match=r"out.gpkg failed \(disk full\): free some disk space"):
        write_vector(polygons, tmp_path / "out.gpkg", wkt(32633))
    assert list(tmp_path.iterdir()) == []
