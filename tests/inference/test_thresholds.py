import numpy as np
import pytest

from kdmsi.inference.thresholds import (
    HIST_BINS,
    ProbabilityHistograms,
    choose_threshold,
    histogram_quantile,
    otsu_threshold,
)


def _hist(values):
    return np.histogram(values, bins=HIST_BINS, range=(0, 1))[0]


def test_otsu_splits_two_modes():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.1, 0.03, 5000), rng.normal(0.8, 0.05, 2000)])
    t = otsu_threshold(_hist(np.clip(values, 0, 1)))
    assert 0.25 < t < 0.65


def test_histogram_quantile():
    values = np.linspace(0, 1, 10001)[:-1]
    assert abs(histogram_quantile(_hist(values), 0.9) - 0.9) <= 2 / HIST_BINS


def test_choose_threshold_methods():
    h = ProbabilityHistograms()
    rng = np.random.default_rng(1)
    changed = np.concatenate([rng.uniform(0, 0.2, 3000), rng.uniform(0.6, 1.0, 1000)])
    h.add(changed.reshape(40, 100), 1)
    h.add(rng.uniform(0, 0.3, 4000).reshape(40, 100), 0)
    auto = choose_threshold(h)
    assert auto.method == "auto"
    assert auto.value == max(auto.otsu_changed, auto.unchanged_quantile)
    assert abs(auto.unchanged_quantile - 0.297) < 0.01
    assert choose_threshold(h, 0.42).value == 0.42
    assert choose_threshold(h, "unchanged-quantile").value == auto.unchanged_quantile
    with pytest.raises(ValueError):
        choose_threshold(h, 1.5)
    with pytest.raises(ValueError):
        choose_threshold(h, "bogus")


def test_auto_without_unchanged_tiles_falls_back_to_otsu():
    h = ProbabilityHistograms()
    h.add(np.array([[0.1, 0.1, 0.9, 0.9]]), 1)
    h.add(np.array([[0.5]]), None)  # unlabelled: ignored
    choice = choose_threshold(h)
    assert choice.method.startswith("auto") and 0.1 < choice.value <= 0.9
    assert h.unchanged.sum() == 0


def test_otsu_of_a_single_occupied_bin_is_that_bin():
    hist = np.zeros(HIST_BINS, np.int64)
    hist[3] = 100
    assert otsu_threshold(hist) == 4 / HIST_BINS
