"""kdmsi.runtime.speed: the backbone speed probe and the job estimate the QGIS dialog shows."""

from __future__ import annotations

import numpy as np
import pytest

from kdmsi.choices import DETECTOR_BACKBONES
from kdmsi.runtime.speed import (
    OUTSIDE_MODEL_S_PER_TILE,
    REFERENCE_SECONDS_PER_TILE,
    expected_detect_seconds,
    measure_tile_speed,
    time_batch_runner,
)


def test_probe_returns_seconds_per_tile_pair():
    seconds = measure_tile_speed("resnet18", device="cpu", tile_size=32, batch_size=2, repeats=1)
    assert 0.0 < seconds < 30.0
    with pytest.raises(ValueError, match="runtime"):
        measure_tile_speed("resnet18", runtime="tensorrt")


def test_time_batch_runner_takes_the_fastest_batch_per_tile():
    calls = []

    def run(pre, post):
        calls.append(pre.shape)
        return np.zeros((pre.shape[0], *pre.shape[2:]), np.float32)

    assert time_batch_runner(run, 3, 4, 16, repeats=2, warmup=1) >= 0.0
    assert calls == [(3, 4, 16, 16)] * 3


def test_estimate_counts_the_tiles_of_the_grid():
    # 1000 px with 256 px tiles overlapping 64 px: starts 0, 192, 384, 576, 744 -> 5 x 5 tiles
    assert expected_detect_seconds(1000, 1000, 1.0) == pytest.approx(
        25 * (1.0 + OUTSIDE_MODEL_S_PER_TILE)
    )
    assert set(REFERENCE_SECONDS_PER_TILE) == {
        (b, r) for b in DETECTOR_BACKBONES for r in ("torch", "onnx")
    }
