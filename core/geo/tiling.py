"""Overlapping tile grid, blending window and a row-streaming stitch accumulator.

A raster of ``width`` x ``height`` pixels is cut into ``tile_size`` square tiles that step by
``stride = tile_size - overlap_px``; the last column/row of tiles is shifted back so every tile
stays inside the raster. Per-tile predictions are multiplied by `blend_window` and summed by
`StitchAccumulator`, which hands back finished full-width row strips as soon as no later tile
row can touch them, so memory stays at ``2 * tile_size * width`` floats.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

MAX_OVERLAP = 64


def default_overlap(tile_size: int) -> int:
    """Default overlap of neighbouring detect tiles: 64 px, at most a quarter of the tile."""
    return min(MAX_OVERLAP, int(tile_size) // 4)


@dataclass(frozen=True)
class Window:
    """A tile: the raster pixels ``[y, y + h) x [x, x + w)`` plus padding to a full tile.

    ``pad_x``/``pad_y`` are non-zero only when the raster is narrower/shorter than a tile: the
    caller then pads the read pixels on the right/bottom (`pad_tile`, reflect mode) up to
    ``(h + pad_y, w + pad_x)`` and crops the prediction back to ``(h, w)`` (`crop_tile`).
    """

    x: int
    y: int
    w: int
    h: int
    pad_x: int = 0
    pad_y: int = 0

    @property
    def tile_shape(self) -> tuple[int, int]:
        """(rows, cols) of the padded tile fed to the network."""
        return self.h + self.pad_y, self.w + self.pad_x


def _check_grid_args(width: int, height: int, tile_size: int, overlap_px: int) -> None:
    if width < 1 or height < 1:
        raise ValueError(f"raster size must be positive, got {width} x {height}")
    if tile_size < 1:
        raise ValueError(f"tile_size must be positive, got {tile_size}")
    if not 0 <= overlap_px < tile_size:
        raise ValueError(
            f"overlap_px must be in [0, tile_size) = [0, {tile_size}), got {overlap_px}"
        )


def tile_starts(size: int, tile_size: int, overlap_px: int) -> list[int]:
    """Tile start offsets along one axis of ``size`` pixels (sorted, first 0).

    Steps by ``tile_size - overlap_px``; the last start is ``size - tile_size`` so the last tile
    ends at the raster edge. ``size <= tile_size`` gives ``[0]``.
    """
    if size <= tile_size:
        return [0]
    stride = tile_size - overlap_px
    starts = list(range(0, size - tile_size + 1, stride))
    if starts[-1] + tile_size < size:
        starts.append(size - tile_size)
    return starts


def tile_rows(
    width: int, height: int, tile_size: int = 256, overlap_px: int = 64
) -> list[list[Window]]:
    """The tile grid grouped by tile row (top to bottom; each row left to right)."""
    _check_grid_args(width, height, tile_size, overlap_px)
    w = min(width, tile_size)
    h = min(height, tile_size)
    pad_x, pad_y = tile_size - w, tile_size - h
    xs = tile_starts(width, tile_size, overlap_px)
    return [
        [Window(x, y, w, h, pad_x, pad_y) for x in xs]
        for y in tile_starts(height, tile_size, overlap_px)
    ]


def tile_grid(width: int, height: int, tile_size: int = 256, overlap_px: int = 64) -> list[Window]:
    """All tiles covering a ``width`` x ``height`` raster, row by row (see module docstring)."""
    return [win for row in tile_rows(width, height, tile_size, overlap_px) for win in row]


def pad_tile(arr: np.ndarray, window: Window) -> np.ndarray:
    """Pad ``arr`` [..., h, w] on the bottom/right to the window's full tile (reflect mode).

    Returns ``arr`` itself when the window needs no padding. A 1-pixel axis is padded by
    repetition (reflection needs at least 2 pixels).
    """
    if window.pad_x == 0 and window.pad_y == 0:
        return arr
    pad = [(0, 0)] * (arr.ndim - 2) + [(0, window.pad_y), (0, window.pad_x)]
    mode = "reflect" if min(arr.shape[-2:]) > 1 else "edge"
    return np.pad(arr, pad, mode=mode)


def crop_tile(arr: np.ndarray, window: Window) -> np.ndarray:
    """Crop a padded tile prediction [..., tile, tile] back to the window's [..., h, w]."""
    return arr[..., : window.h, : window.w]


def _ramp(tile_size: int, overlap_px: int) -> np.ndarray:
    """1-D raised-cosine weights [tile_size] (float64): ~0 at both ends, 1 in the middle."""
    weights = np.ones(tile_size, dtype=np.float64)
    if overlap_px > 0:
        i = np.arange(overlap_px, dtype=np.float64)
        rise = 0.5 - 0.5 * np.cos(np.pi * (i + 0.5) / overlap_px)
        n = min(overlap_px, tile_size)
        weights[:n] = np.minimum(weights[:n], rise[:n])
        weights[tile_size - n :] = np.minimum(weights[tile_size - n :], rise[:n][::-1])
    return weights


