"""Buildings: random sizes and heights (small houses, mostly with pitched roofs, or large
buildings, mostly flat), roof colours (lit and shaded gable halves, or a flat roof with a
parapet), each rasterised with its cast shadow as a box swept along the sun direction, and
placed without overlap in clusters whose positions are drawn around a centre or in a box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

# Building states: on both dates, after only, before only.
STABLE, NEW, GONE = "stable", "new", "gone"

# Roof colours (RGB, 0..255).
_PITCHED_ROOFS = np.array(
    [[170, 80, 58], [142, 64, 50], [120, 94, 76], [98, 100, 106], [72, 74, 80]],
    dtype=np.float32,
)
_FLAT_ROOFS = np.array(
    [[198, 198, 192], [172, 172, 168], [152, 142, 124], [90, 90, 94]], dtype=np.float32
)


@dataclass
class Building:
    """One building rasterised into the window ``rows, cols`` of the scene.

    ``roof`` and ``shade`` are bool [h, w] (footprint, and footprint plus cast shadow);
    ``colour`` is float32 [3, h, w]; ``state`` is "stable", "new" (after only) or "gone"
    (before only).
    """

    rows: slice
    cols: slice
    roof: np.ndarray
    shade: np.ndarray
    colour: np.ndarray
    cluster: int
    state: str = STABLE

    @property
    def area(self) -> int:
        """Pixels of footprint plus shadow inside the scene."""
        return int(self.shade.sum())


def _window(
    cy: float, cx: float, radius: float, height: int, width: int
) -> Optional[tuple[slice, slice]]:
    """Row and column slices of the square of ``radius`` around (cy, cx), clipped; None if empty."""
    r0, r1 = max(int(cy - radius), 0), min(int(cy + radius) + 2, height)
    c0, c1 = max(int(cx - radius), 0), min(int(cx + radius) + 2, width)
    if r0 >= r1 or c0 >= c1:
        return None
    return slice(r0, r1), slice(c0, c1)


def _t_interval(p: np.ndarray, o: float, half: float) -> tuple[np.ndarray, np.ndarray]:
    """Range of t where |p - t * o| <= half, per element of p (empty when lo > hi)."""
    if abs(o) < 1e-9:
        inside = np.abs(p) <= half
        return np.where(inside, -np.inf, np.inf), np.where(inside, np.inf, -np.inf)
    t1, t2 = (p - half) / o, (p + half) / o
    return np.minimum(t1, t2), np.maximum(t1, t2)


def _swept_box(
    u: np.ndarray, v: np.ndarray, a: float, b: float, ou: float, ov: float
) -> np.ndarray:
    """Bool mask of the box |u| <= a, |v| <= b swept along (ou, ov): its cast shadow plus itself."""
    lo_u, hi_u = _t_interval(u, ou, a)
    lo_v, hi_v = _t_interval(v, ov, b)
    lo = np.maximum(np.maximum(lo_u, lo_v), 0.0)
    hi = np.minimum(np.minimum(hi_u, hi_v), 1.0)
    return lo <= hi


def _building_shape(
    rng: np.random.Generator, p_large: float, px: float
) -> tuple[float, float, float, bool]:
    """Random half length, half width, height (px) and whether the roof is pitched."""
    if rng.random() < p_large:
        length, wide, tall = rng.uniform(18, 42), rng.uniform(12, 22), rng.uniform(8, 16)
        pitched = rng.random() < 0.15
    else:
        length, wide, tall = rng.uniform(8, 16), rng.uniform(6.5, 10.5), rng.uniform(5, 9)
        pitched = rng.random() < 0.8
    return length / 2 / px, wide / 2 / px, tall / px, pitched


def _roof_colour(
    rng: np.random.Generator,
    u: np.ndarray,
    v: np.ndarray,
    half: tuple[float, float],
    pitched: bool,
    lit_side: float,
    px: float,
) -> np.ndarray:
    """Roof colour float32 [3, h, w]: gable halves lit differently, or flat with a parapet."""
    palette = _PITCHED_ROOFS if pitched else _FLAT_ROOFS
    base = palette[rng.integers(len(palette))] * rng.uniform(0.9, 1.08)
    if pitched:
        shade = np.where(v * lit_side > 0, 1.1, 0.84)
        shade = np.where(np.abs(v) < 0.35 / px, 1.15, shade)
    else:
        rim = 0.6 / px
        edge = (np.abs(u) > half[0] - rim) | (np.abs(v) > half[1] - rim)
        shade = np.where(edge, 0.86, 1.0)
    grain = 1.0 + 0.025 * rng.standard_normal(u.shape, dtype=np.float32)
    return (base[:, None, None] * (shade * grain)[None]).astype(np.float32)


def _hits(
    occupied: np.ndarray, centre: tuple[float, float], angle: float, a: float, b: float
) -> bool:
    """Cheap pre-test: is the centre or a corner of the box already occupied?"""
    height, width = occupied.shape
    cos, sin = math.cos(angle), math.sin(angle)
    for su, sv in ((0, 0), (1, 1), (1, -1), (-1, 1), (-1, -1)):
        row = int(round(centre[0] + su * a * sin + sv * b * cos))
        col = int(round(centre[1] + su * a * cos - sv * b * sin))
        if 0 <= row < height and 0 <= col < width and occupied[row, col]:
            return True
    return False


def _try_building(
    rng: np.random.Generator,
    occupied: np.ndarray,
    centre: tuple[float, float],
    angle: float,
    p_large: float,
    cast: tuple[float, float],
    px: float,
    cluster: int,
) -> Optional[Building]:
    """Rasterise one building at ``centre`` unless it overlaps ``occupied`` (bool [H, W]).

    ``cast`` is the shadow offset (rows, cols) per pixel of building height. On success the
    footprint plus a gap and the shadow are marked as occupied.
    """
    height, width = occupied.shape
    cy, cx = centre
    a, b, tall, pitched = _building_shape(rng, p_large, px)
    if _hits(occupied, centre, angle, a, b):
        return None
    gap = rng.uniform(2.0, 5.0) / px
    dy, dx = cast[0] * tall, cast[1] * tall
    win = _window(cy, cx, math.hypot(a, b) + gap + math.hypot(dy, dx) + 1, height, width)
    if win is None:
        return None
    y = np.arange(win[0].start, win[0].stop, dtype=np.float32)[:, None] - np.float32(cy)
    x = np.arange(win[1].start, win[1].stop, dtype=np.float32)[None, :] - np.float32(cx)
    cos, sin = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    u, v = x * cos + y * sin, -x * sin + y * cos
    ou, ov = (
        dx * math.cos(angle) + dy * math.sin(angle),
        -dx * math.sin(angle) + dy * math.cos(angle),
    )
    shade = _swept_box(u, v, a, b, ou, ov)
    if not shade.any() or (occupied[win] & shade).any():
        return None
    roof = (np.abs(u) <= a) & (np.abs(v) <= b)
    if not roof.any():
        return None
    occupied[win] |= shade | ((np.abs(u) <= a + gap) & (np.abs(v) <= b + gap))
    colour = _roof_colour(rng, u, v, (a, b), pitched, -1.0 if ov > 0 else 1.0, px)
    return Building(win[0], win[1], roof, shade, colour, cluster)


def place_cluster(
    rng: np.random.Generator,
    occupied: np.ndarray,
    scatter: Callable[[np.random.Generator], tuple[float, float]],
    angle: float,
    roof_target: float,
    p_large: float,
    cast: tuple[float, float],
    px: float,
    cluster: int,
) -> list[Building]:
    """Place buildings at positions drawn by ``scatter`` until ``roof_target`` px of roof."""
    buildings: list[Building] = []
    roof_area = 0
    misses = 0
    while roof_area < roof_target and misses < 60:
        turn = math.pi / 2 if rng.random() < 0.15 else 0.0
        heading = angle + turn + rng.normal(0.0, 0.03)
        building = _try_building(rng, occupied, scatter(rng), heading, p_large, cast, px, cluster)
        if building is None:
            misses += 1
            continue
        misses = 0
        buildings.append(building)
        roof_area += int(building.roof.sum())
    return buildings


def gaussian_scatter(
    centre: tuple[float, float], sigma: float
) -> Callable[[np.random.Generator], tuple[float, float]]:
    """Sampler of positions (row, col) normally distributed around ``centre``."""

    def draw(rng: np.random.Generator) -> tuple[float, float]:
        return centre[0] + rng.normal(0.0, sigma), centre[1] + rng.normal(0.0, sigma)

    return draw


def box_scatter(
    centre: tuple[float, float], angle: float, half_along: float, half_across: float
) -> Callable[[np.random.Generator], tuple[float, float]]:
    """Sampler of positions (row, col) uniform in a box rotated by ``angle`` around ``centre``."""
    cos, sin = math.cos(angle), math.sin(angle)

    def draw(rng: np.random.Generator) -> tuple[float, float]:
        s = rng.uniform(-half_along, half_along)
        t = rng.uniform(-half_across, half_across)
        return centre[0] + s * sin + t * cos, centre[1] + s * cos - t * sin

    return draw
