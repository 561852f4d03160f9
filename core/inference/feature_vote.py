"""A second opinion for the pseudo labels: the zero-shot feature distance votes with the
student's MSI probability, each by its margin over its own label-free threshold.

On the real pairs, the student's MSI marks too much of a changed tile (58-70 % of the changed
tiles' pixels in the LEVIR 1024 px regions, where the truth has 18-21 %): its CAM spreads
around the change. The pretrained trunk's feature distance (`kdmsi.inference.zero_shot`) is
sharp where the scene changed but knows nothing of what the analyst calls change. A pixel of a
tile tagged changed is change when

    (1 - w) * (msi - t_msi) + w * (z / (2 * t_z) - 1 / 2) > 0,

``t_msi`` the MSI threshold chosen without truth, ``t_z`` = `ZERO_SHOT_THRESHOLD`, ``w`` the
vote's weight (the distance is scaled so its threshold sits at 1/2, like a probability's).
Measured offline on the real-pair run's maps (pooled pseudo-label change IoU inside the
changed tiles, 11 optical regions): MSI alone 0.308; the vote at w = 0.5 0.343, at w = 0.3
0.344, at w = 0.7 0.334; the distance alone 0.315.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..geo.tiling import Window
from ..progress import CancelCheck, ProgressCallback, check_cancel, report
from .zero_shot import ZERO_SHOT_THRESHOLD

CONTEXT_SIZE = 256
"""The distance of a tile is computed on a window of at least this many pixels around it, as
`kdmsi detect --zero-shot` sees it: a 64 px tile alone gives the stride-16 features 4 x 4
positions."""


def context_window(tile: Window, width: int, height: int, size: int = CONTEXT_SIZE) -> Window:
    """A window of ``max(size, tile)`` px centred on ``tile``, shifted inside the raster (padded
    when the raster is smaller)."""
    side = max(size, tile.w, tile.h)
    w, h = min(side, width), min(side, height)
    x = int(min(max(tile.x + tile.w // 2 - w // 2, 0), width - w))
    y = int(min(max(tile.y + tile.h // 2 - h // 2, 0), height - h))
    return Window(x, y, w, h, pad_x=side - w, pad_y=side - h)


def zero_shot_tile_maps(
    dataset,
    indices: Sequence[int],
    device=None,
    progress: Optional[ProgressCallback] = None,
    cancelled: Optional[CancelCheck] = None,
) -> dict[int, np.ndarray]:
    """The zero-shot distance of the tiles ``indices`` of a dataset: {index: float32 [T, T]}.

    A `kdmsi.data.tagged.RasterTileDataset` (it has a ``pair``) is read with context
    (`context_window`), the tile cropped out and padded to its shape with edge values; any
    other dataset (`kdmsi.data.pairs.PairDataset`: separate tile images) on its items.
    """
    import torch

    from .zero_shot import feature_distance, zero_shot_trunk

    trunk = zero_shot_trunk(len(dataset.bands), device)
    read = _context_reader(dataset) if hasattr(dataset, "pair") else _item_reader(dataset)
    maps: dict[int, np.ndarray] = {}
    for k, index in enumerate(indices):
        check_cancel(cancelled)
        pre, post, crop = read(index)
        with torch.inference_mode():
            x, y = (torch.from_numpy(np.asarray(a))[None].to(device or "cpu") for a in (pre, post))
            distance = feature_distance(trunk, x, y)[0, 0].float().cpu().numpy()
        maps[index] = crop(distance)
        report(progress, (k + 1) / max(len(indices), 1), f"feature distance, tile {k + 1}")
    return maps


def _context_reader(dataset):
    """(pre, post, crop) of a tagged raster tile read with `context_window` around it."""
    from ..data.tile_prep import TilePreparer

    prepare = TilePreparer(dataset.pair, dataset.stretches, dataset.normalisation)
    width, height = dataset.pair.width, dataset.pair.height

    def read(index: int):
        tile = dataset.windows[index]
        around = context_window(tile, width, height)
        rows, cols = tile.tile_shape
        prepared = prepare(around)
        if prepared is None:  # no valid pixel: a flat map, never change
            empty = np.zeros((len(dataset.bands), 32, 32), np.float32)
            return empty, empty, lambda _: np.zeros((rows, cols), np.float32)
        ox, oy = tile.x - around.x, tile.y - around.y

        def crop(distance: np.ndarray) -> np.ndarray:
            inside = distance[oy : oy + tile.h, ox : ox + tile.w]
            return np.pad(inside, ((0, rows - tile.h), (0, cols - tile.w)), mode="edge")

        return prepared[0], prepared[1], crop

    return read


def _item_reader(dataset):
    """(pre, post, crop) of a dataset item as it is (no augmentation)."""

    def read(index: int):
        item = dataset[index]
        return item["pre"].numpy(), item["post"].numpy(), lambda distance: distance

    return read


def vote(msi: np.ndarray, msi_threshold: float, distance: np.ndarray, weight: float) -> np.ndarray:
    """Boolean change mask of the vote (module notes): ``msi`` and ``distance`` float [H, W]."""
    scaled = np.clip(distance / (2.0 * ZERO_SHOT_THRESHOLD), 0.0, 1.0)
    return (1.0 - weight) * (msi - msi_threshold) + weight * (scaled - 0.5) > 0


__all__ = ["CONTEXT_SIZE", "context_window", "vote", "zero_shot_tile_maps"]
