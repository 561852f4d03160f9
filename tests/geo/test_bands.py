"""The bands a raster pair is read with when none are given (`kdmsi.geo.bands.default_bands`):
red, green, blue where the raster says which they are, else the first three data bands."""

from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

from kdmsi.geo.align import align_pair
from kdmsi.geo.bands import default_band_choice, describe_default_bands

LANDSAT = Path(__file__).resolve().parents[2] / "resources/sample_data/landsat_taizhou"


def _raster(path: Path, count: int, interpretations=(), descriptions=()) -> gdal.Dataset:
    ds = gdal.GetDriverByName("GTiff").Create(str(path), 8, 8, count, gdal.GDT_Byte)
    ds.SetGeoTransform((0, 1, 0, 8, 0, -1))
    for b in range(1, count + 1):
        ds.GetRasterBand(b).WriteArray(np.full((8, 8), b, np.uint8))
    for b, code in enumerate(interpretations, 1):
        ds.GetRasterBand(b).SetColorInterpretation(code)
    for b, text in enumerate(descriptions, 1):
        ds.GetRasterBand(b).SetDescription(text)
    return ds


def test_colour_interpretation_names_the_rgb_bands(tmp_path):
    bgrn = (gdal.GCI_BlueBand, gdal.GCI_GreenBand, gdal.GCI_RedBand, gdal.GCI_Undefined)
    bands, reason = default_band_choice(_raster(tmp_path / "bgrn.tif", 4, bgrn))
    assert bands == [3, 2, 1] and "colour interpretation" in reason


def test_band_descriptions_name_the_rgb_bands(tmp_path):
    names = ("B1 blue", "B2 green", "B3 red", "B4 NIR", "B5 SWIR1")
    bands, reason = default_band_choice(_raster(tmp_path / "tm.tif", 5, descriptions=names))
    assert bands == [3, 2, 1] and "band descriptions" in reason
    # two bands calling themselves red: no guess, the first three
    clash = ("red", "green", "blue", "red edge red")
    assert default_band_choice(_raster(tmp_path / "clash.tif", 4, descriptions=clash))[0] == [
        1,
        2,
        3,
    ]


def test_otherwise_the_first_three_data_bands(tmp_path):
    alpha_first = (gdal.GCI_AlphaBand, gdal.GCI_GrayIndex)
    bands, reason = default_band_choice(_raster(tmp_path / "a.tif", 5, alpha_first))
    assert bands == [2, 3, 4] and "first data bands" in reason
    assert default_band_choice(_raster(tmp_path / "one.tif", 1))[0] == [1]


@pytest.mark.skipif(not LANDSAT.is_dir(), reason="the Landsat sample is not in this checkout")
def test_landsat_sample_reads_red_green_blue_and_says_why(caplog):
    before, after = LANDSAT / "A/taizhou.tif", LANDSAT / "B/taizhou.tif"
    assert describe_default_bands(before) == "3, 2, 1 (red, green, blue by the band descriptions)"
    with caplog.at_level("INFO", logger="kdmsi"), align_pair(before, after) as pair:
        assert pair.bands == (3, 2, 1)
    assert "reading bands 3, 2, 1: red, green, blue by the band descriptions" in caplog.text
    with align_pair(before, after, bands=[4, 3, 2]) as pair:  # a choice wins
        assert pair.bands == (4, 3, 2)
