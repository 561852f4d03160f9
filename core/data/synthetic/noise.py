"""Smooth random noise for the scene's textures: value noise (a coarse grid of Gaussian values,
smoothstep-interpolated, at a random sub-cell offset) and its multi-octave fractal sum. Field
variation, meadows, tree crowns and stands, and road wear are all drawn from it. Each call
draws its grids from the generator it is given, so the order of calls fixes the scene.
"""

from __future__ import annotations

import math

import numpy as np


def _value_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Smooth value noise, [H, W] float32, roughly unit variance, features of ``cell`` px."""
    cell = max(float(cell), 2.0)
    gh = int(math.ceil(height / cell)) + 2
    gw = int(math.ceil(width / cell)) + 2
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    oy, ox = rng.random(2)
    rows = _interp_weights(height, cell, oy)
    cols = _interp_weights(width, cell, ox)
    along_x = grid[:, cols[0]] * (1.0 - cols[2]) + grid[:, cols[1]] * cols[2]
    out = along_x[rows[0]] * (1.0 - rows[2])[:, None] + along_x[rows[1]] * rows[2][:, None]
    return out * np.float32(1.6)


def _interp_weights(
    n: int, cell: float, offset: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid indices (i0, i1) and smoothstep weight, each [n], for n samples at spacing 1/cell."""
    pos = np.arange(n, dtype=np.float32) / np.float32(cell) + np.float32(offset)
    i0 = np.floor(pos).astype(np.int64)
    frac = pos - i0
    weight = (frac * frac * (3.0 - 2.0 * frac)).astype(np.float32)
    return i0, i0 + 1, weight


def fractal_noise(
    rng: np.random.Generator, height: int, width: int, cell: float, octaves: int
) -> np.ndarray:
    """Multi-octave value noise, [H, W] float32, roughly unit variance; finest cell >= 2 px."""
    total = np.zeros((height, width), dtype=np.float32)
    norm = 0.0
    for octave in range(octaves):
        amp = 0.5**octave
        total += np.float32(amp) * _value_noise(rng, height, width, cell / 2**octave)
        norm += amp * amp
    return total / np.float32(math.sqrt(norm))
