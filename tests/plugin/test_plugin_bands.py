"""Bands in QGIS: every algorithm that takes a raster pair has BANDS (the before raster's
bands, several); empty reads the model's bands, else red, green, blue where the rasters say
which they are. Run through a real QgsApplication on the 6-band Landsat sample."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
qgis_core = pytest.importorskip("qgis.core")

LANDSAT = Path(__file__).resolve().parents[2] / "resources/sample_data/landsat_taizhou"
pytestmark = pytest.mark.skipif(not LANDSAT.is_dir(), reason="no Landsat sample here")


class Feedback(qgis_core.QgsProcessingFeedback):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def pushInfo(self, info):  # noqa: N802 (QGIS API)
        self.lines.append(info)
        super().pushInfo(info)


def test_every_pair_algorithm_offers_bands(qgis_app):
    registry = qgis_core.QgsApplication.processingRegistry()
    for name in ("detect_changes", "evaluate_changes", "train_from_tags", "create_tile_grid"):
        bands = registry.algorithmById(f"kdmsi:{name}").parameterDefinition("BANDS")
        assert (
            bands is not None
            and bands.allowMultiple()
            and bands.parentLayerParameterName() == ("BEFORE")
        )
        assert bands.flags() & qgis_core.QgsProcessingParameterDefinition.FlagOptional
        assert "red, green, blue where the rasters say" in bands.description()


def test_zero_shot_reads_red_green_blue_by_default_and_the_bands_chosen(qgis_app, tmp_path):
    import processing
    from osgeo import gdal

    pair = {"BEFORE": str(LANDSAT / "A/taizhou.tif"), "AFTER": str(LANDSAT / "B/taizhou.tif")}
    maps = {}
    for key, bands in (("default", None), ("nir", [4, 3, 2])):
        feedback = Feedback()
        prob = tmp_path / f"{key}.tif"
        params = {**pair, "ZERO_SHOT": True, "OUTPUT": str(tmp_path / f"{key}.gpkg")}
        params.update(PROBABILITY=str(prob), **({"BANDS": bands} if bands else {}))
        processing.run("kdmsi:detect_changes", params, feedback=feedback)
        maps[key] = gdal.Open(str(prob)).ReadAsArray()
        said = [line for line in feedback.lines if "reading bands" in line or "bands [" in line]
        if bands is None:  # shown before the run: which bands, and why
            assert any("3, 2, 1: red, green, blue by the band descriptions" in s for s in said)
    assert (maps["default"] != maps["nir"]).any()  # the choice reached the map
    with pytest.raises(qgis_core.QgsProcessingException, match="band 9"):
        processing.run(
            "kdmsi:detect_changes",
            {**pair, "ZERO_SHOT": True, "BANDS": [9], "OUTPUT": str(tmp_path / "bad.gpkg")},
        )
    assert not (tmp_path / "bad.gpkg").exists()
