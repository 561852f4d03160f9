"""The tagged tiles of the detect map: what calibration and the check after training read is
what `kdmsi detect` writes for those pixels."""

from __future__ import annotations

import numpy as np
import torch
from detect_helpers import NORM, blurred_oracle, run_oracle, scene, write_raster

from kdmsi.data.tagged import RasterTileDataset
from kdmsi.geo.align import align_pair
from kdmsi.geo.stretch import pair_stretches
from kdmsi.geo.tiling import Window
from kdmsi.training.calibration import calibrated_threshold
from kdmsi.training.tagged_map import tagged_tile_maps


class BlurredOracle(torch.nn.Module):
    """A 'detector' with 9 x 9 context, so the detect tiles' grid and blending matter."""

    def change_probability(self, pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
        return blurred_oracle(pre, post)


def _dataset(tmp_path, windows):
    pre, post = scene()
    before = write_raster(tmp_path / "before.tif", pre)
    after = write_raster(tmp_path / "after.tif", post)
    pair = align_pair(before, after)
    return RasterTileDataset(pair, windows, pair_stretches(pair), NORM, 128), before, after


def test_tagged_tiles_read_the_detect_map(tmp_path):
    # grid cells, one off the grid, one at the raster's corner, one straddling the change
    windows = [
        (Window(0, 0, 128, 128), 0),
        (Window(128, 128, 128, 128), 1),
        (Window(50, 70, 128, 128), 0),
        (Window(256, 192, 128, 128), 0),
        (Window(180, 60, 128, 128), 1),
    ]
    dataset, before, after = _dataset(tmp_path, windows)
    _, detect_map = run_oracle(before, after, tmp_path / "out.gpkg", blurred_oracle)
    seen = {}
    for index, prob, covered in tagged_tile_maps(
        BlurredOracle(), dataset, torch.device("cpu"), batch_size=3
    ):
        w = windows[index][0]
        assert covered.all()
        np.testing.assert_allclose(prob, detect_map[w.y : w.y + w.h, w.x : w.x + w.w], atol=1e-5)
        seen[index] = prob
    assert sorted(seen) == list(range(len(windows)))
    assert seen[4].max() > 0.9 and seen[0].max() < 0.1  # the change is in the straddling tile
    dataset.pair.close()


def test_the_threshold_is_chosen_on_the_detect_map(tmp_path):
    # the not-changed tile sits right beside the change: its pixels near the edge are marked
    windows = [(Window(200, 30, 128, 128), 1), (Window(72, 30, 128, 128), 0)]
    dataset, _, _ = _dataset(tmp_path, windows)
    choice, check = calibrated_threshold(BlurredOracle(), dataset, torch.device("cpu"))
    assert choice["map"] == "detect map"
    assert check["not_changed_tiles"] == 1 and check["changed_tiles"] == 1
    assert check["not_changed_marked"] <= 0.02
    dataset.pair.close()
