"""The detector's probability over the tagged tiles as `kdmsi detect` will compute it.

The threshold a detector is saved with, and the check of its marks against the tags, must read
the map the analyst will get. That map is not the model's output on the training windows:
detect runs the model on its own grid of overlapping tiles (`kdmsi.geo.tiling.tile_grid`,
`default_overlap`) and blends them, so a pixel of a tile tagged not changed is also seen in
windows that reach into a changed neighbour, and DeepLabV3+'s image-pooling branch carries that
neighbour's change into it (issue 26: EGY-BCD at 128 px, 1.2 % of the not-changed tiles marked
on the training windows, 17.2 % on the detect map at the same threshold).

`tagged_tile_maps` runs only the detect tiles that touch a tagged window, in detect's order,
and hands each tagged window's blended probability back as soon as its last detect tile is
done, so memory is bounded by the tags of about two tile rows, never by the raster.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterator, Optional

import numpy as np
import torch

from ..data.tagged import RasterTileDataset
from ..data.tile_prep import TilePreparer
from ..geo.tiling import (
    Window,
    blend_window,
    crop_tile,
    default_overlap,
    tile_grid,
    tile_starts,
)
from ..progress import CancelCheck, check_cancel


def _overlap(a: Window, b: Window) -> Optional[tuple[slice, slice, slice, slice]]:
    """(rows, cols) of ``b`` inside ``a``'s pixels and of ``a`` inside ``b``'s, or None."""
    x0, x1 = max(a.x, b.x), min(a.x + a.w, b.x + b.w)
    y0, y1 = max(a.y, b.y), min(a.y + a.h, b.y + b.h)
    if x0 >= x1 or y0 >= y1:
        return None
    return (
        slice(y0 - a.y, y1 - a.y),
        slice(x0 - a.x, x1 - a.x),
        slice(y0 - b.y, y1 - b.y),
        slice(x0 - b.x, x1 - b.x),
    )


def _spanning(starts: list[int], size: int, begin: int, length: int) -> range:
    """Indices of the tiles starting at ``starts`` (sorted) that reach into [begin, begin +
    length)."""
    first = int(np.searchsorted(np.asarray(starts) + size, begin, side="right"))
    last = int(np.searchsorted(starts, begin + length, side="left"))
    return range(first, last)


@torch.no_grad()
def tagged_tile_maps(
    model: torch.nn.Module,
    dataset: RasterTileDataset,
    device: torch.device,
    batch_size: int = 4,
    overlap_px: Optional[int] = None,
    cancelled: Optional[CancelCheck] = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(index, probability float32 [h, w], valid bool [h, w])`` for every tagged window
    of ``dataset`` (in no set order), where ``probability`` is what `kdmsi detect` writes for
    those pixels with ``model`` (its tile size: the dataset's; ``overlap_px``: detect's default
    for it) and ``valid`` marks the pixels some detect tile covered with data.

    ``model.change_probability(pre, post)``: float32 [B, C, T, T] x 2 -> [B, 1, T, T].
    """
    size = dataset.tile_size
    overlap = default_overlap(size) if overlap_px is None else overlap_px
    pair = dataset.pair
    xs, ys = tile_starts(pair.width, size, overlap), tile_starts(pair.height, size, overlap)
    grid = tile_grid(pair.width, pair.height, size, overlap)  # row by row: index = r * len(xs) + c
    # the detect tiles each tagged window needs; a detect tile spans [start, start + size)
    touching: dict[int, list[tuple[int, tuple]]] = defaultdict(list)
    pending = [0] * len(dataset.windows)
    for index, window in enumerate(dataset.windows):
        for r in _spanning(ys, size, window.y, window.h):
            for c in _spanning(xs, size, window.x, window.w):
                g = r * len(xs) + c
                cut = _overlap(window, grid[g])
                if cut is not None:
                    touching[g].append((index, cut))
                    pending[index] += 1
    prepare = TilePreparer(pair, dataset.stretches, dataset.normalisation)
    weight = blend_window(size, overlap)
    sums: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    needed = sorted(touching)
    model.eval()
    for start in range(0, len(needed), batch_size):
        check_cancel(cancelled)
        prepared = [(g, prepare(grid[g])) for g in needed[start : start + batch_size]]
        prepared = [(g, p) for g, p in prepared if p is not None]
        probs = []
        if prepared:
            pre = torch.from_numpy(np.stack([p[0] for _, p in prepared])).to(device)
            post = torch.from_numpy(np.stack([p[1] for _, p in prepared])).to(device)
            probs = model.change_probability(pre, post)[:, 0].float().cpu().numpy()
        done = dict(zip((g for g, _ in prepared), zip(probs, (p[2] for _, p in prepared))))
        for g in needed[start : start + batch_size]:
            tile = grid[g]
            for index, (rows, cols, tile_rows, tile_cols) in touching[g]:
                window = dataset.windows[index]
                num, den = sums.setdefault(
                    index, (np.zeros((window.h, window.w)), np.zeros((window.h, window.w)))
                )
                if g in done:
                    prob, valid = done[g]
                    w = crop_tile(weight, tile)[tile_rows, tile_cols] * valid[tile_rows, tile_cols]
                    num[rows, cols] += w * crop_tile(prob, tile)[tile_rows, tile_cols]
                    den[rows, cols] += w
                pending[index] -= 1
                if pending[index] == 0:
                    num, den = sums.pop(index)
                    covered = den > 0
                    out = np.zeros(den.shape, np.float32)
                    out[covered] = num[covered] / den[covered]
                    yield index, out, covered


__all__ = ["tagged_tile_maps"]
