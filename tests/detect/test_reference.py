"""Metrics against a reference mask raster or polygon layer (`kdmsi.detect.reference`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from osgeo import gdal, ogr, osr

from kdmsi.data.pairs import Normalisation
from kdmsi.data.synthetic import make_scene, write_scene
from kdmsi.detect.reference import (
    ReferenceError,
    compare_probability,
    evaluate_model,
    open_reference,
)
from kdmsi.geo.align import align_pair
from kdmsi.geo.raster import PROB_NODATA, RasterInputError
from kdmsi.metrics.change import ConfusionCounts
from kdmsi.models import SiameseDeepLabV3Plus
from kdmsi.models.checkpoint import save_detector


def _raster(path: Path, array: np.ndarray, gt, epsg: int = 32633, nodata=None, dtype=None):
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    gdal_type = dtype or (gdal.GDT_Float32 if array.dtype == np.float32 else gdal.GDT_Byte)
    ds = gdal.GetDriverByName("GTiff").Create(
        str(path), array.shape[1], array.shape[0], 1, gdal_type
    )
    ds.SetGeoTransform(gt)
    ds.SetProjection(srs.ExportToWkt())
    band = ds.GetRasterBand(1)
    if nodata is not None:
        band.SetNoDataValue(nodata)
    band.WriteArray(array)
    ds = None
    return path


GT = (500000.0, 1.0, 0.0, 5500000.0, 0.0, -1.0)


@pytest.fixture()
def probability(tmp_path) -> Path:
    prob = np.zeros((40, 60), np.float32)
    prob[10:20, 10:30] = 0.9  # predicted change: 200 px
    prob[0:2, :] = PROB_NODATA  # outside the images: 120 px left out
    return _raster(tmp_path / "prob.tif", prob, GT, nodata=PROB_NODATA)


def _expected(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> dict:
    return ConfusionCounts().update(pred, truth, valid).metrics()


def test_mask_raster_reference_counts_pixels_exactly(tmp_path, probability):
    truth = np.zeros((40, 60), np.uint8)
    truth[15:25, 10:30] = 255  # half of the prediction is right
    reference = _raster(tmp_path / "truth.tif", truth, GT)
    result = compare_probability(probability, reference, 0.5)
    valid = np.ones((40, 60), bool)
    valid[0:2] = False
    pred = np.zeros((40, 60), bool)
    pred[10:20, 10:30] = True
    assert result.metrics == pytest.approx(_expected(pred, truth > 0, valid))
    assert (result.counts.tp, result.counts.fp, result.counts.fn) == (100, 100, 100)
    assert result.pixels == 40 * 60 - 120 and result.reference_kind == "raster"
    assert "cIoU" in result.table() and "33.33" in result.table()


def test_mask_nodata_and_area_outside_the_mask_are_left_out(tmp_path, probability):
    # the mask covers only the left half, in another CRS grid spacing (2 m), with nodata 9
    truth = np.zeros((20, 15), np.uint8)
    truth[5:10, 5:15] = 1
    truth[0:3, :] = 9
    reference = _raster(
        tmp_path / "half.tif", truth, (500000.0, 2.0, 0, 5500000.0, 0, -2.0), nodata=9
    )
    result = compare_probability(probability, reference, 0.5)
    # columns 0..29 are covered; rows 0..5 are nodata in the mask (and rows 0..1 in prob)
    assert result.pixels == (40 - 6) * 30
    # mask rows 5..9, cols 5..14 at 2 m = grid rows 10..19, cols 10..29: the prediction
    assert (result.counts.tp, result.counts.fp, result.counts.fn) == (200, 0, 0)


def test_polygon_reference_in_another_crs(tmp_path, probability):
    # the same 20 x 10 m change as a polygon in WGS 84
    src = osr.SpatialReference()
    src.ImportFromEPSG(32633)
    dst = osr.SpatialReference()
    dst.ImportFromEPSG(4326)
    dst.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    src.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    ring = ogr.Geometry(ogr.wkbLinearRing)
    for x, y in [(10, 10), (30, 10), (30, 20), (10, 20), (10, 10)]:
        ring.AddPoint_2D(GT[0] + x, GT[3] - y)
    poly = ogr.Geometry(ogr.wkbPolygon)
    poly.AddGeometry(ring)
    poly.Transform(osr.CoordinateTransformation(src, dst))
    path = tmp_path / "truth.gpkg"
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = ds.CreateLayer("truth", dst, ogr.wkbPolygon)
    feature = ogr.Feature(layer.GetLayerDefn())
    feature.SetGeometry(poly)
    layer.CreateFeature(feature)
    ds = None
    result = compare_probability(probability, path, 0.5)
    assert result.reference_kind == "vector" and result.pixels == 40 * 60 - 120
    assert result.metrics["cIoU"] > 0.95  # reprojection moves edges by a fraction of a pixel


def test_bad_references_are_named(tmp_path, probability):
    with pytest.raises(ReferenceError, match="does not exist"):
        open_reference(tmp_path / "nope.tif")
    (tmp_path / "junk.tif").write_bytes(b"not a raster")
    with pytest.raises(ReferenceError, match="junk.tif"):
        open_reference(tmp_path / "junk.tif")
    far = _raster(tmp_path / "far.tif", np.ones((5, 5), np.uint8), (0.0, 1.0, 0, 10.0, 0, -1.0))
    with pytest.raises(ReferenceError, match="no valid pixel"):
        compare_probability(probability, far, 0.5)


def test_align_pair_bounds_cut_the_grid(tmp_path):
    paths = write_scene(make_scene(64, 96, seed=3, pixel_size_m=1.0), tmp_path)
    with align_pair(paths["before"], paths["after"]) as full:
        x0, y0 = full.geotransform[0], full.geotransform[3]
    bounds = (x0 + 10.4, y0 - 50, x0 + 40, y0 - 20)  # snapped outwards to whole pixels
    with align_pair(paths["before"], paths["after"], bounds=bounds) as cut:
        assert (cut.width, cut.height) == (30, 30)
        assert cut.geotransform[0] == x0 + 10 and cut.geotransform[3] == y0 - 20
    with pytest.raises(RasterInputError, match="does not meet the overlap"):
        align_pair(paths["before"], paths["after"], bounds=(0, 0, 1, 1))


def test_evaluate_model_runs_detection_in_a_scratch_folder(tmp_path):
    paths = write_scene(make_scene(96, 96, seed=4, pixel_size_m=1.0), tmp_path / "scene")
    torch.manual_seed(0)
    model = save_detector(
        tmp_path / "m.kdmsi",
        SiameseDeepLabV3Plus("resnet18", in_channels=3),
        [1, 2, 3],
        Normalisation.default(3),
        64,
    )
    messages = []
    result = evaluate_model(
        paths["before"],
        paths["after"],
        model,
        paths["truth"],
        threshold=0.0,  # everything is change: recall 1, IoU = change share
        tile_size=64,
        overlap_px=16,
        device="cpu",
        progress=lambda f, m: messages.append((f, m)),
    )
    truth = gdal.Open(str(paths["truth"])).ReadAsArray() > 0
    assert result.metrics["cIoU"] == pytest.approx(truth.mean(), abs=1e-6)
    assert result.metrics["FN"] == 0 and result.pixels == 96 * 96
    assert result.detect["width"] == 96 and messages[-1][0] == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.kdmsi", "scene"]


def test_cli_evaluate_detection_prints_json_and_names_bad_references(tmp_path, capsys):
    import json

    from kdmsi.cli import main

    paths = write_scene(make_scene(64, 64, seed=6, pixel_size_m=1.0), tmp_path / "scene")
    torch.manual_seed(0)
    model = save_detector(
        tmp_path / "m.kdmsi",
        SiameseDeepLabV3Plus("resnet18", in_channels=3),
        [1, 2, 3],
        Normalisation.default(3),
        64,
    )
    common = ["--before", str(paths["before"]), "--after", str(paths["after"]), "--model"]
    common += [str(model), "--device", "cpu", "--overlap", "16"]
    argv = ["evaluate-detection", *common, "--reference", str(paths["truth"]), "--json"]
    assert main(argv + ["--threshold", "0"]) == 0
    row = json.loads(capsys.readouterr().out)
    truth = gdal.Open(str(paths["truth"])).ReadAsArray() > 0
    assert row["cIoU"] == pytest.approx(truth.mean(), abs=1e-6) and row["pixels"] == 64 * 64
    bad = ["evaluate-detection", *common, "--reference", str(tmp_path / "missing.gpkg")]
    assert main(bad) == 2
    assert "missing.gpkg does not exist" in capsys.readouterr().err