def blend_window(tile_size: int, overlap_px: int) -> np.ndarray:
    """Blending weights float32 [tile_size, tile_size] for overlapping tiles.

    Separable raised cosine: within ``overlap_px`` of a tile edge the weight falls smoothly
    towards zero (but stays positive, smallest about ``(pi / (4 * overlap_px))**2`` in a
    corner); the interior is 1. ``overlap_px == 0`` gives all ones.
    """
    if tile_size < 1 or not 0 <= overlap_px < tile_size:
        raise ValueError(
            f"need tile_size >= 1 and 0 <= overlap_px < tile_size, got {tile_size}, {overlap_px}"
        )
    ramp = _ramp(tile_size, overlap_px).astype(np.float32)  # the window itself: no float64
    return np.outer(ramp, ramp)


class StitchAccumulator:
    """Weighted average of overlapping tile predictions, streamed out in full-width row strips.

    Usage, tile row by tile row (``rows = tile_rows(...)``)::

        acc = StitchAccumulator(width, height, tile_size, overlap_px)
        for r, row in enumerate(rows):
            for win in row:
                acc.add(win, prob, weight)         # prob, weight: float32 [win.h, win.w]
            next_y = rows[r + 1][0].y if r + 1 < len(rows) else height
            for y0, strip in acc.pop_finished(next_y):
                write(y0, strip)                   # strip: float32 [n, width]

    The result is ``sum(weight * prob) / sum(weight)`` per pixel; pixels with zero total weight
    (e.g. weight multiplied by a validity mask that is False in every tile) come out NaN.
    Memory: two float32 buffers of ``tile_size x width`` whatever the raster height: a tile row
    spans ``tile_size`` rows, so popping the rows above a tile row before adding it (as above,
    or before each tile with ``pop_finished(win.y)``) always leaves room.
    """

    def __init__(self, width: int, height: int, tile_size: int = 256, overlap_px: int = 64):
        _check_grid_args(width, height, tile_size, overlap_px)
        self.width, self.height = width, height
        self.capacity = min(height, tile_size)
        self._num = np.zeros((self.capacity, width), dtype=np.float32)
        self._den = np.zeros((self.capacity, width), dtype=np.float32)
        self._y0 = 0  # raster row held in buffer row 0; rows above are finished and gone

    @property
    def next_row(self) -> int:
        """First raster row not yet handed out."""
        return self._y0

    def add(self, window: Window, prob: np.ndarray, weight: np.ndarray) -> None:
        """Accumulate one tile: ``prob``, ``weight`` float32 [window.h, window.w]."""
        shape = (window.h, window.w)
        if prob.shape != shape or weight.shape != shape:
            raise ValueError(
                f"prob {prob.shape} and weight {weight.shape} must both be {shape} for {window}"
            )
        top = window.y - self._y0
        if top < 0:
            raise ValueError(
                f"{window} touches rows above {self._y0}, which were already popped; "
                "pop only rows that no later tile row overlaps"
            )
        if top + window.h > self.capacity:
            raise ValueError(
                f"{window} reaches row {window.y + window.h} but the buffer holds rows "
                f"{self._y0}..{self._y0 + self.capacity}: pop finished rows after each tile row"
            )
        rows = slice(top, top + window.h)
        cols = slice(window.x, window.x + window.w)
        w = weight.astype(np.float32, copy=False)
        self._num[rows, cols] += w * prob.astype(np.float32, copy=False)
        self._den[rows, cols] += w

    def pop_finished(self, up_to_y: int, copy: bool = True) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(y0, strip)`` for the finished rows ``[next_row, up_to_y)``.

        ``strip`` is float32 [n, width] with n <= `capacity` (longer spans come as several
        strips). Call with the first row of the next tile row (or the raster height at the
        end); rows at or below it stay buffered. With ``copy=False`` the strip is computed in
        place in the accumulator's own buffer and is only valid until the generator resumes
        (no allocation of the size of a strip: what the detect path uses).
        """
        up_to_y = min(up_to_y, self.height)
        while self._y0 < up_to_y:
            n = min(up_to_y - self._y0, self.capacity)
            num, den = self._num[:n], self._den[:n]
            with np.errstate(invalid="ignore", divide="ignore"):
                np.divide(num, den, out=num)  # zero weight: num is 0 too, 0 / 0 = NaN
            y0 = self._y0
            yield y0, (num.copy() if copy else num)
            self._shift(n)
            self._y0 += n

    def _shift(self, n: int) -> None:
        """Drop the first ``n`` buffer rows and zero ``n`` fresh rows at the bottom."""
        for buf in (self._num, self._den):
            if n < self.capacity:
                buf[:-n] = buf[n:].copy()
            buf[-n:] = 0.0

    def flush(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yield all remaining rows (to the raster height)."""
        yield from self.pop_finished(self.height)
