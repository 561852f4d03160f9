"""Quality-robust models for the plugin: the checkpoint flag, pixel-size ratio, detect warning."""

import pytest
import torch
from osgeo import gdal

from kdmsi.data.pairs import Normalisation
from kdmsi.data.synthetic import make_scene, write_scene
from kdmsi.detect.quality import quality_warning
from kdmsi.geo.align import pixel_size_ratio
from kdmsi.geo.raster import RasterNotFoundError
from kdmsi.models import SiameseDeepLabV3Plus
from kdmsi.models.checkpoint import is_quality_robust, save_detector


@pytest.fixture(scope="module")
def rasters(tmp_path_factory):
    """Before at 1 m; after at 1 m, 1.5 m and 3 m (UTM), and at ~3 m warped to EPSG:4326."""
    folder = tmp_path_factory.mktemp("quality")
    paths = {}
    for name, pixel in (("fine", 1.0), ("mid", 1.5), ("coarse", 3.0)):
        files = write_scene(make_scene(32, 32, seed=1, pixel_size_m=pixel), folder / name)
        paths[name] = files["before"]
    geographic = folder / "coarse_4326.tif"
    gdal.Warp(str(geographic), str(paths["coarse"]), dstSRS="EPSG:4326")
    paths["coarse_4326"] = geographic
    return paths


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quality_models")
    torch.manual_seed(0)
    net = SiameseDeepLabV3Plus("resnet18")
    norm = Normalisation.default(3)
    plain = save_detector(folder / "plain.kdmsi", net, [1, 2, 3], norm, 64)
    robust = save_detector(
        folder / "robust.kdmsi", net, [1, 2, 3], norm, 64, quality_robust=True, method="hicd"
    )
    return plain, robust


def test_pixel_size_ratio_same_and_other_crs(rasters):
    assert pixel_size_ratio(rasters["fine"], rasters["fine"]) == pytest.approx(1.0)
    assert pixel_size_ratio(rasters["fine"], rasters["coarse"]) == pytest.approx(3.0)
    assert pixel_size_ratio(rasters["coarse"], rasters["fine"]) == pytest.approx(1 / 3)
    # measured in the before raster's CRS: a geographic after raster compares in metres
    assert pixel_size_ratio(rasters["fine"], rasters["coarse_4326"]) == pytest.approx(3.0, rel=0.1)
    with pytest.raises(RasterNotFoundError):
        pixel_size_ratio(rasters["fine"], "missing.tif")


def test_checkpoint_flag(models):
    plain, robust = models
    assert not is_quality_robust(plain) and is_quality_robust(robust)
    assert not is_quality_robust({"kind": "detector"})  # checkpoints from before the flag


def test_quality_warning_only_beyond_2x_without_a_robust_model(rasters, models):
    plain, robust = models
    message = quality_warning(rasters["fine"], rasters["coarse"], plain)
    assert message and "3.0 times" in message and "after" in message
    assert "train-hicd" in message
    assert "before" in quality_warning(rasters["coarse"], rasters["fine"], plain)
    assert quality_warning(rasters["fine"], rasters["mid"], plain) is None
    assert quality_warning(rasters["fine"], rasters["coarse"], robust) is None


def test_cli_detect_warns_before_running(rasters, models, tmp_path, caplog):
    from kdmsi.cli.detect import _warn_quality

    plain, _ = models
    _warn_quality(str(rasters["fine"]), str(rasters["coarse"]), str(plain))
    assert "not trained for pairs of different quality" in caplog.text
    caplog.clear()
    _warn_quality(str(rasters["fine"]), "missing.tif", str(plain))  # left to detect's errors
    assert caplog.text == ""
