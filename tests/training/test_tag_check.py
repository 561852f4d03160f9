"""The detector's threshold from its tagged tiles, and the check of its marks against the tags."""

from __future__ import annotations

import numpy as np
import pytest

from kdmsi.training.calibration import MAX_THRESHOLD, detector_threshold
from kdmsi.training.tag_check import TagCheck, TileHistograms


def _tiles(changed: list[np.ndarray], not_changed: list[np.ndarray]) -> TileHistograms:
    hists = TileHistograms()
    for tile in changed:
        hists.add(tile, 1)
    for tile in not_changed:
        hists.add(tile, 0)
    return hists


def _ramp(low: float, high: float, n: int = 100) -> np.ndarray:
    return np.linspace(low, high, n * n, dtype=np.float32).reshape(n, n)


def test_threshold_is_raised_until_the_not_changed_tiles_are_clear():
    # the label share alone takes about 0.2; the not-changed tiles reach 0.6
    hists = _tiles([_ramp(0.0, 1.0)], [_ramp(0.0, 0.6), _ramp(0.0, 0.2)])
    earlier = detector_threshold(hists, 0.5, not_changed_target=None)
    assert earlier["method"] == "label share"
    assert earlier["value"] == pytest.approx(0.2, abs=0.01)
    choice = detector_threshold(hists, 0.5, not_changed_target=0.01)
    assert choice["method"] == "not-changed tiles"
    assert 0.57 <= choice["value"] <= 0.6
    check = TagCheck.from_histograms(hists, choice["value"])
    assert check.not_changed_marked <= 0.01 and not check.warnings()


def test_threshold_is_capped_and_then_the_check_warns():
    # the not-changed tiles look like the changed one: no threshold clears them
    hists = _tiles([_ramp(0.95, 1.0), _ramp(0.95, 1.0)], [_ramp(0.95, 1.0), _ramp(0.0, 0.1)])
    choice = detector_threshold(hists, 0.3, not_changed_target=0.01)
    assert choice["value"] == MAX_THRESHOLD
    check = TagCheck.from_histograms(hists, choice["value"])
    assert check.not_changed_tiles == 2 and check.not_changed_tiles_marked == 1
    assert check.not_changed_marked == pytest.approx(0.5, abs=0.01)
    (warning,) = check.warnings()
    assert "50.0 % of the pixels of the 2 tiles tagged not changed" in warning
    assert "Tag more not-changed tiles" in warning and "higher threshold" in warning
    assert check.to_dict()["warnings"] == [warning]


def test_changed_tiles_that_come_out_empty_are_named():
    hists = _tiles([_ramp(0.0, 0.1)] * 3 + [_ramp(0.0, 1.0)], [_ramp(0.0, 0.05)] * 2)
    check = TagCheck.from_histograms(hists, 0.5)
    assert check.changed_tiles == 4 and check.changed_tiles_empty == 3
    (warning,) = check.warnings()
    assert warning.startswith("3 of the 4 tiles tagged changed come out (nearly) empty")
    assert "lower threshold than the model's 0.50" in warning
    assert "leaves 3 of the 4 tiles tagged changed (nearly) empty" in check.describe()
    assert "zero-shot" not in warning
    (none_found,) = TagCheck.from_histograms(hists, 0.999).warnings()
    assert none_found.startswith("4 of the 4 tiles tagged changed")
    assert (
        "the zero-shot map, which needs no tags" in none_found
        and "detect --zero-shot" in none_found
    )


def test_no_not_changed_tile_keeps_the_label_share_rule():
    hists = _tiles([_ramp(0.0, 1.0)], [])
    choice = detector_threshold(hists, 0.2)
    assert choice["not_changed_bound"] is None
    assert choice["method"] == "default" and choice["value"] == 0.5
    assert detector_threshold(hists, 0.7)["value"] == pytest.approx(0.3, abs=0.002)
