"""The plugin checks options as the library does: the same option lists, the same ranges on
its Processing parameters, and the library's own messages when a run is refused.

Skipped when PyQGIS is not importable.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
qgis_core = pytest.importorskip("qgis.core")


def test_option_lists_agree_with_the_library():
    """The plugin's backbones come from kdmsi's registry; the epochs it spells out (to load
    without kdmsi) are the recipe's."""
    from kdmsi import choices, recipe
    from kdmsi_qgis import algorithms

    kd, detector, default = algorithms.backbone_choices()
    assert (kd, detector, default) == (
        list(choices.BACKBONES),
        list(choices.DETECTOR_BACKBONES),
        choices.DEFAULT_BACKBONE,
    )
    assert (algorithms.KD_EPOCHS, algorithms.CD_EPOCHS) == (recipe.KD_EPOCHS, recipe.CD_EPOCHS)


def test_number_ranges_agree_with_the_library(qgis_app):
    """The Processing parameters' bounds are those of `kdmsi.options.NUMBERS`."""
    from kdmsi.options import NUMBERS

    registry = qgis_core.QgsApplication.processingRegistry()
    names = {
        "TILE_SIZE": "tile_size",
        "OVERLAP": "overlap",
        "BATCH_SIZE": "batch_size",
        "KD_EPOCHS": "kd_epochs",
        "CD_EPOCHS": "cd_epochs",
        "MIN_AREA": "min_area",
        "SIMPLIFY": "simplify",
        "THRESHOLD": "threshold",
    }
    checked = 0
    for alg in registry.providerById("kdmsi").algorithms():
        for parameter in alg.parameterDefinitions():
            spec = NUMBERS.get(names.get(parameter.name(), ""))
            if spec is None:
                continue
            # 0: the tagged tiles' own size / chosen from the raster / the model's own
            auto = parameter.name() == "TILE_SIZE"
            assert parameter.minimum() == (0 if auto else spec.low), (alg.name(), parameter.name())
            if spec.high is not None:
                assert parameter.maximum() == spec.high, (alg.name(), parameter.name())
            checked += 1
    assert checked >= 12


def test_processing_shows_the_library_messages(qgis_app, scene_pair, qgis_detector, tmp_path):
    """Bad input is refused by the same checks, in the same words, as on the command line."""
    import processing

    before = scene_pair["before"]
    original = before.read_bytes()
    params = {
        "BEFORE": str(before),
        "AFTER": str(scene_pair["after"]),
        "MODEL": str(qgis_detector),
        "TILE_SIZE": 128,
        "DEVICE": 1,
        "OUTPUT": str(tmp_path / "changes.gpkg"),
    }
    with pytest.raises(qgis_core.QgsProcessingException, match="is the same file as --before"):
        processing.run("kdmsi:detect_changes", {**params, "PROBABILITY": str(before)})
    with pytest.raises(qgis_core.QgsProcessingException, match="--overlap must be from 0"):
        processing.run("kdmsi:detect_changes", {**params, "OVERLAP": 128})
    assert before.read_bytes() == original
    assert not (tmp_path / "changes.gpkg").exists()
