"""Tests for kdmsi.geo.tiling: grid coverage, blending window, streaming stitch exactness."""

from __future__ import annotations

import numpy as np
import pytest

from kdmsi.geo.tiling import (
    StitchAccumulator,
    Window,
    blend_window,
    crop_tile,
    pad_tile,
    tile_grid,
    tile_rows,
)

SIZES = [(1, 1), (5, 300), (100, 37), (256, 256), (257, 300), (700, 513), (1000, 260)]
GRIDS = [(256, 64), (64, 16), (50, 0), (32, 16), (48, 30), (128, 40)]


def smooth_field(height: int, width: int, dy: int = 0, dx: int = 0) -> np.ndarray:
    """A smooth float32 field in (0, 1) of absolute pixel position (origin shifted by dy, dx)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    y, x = y + dy, x + dx
    return (0.5 + 0.4 * np.sin(x / 23.0) * np.cos(y / 31.0)).astype(np.float32)


@pytest.mark.parametrize("width,height", SIZES)
@pytest.mark.parametrize("tile,overlap", GRIDS)
def test_grid_covers_raster_and_stays_inside(width, height, tile, overlap):
    covered = np.zeros((height, width), dtype=np.int32)
    windows = tile_grid(width, height, tile, overlap)
    for win in windows:
        assert win.x >= 0 and win.y >= 0
        assert win.x + win.w <= width and win.y + win.h <= height
        assert win.tile_shape == (tile, tile)
        covered[win.y : win.y + win.h, win.x : win.x + win.w] += 1
    assert covered.min() >= 1
    xs = sorted({w.x for w in windows})
    ys = sorted({w.y for w in windows})
    assert all(0 < b - a <= tile - overlap for a, b in zip(xs, xs[1:]))
    assert all(0 < b - a <= tile - overlap for a, b in zip(ys, ys[1:]))
    rows = tile_rows(width, height, tile, overlap)
    assert [w for row in rows for w in row] == windows
    assert all(len({w.y for w in row}) == 1 for row in rows)


def test_small_raster_gives_one_padded_tile():
    assert tile_grid(100, 37, 256, 64) == [Window(0, 0, 100, 37, pad_x=156, pad_y=219)]
    arr = np.arange(3 * 37 * 100, dtype=np.float32).reshape(3, 37, 100)
    win = tile_grid(100, 37, 256, 64)[0]
    padded = pad_tile(arr, win)
    assert padded.shape == (3, 256, 256)
    np.testing.assert_array_equal(crop_tile(padded, win), arr)
    one = pad_tile(np.ones((1, 1, 5), np.float32), Window(0, 0, 5, 1, 0, 4))
    assert one.shape == (1, 5, 5)


def test_exact_multiple_has_no_extra_tile():
    assert [w.x for w in tile_rows(448, 10, 256, 64)[0]] == [0, 192]
    assert [w.x for w in tile_rows(449, 10, 256, 64)[0]] == [0, 192, 193]


@pytest.mark.parametrize(
    "args", [(0, 10, 256, 64), (10, 10, 0, 0), (10, 10, 64, 64), (10, 10, 64, -1)]
)
def test_bad_grid_arguments(args):
    with pytest.raises(ValueError):
        tile_grid(*args)


@pytest.mark.parametrize("tile,overlap", GRIDS)
def test_blend_window(tile, overlap):
    w = blend_window(tile, overlap)
    assert w.shape == (tile, tile) and w.dtype == np.float32
    assert w.min() > 0 and w.max() <= 1.0
    np.testing.assert_allclose(w, w.T)
    np.testing.assert_allclose(w, w[::-1, ::-1])
    if overlap == 0:
        assert (w == 1).all()
    elif 2 * overlap <= tile:
        assert (w[overlap:-overlap, overlap:-overlap] == 1).all()
        assert w[0, 0] < 0.01 and w[0, tile // 2] < 0.05
        assert (np.diff(w[tile // 2, : overlap + 1]) >= 0).all()


def stitch(field: np.ndarray, tile: int, overlap: int, predict=lambda t: t) -> np.ndarray:
    """Cut ``field`` into tiles, predict each (padded) tile, stitch it back streaming."""
    height, width = field.shape
    rows = tile_rows(width, height, tile, overlap)
    acc = StitchAccumulator(width, height, tile, overlap)
    blend = blend_window(tile, overlap)
    out = np.full((height, width), -5.0, dtype=np.float32)
    next_expected = 0

    def take(strips):
        nonlocal next_expected
        for y0, strip in strips:
            assert y0 == next_expected and strip.dtype == np.float32
            assert strip.shape[0] <= acc.capacity <= tile
            out[y0 : y0 + strip.shape[0]] = strip
            next_expected = y0 + strip.shape[0]

    for r, row in enumerate(rows):
        for win in row:
            data = field[win.y : win.y + win.h, win.x : win.x + win.w]
            prob = crop_tile(predict(pad_tile(data, win)), win)
            acc.add(win, prob, crop_tile(blend, win))
        take(acc.pop_finished(rows[r + 1][0].y if r + 1 < len(rows) else height))
    take(acc.flush())
    assert next_expected == height
    return out


@pytest.mark.parametrize("width,height", SIZES)
@pytest.mark.parametrize("tile,overlap", GRIDS)
def test_stitch_reproduces_field(width, height, tile, overlap):
    field = smooth_field(height, width)
    np.testing.assert_allclose(stitch(field, tile, overlap), field, atol=1e-6, rtol=0)


@pytest.mark.parametrize("k", [1, 7, 64])
@pytest.mark.parametrize("tile,overlap", [(64, 16), (50, 0), (128, 40)])
def test_grid_shift_invariance(k, tile, overlap):
    """A position-independent prediction stitches the same whatever the grid origin."""
    height, width = 190, 230

    def predict(t):
        return (1.0 / (1.0 + np.exp(-6.0 * (t - 0.5)))).astype(np.float32)

    field = smooth_field(height, width)
    shifted = smooth_field(height + k, width + k, dy=-k, dx=-k)  # same field, k px of margin
    np.testing.assert_array_equal(shifted[k:, k:], field)
    base = stitch(field, tile, overlap, predict)
    moved = stitch(shifted, tile, overlap, predict)[k:, k:]
    np.testing.assert_allclose(moved, base, atol=1e-6, rtol=0)
    np.testing.assert_allclose(base, predict(field), atol=1e-6, rtol=0)


def test_zero_weight_gives_nan_and_bad_usage_is_refused():
    acc = StitchAccumulator(10, 100, 8, 2)
    win = Window(0, 0, 8, 8)
    weight = np.ones((8, 8), np.float32)
    weight[:, :2] = 0
    acc.add(win, np.full((8, 8), 0.25, np.float32), weight)
    with pytest.raises(ValueError, match="buffer"):
        acc.add(Window(0, 20, 8, 8), np.zeros((8, 8), np.float32), weight)
    with pytest.raises(ValueError, match="must both be"):
        acc.add(win, np.zeros((4, 4), np.float32), weight)
    ((y0, strip),) = list(acc.pop_finished(6))
    assert y0 == 0 and strip.shape == (6, 10)
    assert np.isnan(strip[:, :2]).all() and np.isnan(strip[:, 8:]).all()
    np.testing.assert_array_equal(strip[:, 2:8], 0.25)
    with pytest.raises(ValueError, match="already popped"):
        acc.add(win, np.zeros((8, 8), np.float32), weight)
    strips = list(acc.flush())
    assert [s.shape[0] for _, s in strips] == [8] * 11 + [6]
    assert acc.next_row == 100
