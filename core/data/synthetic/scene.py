"""Deterministic synthetic before/after aerial scenes with change ground truth.

A scene is farmland with fields, meadows and trees, crossed by asphalt roads and dotted with
clusters of buildings (pitched or flat roofs, each casting a short shadow). Between the two
dates some buildings are constructed (mostly a new development next to a road, sometimes with
a new access road) and some are demolished (leaving bare soil). Those are the *true* changes:
the mask holds the pixels whose content changed, i.e. changed building footprints, their cast
shadows and new road surface.

The after image also carries nuisance changes that are *not* in the mask: a global
illumination change (per-band gain and offset), a seasonal tint (vegetation shifts towards
yellow/brown and loses near-infrared reflectance), per-pixel Gaussian noise on both dates, and
a sub-pixel shift (bilinear resampling, 0.2-0.45 px per axis).

Everything is vectorised numpy and driven by ``numpy.random.SeedSequence(seed)``, so the same
arguments give bit-identical scenes. GDAL is only imported by the functions that write files.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

__all__ = ["Scene", "make_scene", "write_scene", "write_tile_dataset"]

PathLike = Union[str, Path]

# Ground cover classes: grass, meadow, crop, dry grass, bare soil (RGB, 0..255).
_CLASS_RGB = np.array(
    [[96, 122, 66], [74, 100, 54], [122, 138, 72], [150, 146, 100], [146, 124, 98]],
    dtype=np.float32,
)
_CLASS_VEG = np.array([1.0, 1.0, 0.9, 0.55, 0.05], dtype=np.float32)
_CLASS_PROB = np.array([0.28, 0.14, 0.32, 0.1, 0.16])
_CROP = 2
_MEADOW_RGB = np.array([78, 104, 56], dtype=np.float32)
_TREE_RGB = np.array([50, 76, 40], dtype=np.float32)
_ASPHALT_RGB = np.array([104, 104, 107], dtype=np.float32)
_MARKING_RGB = np.array([205, 205, 200], dtype=np.float32)
_SCAR_RGB = np.array([140, 122, 98], dtype=np.float32)
_PITCHED_ROOFS = np.array(
    [[170, 80, 58], [142, 64, 50], [120, 94, 76], [98, 100, 106], [72, 74, 80]],
    dtype=np.float32,
)
_FLAT_ROOFS = np.array(
    [[198, 198, 192], [172, 172, 168], [152, 142, 124], [90, 90, 94]], dtype=np.float32
)
# Seasonal shift of fully vegetated pixels at strength 1 (R, G, B, NIR).
_SEASON_DELTA = np.array([62.0, 22.0, -8.0, -45.0], dtype=np.float32)
_SHADOW_FACTOR = 0.55
_UINT16_MAX = 4095

_STABLE, _NEW, _GONE = "stable", "new", "gone"


@dataclass(eq=False)
class Scene:
    """A co-registered before/after pair with its change mask and georeferencing.

    Attributes:
        pre: before image, [C, H, W], uint8 (0..255) or uint16 (0..4095).
        post: after image, [C, H, W], same dtype as ``pre``.
        change: true change mask, [H, W], bool.
        geotransform: GDAL 6-tuple (origin x, pixel width, 0, origin y, 0, -pixel height).
        crs_wkt: coordinate reference system as WKT.
        seed: the seed the scene was generated from.
    """

    pre: np.ndarray
    post: np.ndarray
    change: np.ndarray
    geotransform: tuple[float, ...]
    crs_wkt: str
    seed: int

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the scene."""
        return int(self.change.shape[0]), int(self.change.shape[1])

    @property
    def bands(self) -> int:
        """Number of image bands C."""
        return int(self.pre.shape[0])


@dataclass(frozen=True)
class _Road:
    """A road whose centre line is t = offset + amp * sin(2 pi s / period + phase).

    (s, t) are pixel coordinates rotated by ``angle``: s along the road, t across it.
    """

    angle: float
    offset: float
    amp: float
    period: float
    phase: float
    half_width: float
    marked: bool


@dataclass
class _Building:
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
    state: str = _STABLE

    @property
    def area(self) -> int:
        """Pixels of footprint plus shadow inside the scene."""
        return int(self.shade.sum())


@dataclass(frozen=True)
class _Layout:
    """Scene content shared by both dates.

    ``ground`` float32 [3, H, W], ``veg`` float32 [H, W] vegetation fraction 0..1,
    ``asphalt`` float32 [3, H, W] road surface colour, ``road_pre`` / ``road_post`` float32
    [H, W] road coverage 0..1, ``buildings`` every building of either date, ``centres`` the
    (row, col) centre of each building cluster (0 = the development site).
    """

    ground: np.ndarray
    veg: np.ndarray
    asphalt: np.ndarray
    road_pre: np.ndarray
    road_post: np.ndarray
    buildings: list
    centres: dict


# --------------------------------------------------------------------------------------------
# Noise and small raster helpers


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


def _fractal_noise(
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


def _shift_mask(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Translate a bool [H, W] mask by whole pixels (content moves by dy, dx); fills False."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    if abs(dy) >= h or abs(dx) >= w:
        return out
    src_r = slice(max(-dy, 0), h - max(dy, 0))
    src_c = slice(max(-dx, 0), w - max(dx, 0))
    dst_r = slice(max(dy, 0), h - max(-dy, 0))
    dst_c = slice(max(dx, 0), w - max(-dx, 0))
    out[dst_r, dst_c] = mask[src_r, src_c]
    return out


def _blur(img: np.ndarray) -> np.ndarray:
    """Separable [1/4, 1/2, 1/4] sensor blur with edge replication, float32 [C, H, W]."""
    pad = np.pad(img, ((0, 0), (1, 1), (0, 0)), mode="edge")
    img = 0.5 * pad[:, 1:-1] + 0.25 * (pad[:, :-2] + pad[:, 2:])
    pad = np.pad(img, ((0, 0), (0, 0), (1, 1)), mode="edge")
    return (0.5 * pad[:, :, 1:-1] + 0.25 * (pad[:, :, :-2] + pad[:, :, 2:])).astype(np.float32)


def _shift_axis(img: np.ndarray, shift: float, axis: int) -> np.ndarray:
    """Linear-interpolation shift of float32 [C, H, W] along ``axis``; edges replicated."""
    n = img.shape[axis]
    src = np.arange(n, dtype=np.float64) - shift
    i0 = np.floor(src)
    frac = (src - i0).astype(np.float32)
    lo = np.clip(i0, 0, n - 1).astype(np.int64)
    hi = np.clip(i0 + 1, 0, n - 1).astype(np.int64)
    shape = [1, 1, 1]
    shape[axis] = n
    frac = frac.reshape(shape)
    return np.take(img, lo, axis=axis) * (1.0 - frac) + np.take(img, hi, axis=axis) * frac


def _subpixel_shift(img: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """Bilinear resampling of float32 [C, H, W] so that content moves by (dy, dx) pixels."""
    return _shift_axis(_shift_axis(img, dy, axis=1), dx, axis=2)


# --------------------------------------------------------------------------------------------
# Ground


def _parcel_ids(rng: np.random.Generator, height: int, width: int, px: float) -> np.ndarray:
    """Field parcels on a rotated irregular grid: parcel index per pixel, int64 [H, W]."""
    angle = rng.uniform(0.0, math.pi)
    y = np.arange(height, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]
    s = x * np.float32(math.cos(angle)) + y * np.float32(math.sin(angle))
    t = -x * np.float32(math.sin(angle)) + y * np.float32(math.cos(angle))
    s_edges = _random_edges(rng, float(s.min()), float(s.max()), 40.0 / px, 130.0 / px)
    t_edges = _random_edges(rng, float(t.min()), float(t.max()), 25.0 / px, 90.0 / px)
    return np.searchsorted(s_edges, s) * (len(t_edges) + 1) + np.searchsorted(t_edges, t)


def _random_edges(
    rng: np.random.Generator, lo: float, hi: float, step_min: float, step_max: float
) -> np.ndarray:
    """Sorted 1-D edges from ``lo`` to past ``hi`` with random spacing, float32."""
    edges = [lo + rng.uniform(0.0, step_max)]
    while edges[-1] < hi:
        edges.append(edges[-1] + rng.uniform(step_min, step_max))
    return np.asarray(edges, dtype=np.float32)


def _fields(
    rng: np.random.Generator, height: int, width: int, px: float
) -> tuple[np.ndarray, np.ndarray]:
    """Parcel colours with crop-row stripes: RGB float32 [3, H, W] and vegetation [H, W]."""
    pid = _parcel_ids(rng, height, width, px)
    n = int(pid.max()) + 1
    cls = rng.choice(len(_CLASS_RGB), size=n, p=_CLASS_PROB)
    jitter = rng.uniform(0.88, 1.1, size=(1, n)) + rng.normal(0.0, 0.03, size=(3, n))
    lut = (_CLASS_RGB[cls].T * jitter).astype(np.float32)
    rgb = lut[:, pid]
    veg = _CLASS_VEG[cls][pid]
    angle = rng.uniform(0.0, math.pi)
    y = np.arange(height, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]
    along = x * np.float32(math.cos(angle)) + y * np.float32(math.sin(angle))
    period = max(2.5 / px, 3.0)
    stripe_amp = np.where(cls == _CROP, 0.08, 0.0).astype(np.float32)[pid]
    rgb *= 1.0 + stripe_amp * np.sin(along * np.float32(2.0 * math.pi / period))
    return rgb, veg


def _trees(
    rng: np.random.Generator, height: int, width: int, px: float, sun: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tree canopies: mask bool [H, W], brightness float32 [H, W], tree shadow bool [H, W]."""
    crowns = _fractal_noise(rng, height, width, 6.0 / px, 3)
    stands = _fractal_noise(rng, height, width, 90.0 / px, 2)
    score = crowns + 1.3 * stands
    canopy = score > 2.1
    bright = np.clip(0.78 + 0.22 * (score - 2.1), 0.7, 1.15).astype(np.float32)
    length = 4.0 / px
    shadow = _shift_mask(canopy, round(sun[0] * length), round(sun[1] * length)) & ~canopy
    return canopy, bright, shadow


def _ground(
    rng: np.random.Generator, height: int, width: int, px: float, sun: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Textured ground: RGB float32 [3, H, W] (0..255) and vegetation fraction float32 [H, W]."""
    rgb, veg = _fields(rng, height, width, px)
    wild = np.clip((_fractal_noise(rng, height, width, 140.0 / px, 3) - 0.5) / 0.6, 0.0, 1.0)
    rgb = rgb * (1.0 - wild) + _MEADOW_RGB[:, None, None] * wild
    veg = veg * (1.0 - wild) + wild
    rgb *= 1.0 + 0.07 * _fractal_noise(rng, height, width, 60.0 / px, 3)
    rgb *= 1.0 + 0.06 * _fractal_noise(rng, height, width, 3.0 / px, 3)
    canopy, bright, shadow = _trees(rng, height, width, px, sun)
    rgb = np.where(canopy, _TREE_RGB[:, None, None] * bright, rgb)
    rgb = np.where(shadow, rgb * np.float32(_SHADOW_FACTOR), rgb)
    veg = np.where(canopy, np.float32(1.0), veg)
    return rgb.astype(np.float32), veg.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Roads


def _make_roads(rng: np.random.Generator, height: int, width: int, px: float) -> list[_Road]:
    """A few straight or gently curved roads crossing the scene."""
    extent_m = max(height, width) * px
    count = 1 + min(int(rng.poisson(extent_m / 450.0)), 3)
    first_angle = rng.uniform(0.0, math.pi)
    roads = []
    for i in range(count):
        if i == 0:
            angle = first_angle
        elif rng.random() < 0.6:
            angle = first_angle + math.pi / 2 + rng.normal(0.0, 0.1)
        else:
            angle = rng.uniform(0.0, math.pi)
        py, px_ = rng.uniform(0.1, 0.9) * height, rng.uniform(0.1, 0.9) * width
        amp = 0.0 if rng.random() < 0.5 else rng.uniform(4.0, 20.0) / px
        period = rng.uniform(300.0, 900.0) / px
        phase = rng.uniform(0.0, 2 * math.pi)
        s = px_ * math.cos(angle) + py * math.sin(angle)
        t = -px_ * math.sin(angle) + py * math.cos(angle)
        offset = t - amp * math.sin(2 * math.pi * s / period + phase)
        half_width = rng.uniform(2.8, 4.0) / px if i == 0 else rng.uniform(2.2, 3.2) / px
        roads.append(_Road(angle, offset, amp, period, phase, half_width, i == 0))
    return roads


def _road_frame(road: _Road, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Along (s) and across (t) distance from the centre line, each float32 [H, W] in px."""
    cos, sin = np.float32(math.cos(road.angle)), np.float32(math.sin(road.angle))
    y = np.arange(height, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]
    s = x * cos + y * sin
    t = -x * sin + y * cos
    k = np.float32(2 * math.pi / road.period)
    arg = k * s + np.float32(road.phase)
    centre = np.float32(road.offset) + np.float32(road.amp) * np.sin(arg)
    slope = np.float32(road.amp) * k * np.cos(arg)
    return s, np.abs(t - centre) / np.sqrt(1.0 + slope * slope)


def _coverage(dist: np.ndarray, half_width: float) -> np.ndarray:
    """Anti-aliased coverage (float32, 0..1) of a band of ``half_width`` px around dist 0."""
    return np.clip(np.float32(half_width + 0.5) - dist, 0.0, 1.0).astype(np.float32)


def _road_layers(
    roads: Sequence[_Road], height: int, width: int, px: float, margin: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Road coverage float32 [H, W], centre-line markings bool [H, W], keep-out bool [H, W]."""
    cover = np.zeros((height, width), dtype=np.float32)
    marks = np.zeros((height, width), dtype=bool)
    keep_out = np.zeros((height, width), dtype=bool)
    dash = 6.0 / px
    for road in roads:
        s, dist = _road_frame(road, height, width)
        cover = np.maximum(cover, _coverage(dist, road.half_width))
        keep_out |= dist < road.half_width + margin
        if road.marked:
            marks |= (dist < max(0.075 / px, 0.5)) & (np.mod(s, 2 * dash) < dash)
    return cover, marks, keep_out


def _segment_coverage(
    p0: tuple[float, float], p1: tuple[float, float], half_width: float, height: int, width: int
) -> np.ndarray:
    """Coverage float32 [H, W] of a straight road segment from p0 to p1 (row, col) in px."""
    y = np.arange(height, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]
    dy, dx = p1[0] - p0[0], p1[1] - p0[1]
    length2 = max(dy * dy + dx * dx, 1e-6)
    proj = np.clip(((y - p0[0]) * dy + (x - p0[1]) * dx) / np.float32(length2), 0.0, 1.0)
    dist = np.hypot(y - (p0[0] + proj * dy), x - (p0[1] + proj * dx))
    return _coverage(dist, half_width)


def _asphalt(
    rng: np.random.Generator, height: int, width: int, px: float, marks: np.ndarray
) -> np.ndarray:
    """Road surface colour with wear texture and markings, float32 [3, H, W]."""
    wear = 1.0 + 0.05 * _fractal_noise(rng, height, width, 4.0 / px, 2)
    surface = _ASPHALT_RGB[:, None, None] * wear
    return np.where(marks, _MARKING_RGB[:, None, None], surface).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Buildings


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
) -> Optional[_Building]:
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
    return _Building(win[0], win[1], roof, shade, colour, cluster)


def _place_cluster(
    rng: np.random.Generator,
    occupied: np.ndarray,
    scatter: Callable[[np.random.Generator], tuple[float, float]],
    angle: float,
    roof_target: float,
    p_large: float,
    cast: tuple[float, float],
    px: float,
    cluster: int,
) -> list[_Building]:
    """Place buildings at positions drawn by ``scatter`` until ``roof_target`` px of roof."""
    buildings: list[_Building] = []
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


def _gaussian_scatter(
    centre: tuple[float, float], sigma: float
) -> Callable[[np.random.Generator], tuple[float, float]]:
    """Sampler of positions (row, col) normally distributed around ``centre``."""

    def draw(rng: np.random.Generator) -> tuple[float, float]:
        return centre[0] + rng.normal(0.0, sigma), centre[1] + rng.normal(0.0, sigma)

    return draw


def _box_scatter(
    centre: tuple[float, float], angle: float, half_along: float, half_across: float
) -> Callable[[np.random.Generator], tuple[float, float]]:
    """Sampler of positions (row, col) uniform in a box rotated by ``angle`` around ``centre``."""
    cos, sin = math.cos(angle), math.sin(angle)

    def draw(rng: np.random.Generator) -> tuple[float, float]:
        s = rng.uniform(-half_along, half_along)
        t = rng.uniform(-half_across, half_across)
        return centre[0] + s * sin + t * cos, centre[1] + s * cos - t * sin

    return draw


def _cluster_angle(rng: np.random.Generator, roads: Sequence[_Road]) -> float:
    """Orientation of a settlement: usually aligned with one of the roads."""
    if roads and rng.random() < 0.8:
        return roads[int(rng.integers(len(roads)))].angle + rng.normal(0.0, 0.03)
    return rng.uniform(0.0, math.pi)


def _near_road(
    rng: np.random.Generator, road: _Road, distance: float, height: int, width: int
) -> tuple[tuple[float, float], tuple[float, float]]:
    """A point ``distance`` px beside ``road`` inside the scene, and the road point opposite."""
    cos, sin = math.cos(road.angle), math.sin(road.angle)
    best = ((height / 2, width / 2), (height / 2, width / 2))
    for _ in range(30):
        py, pxx = rng.uniform(0.1, 0.9) * height, rng.uniform(0.1, 0.9) * width
        s = pxx * cos + py * sin
        t_centre = road.offset + road.amp * math.sin(2 * math.pi * s / road.period + road.phase)
        t = t_centre + rng.choice([-1.0, 1.0]) * distance
        site = (s * sin + t * cos, s * cos - t * sin)
        best = (site, (s * sin + t_centre * cos, s * cos - t_centre * sin))
        if 0.15 * height <= site[0] <= 0.85 * height and 0.15 * width <= site[1] <= 0.85 * width:
            break
    return best


# --------------------------------------------------------------------------------------------
# Layout: roads, the development site and settlements


def _layout(
    rng: np.random.Generator,
    height: int,
    width: int,
    px: float,
    density: float,
    change_fraction: float,
    sun: tuple[float, float],
) -> _Layout:
    """Ground, roads and buildings (states set later by ``_assign_changes``)."""
    ground, veg = _ground(rng, height, width, px, sun)
    roads = _make_roads(rng, height, width, px)
    road_pre, marks, occupied = _road_layers(roads, height, width, px, margin=3.0 / px)
    asphalt = _asphalt(rng, height, width, px, marks)
    shadow_ratio = rng.uniform(0.3, 0.5)
    cast = (sun[0] * shadow_ratio, sun[1] * shadow_ratio)  # shadow offset per unit height
    budget = change_fraction * height * width

    # Development (cluster 0): a 2 x 2 block of new buildings beside a road, sometimes with a
    # new access road into it.
    road = roads[int(rng.integers(len(roads)))]
    extent = min(height, width)
    half_along = min(rng.uniform(50.0, 75.0) / px, 0.3 * extent)
    half_across = min(rng.uniform(40.0, 60.0) / px, 0.25 * extent)
    site, foot = _near_road(rng, road, half_across + road.half_width + 8.0 / px, height, width)
    road_post = road_pre
    if change_fraction >= 0.02 and rng.random() < 0.6:
        spur = _segment_coverage(site, foot, 2.5 / px, height, width)
        road_post = np.maximum(road_pre, spur)
        occupied |= _segment_coverage(site, foot, 2.5 / px + 3.0 / px, height, width) > 0
    buildings = _develop(
        rng,
        occupied,
        site,
        foot,
        road.angle,
        (half_along, half_across),
        0.8 * budget / 1.3,
        cast,
        px,
    )
    centres = {0: site}

    # Established settlements.
    roof_target = density * height * width
    roof_area = 0
    cluster = 1
    empty = 0
    while roof_area < roof_target and cluster <= 60 and empty < 8:
        sigma = rng.uniform(15.0, 32.0) / px
        target = min(roof_target - roof_area, 0.25 * math.pi * (2 * sigma) ** 2)
        centres[cluster] = (rng.uniform(0, height), rng.uniform(0, width))
        placed = _place_cluster(
            rng,
            occupied,
            _gaussian_scatter(centres[cluster], sigma),
            _cluster_angle(rng, roads),
            target,
            0.12,
            cast,
            px,
            cluster,
        )
        buildings += placed
        roof_area += sum(int(b.roof.sum()) for b in placed)
        empty = 0 if placed else empty + 1
        cluster += 1
    return _Layout(ground, veg, asphalt, road_pre, road_post, buildings, centres)


def _develop(
    rng: np.random.Generator,
    occupied: np.ndarray,
    site: tuple[float, float],
    foot: tuple[float, float],
    angle: float,
    half: tuple[float, float],
    roof_target: float,
    cast: tuple[float, float],
    px: float,
) -> list[_Building]:
    """Fill up to four boxes (2 x 2, first row at ``site`` by the road) with new buildings.

    ``foot`` is the road point opposite ``site``; the second row lies further from the road.
    """
    height, width = occupied.shape
    along = (math.sin(angle), math.cos(angle))
    away = (site[0] - foot[0], site[1] - foot[1])
    norm = math.hypot(*away) or 1.0
    away = (away[0] / norm, away[1] / norm)
    step_along = 2 * half[0] + 8.0 / px
    step_away = 2 * half[1] + 8.0 / px
    side = 1.0 if rng.random() < 0.5 else -1.0
    buildings: list[_Building] = []
    roof_area = 0
    for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)):
        centre = (
            site[0] + side * i * step_along * along[0] + j * step_away * away[0],
            site[1] + side * i * step_along * along[1] + j * step_away * away[1],
        )
        if roof_area >= roof_target or not (0 <= centre[0] < height and 0 <= centre[1] < width):
            continue
        scatter = _box_scatter(centre, angle, half[0], half[1])
        placed = _place_cluster(
            rng, occupied, scatter, angle, roof_target - roof_area, 0.4, cast, px, 0
        )
        buildings += placed
        roof_area += sum(int(b.roof.sum()) for b in placed)
    return buildings


def _assign_changes(
    rng: np.random.Generator,
    buildings: Sequence[_Building],
    centres: dict[int, tuple[float, float]],
    budget: float,
) -> None:
    """Mark buildings "new" or "gone" until about ``budget`` px changed, clustered in space.

    The development site (cluster 0) is built first; then settlements nearest to it get infill
    and demolitions, so that change stays concentrated in one part of the scene.
    """
    by_cluster: dict[int, list[_Building]] = {}
    for building in buildings:
        by_cluster.setdefault(building.cluster, []).append(building)
    site = centres[0]
    distance = {
        c: math.hypot(centres[c][0] - site[0], centres[c][1] - site[1]) * rng.uniform(1.0, 1.3)
        for c in sorted(by_cluster)
    }
    order = sorted(by_cluster, key=lambda c: (c != 0, distance[c]))
    spent = 0.0
    for cluster in order:
        p_change = 1.0 if cluster == 0 else rng.uniform(0.5, 0.9)
        p_new = 1.0 if cluster == 0 else rng.uniform(0.3, 0.7)
        for building in by_cluster[cluster]:
            if spent >= budget:
                return
            if rng.random() < p_change:
                building.state = _NEW if rng.random() < p_new else _GONE
                spent += building.area


# --------------------------------------------------------------------------------------------
# Rendering


def _render_date(
    layout: _Layout, after: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Clean image of one date.

    Returns RGB float32 [3, H, W], vegetation float32 [H, W], roofs bool [H, W] and drawn
    shadows bool [H, W].
    """
    cover = layout.road_post if after else layout.road_pre
    rgb = layout.ground * (1.0 - cover) + layout.asphalt * cover
    veg = layout.veg * (1.0 - cover)
    absent = _GONE if after else _NEW
    present = [b for b in layout.buildings if b.state != absent]
    if after:
        for b in layout.buildings:
            if b.state == _GONE:
                _paint(rgb, b, np.broadcast_to(_SCAR_RGB[:, None, None], b.colour.shape), 0.8)
    roofs = np.zeros(cover.shape, dtype=bool)
    shaded = np.zeros(cover.shape, dtype=bool)
    for b in present:
        roofs[b.rows, b.cols] |= b.roof
        shaded[b.rows, b.cols] |= b.shade
    shadow = shaded & ~roofs
    rgb = np.where(shadow, rgb * np.float32(_SHADOW_FACTOR), rgb)
    for b in present:
        _paint(rgb, b, b.colour, 1.0)
    if after:
        for b in layout.buildings:
            if b.state == _GONE:
                veg[b.rows, b.cols][b.roof] = 0.0
    veg[roofs] = 0.0
    return rgb.astype(np.float32), veg, roofs, shadow


def _paint(rgb: np.ndarray, building: _Building, colour: np.ndarray, alpha: float) -> None:
    """Blend ``colour`` (float32 [3, h, w]) into ``rgb`` [3, H, W] over the building's roof."""
    view = rgb[:, building.rows, building.cols]
    mask = building.roof
    view[:, mask] = (1.0 - alpha) * view[:, mask] + alpha * colour[:, mask]


def _spectral(rgb: np.ndarray, veg: np.ndarray) -> np.ndarray:
    """Append a NIR band (bright for vegetation) to RGB: float32 [4, H, W]."""
    nir = 0.8 * rgb[0] + 0.2 * rgb[1] + 105.0 * veg + 10.0
    return np.concatenate([rgb, nir[None]], axis=0).astype(np.float32)


def _to_bands(full: np.ndarray, bands: int) -> np.ndarray:
    """Map R, G, B, NIR float32 [4, H, W] to ``bands`` output bands, float32 [bands, H, W].

    1 band: panchromatic; 2: pan + NIR; 3: RGB; 4: RGB + NIR; more: blends of NIR and a
    SWIR-like band (bright for soil and roofs, dark for vegetation).
    """
    pan = 0.3 * full[0] + 0.59 * full[1] + 0.11 * full[2]
    if bands == 1:
        return pan[None].astype(np.float32)
    if bands == 2:
        return np.stack([pan, full[3]]).astype(np.float32)
    out = [full[i] for i in range(min(bands, 4))]
    swir = 0.55 * full[0] + 0.45 * full[1] + 0.15 * full[2] - 0.25 * full[3] + 25.0
    extra = bands - 4
    for i in range(extra):
        w = (i + 1) / (extra + 1)
        out.append(w * full[3] + (1.0 - w) * swir)
    return np.stack(out).astype(np.float32)


def _seasonal_tint(full: np.ndarray, veg: np.ndarray, strength: float) -> np.ndarray:
    """Shift vegetated pixels of R, G, B, NIR float32 [4, H, W] towards autumn colours."""
    return (full + strength * _SEASON_DELTA[:, None, None] * veg[None]).astype(np.float32)


def _illumination(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Global gain/offset change with a slight per-band white balance, float32 [C, H, W]."""
    gain = 1.0 + rng.choice([-1.0, 1.0]) * rng.uniform(0.06, 0.18)
    gains = (gain * rng.uniform(0.96, 1.04, size=img.shape[0])).astype(np.float32)
    offsets = (rng.uniform(-10.0, 10.0) + rng.uniform(-3.0, 3.0, size=img.shape[0])).astype(
        np.float32
    )
    return img * gains[:, None, None] + offsets[:, None, None]


def _sensor_noise(rng: np.random.Generator, img: np.ndarray, sigma: float) -> np.ndarray:
    """Add Gaussian noise of ``sigma`` DN (0..255 scale) to float32 [C, H, W]."""
    return img + np.float32(sigma) * rng.standard_normal(img.shape, dtype=np.float32)


def _quantise(img: np.ndarray, dtype: str) -> np.ndarray:
    """float32 [C, H, W] on the 0..255 scale to uint8 (0..255) or uint16 (0..4095)."""
    if dtype == "uint8":
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)
    scaled = img.astype(np.float64) * (_UINT16_MAX / 255.0)
    return np.clip(np.rint(scaled), 0, _UINT16_MAX).astype(np.uint16)


# --------------------------------------------------------------------------------------------
# Georeferencing


def _crs_wkt(epsg: int) -> str:
    """WKT of an EPSG code: WGS 84 / UTM zones without GDAL, anything else through osr."""
    north = 32601 <= epsg <= 32660
    if north or 32701 <= epsg <= 32760:
        return _utm_wkt(epsg, epsg - (32600 if north else 32700), north)
    from osgeo import osr

    srs = osr.SpatialReference()
    if srs.ImportFromEPSG(int(epsg)) != 0:
        raise ValueError(f"unknown EPSG code {epsg}")
    return srs.ExportToWkt()


def _utm_wkt(epsg: int, zone: int, north: bool) -> str:
    """WKT1 (as GDAL writes it) of WGS 84 / UTM ``zone`` north or south."""
    geogcs = (
        'GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563,'
        'AUTHORITY["EPSG","7030"]],AUTHORITY["EPSG","6326"]],'
        'PRIMEM["Greenwich",0,AUTHORITY["EPSG","8901"]],'
        'UNIT["degree",0.0174532925199433,AUTHORITY["EPSG","9122"]],AUTHORITY["EPSG","4326"]]'
    )
    hemisphere = "N" if north else "S"
    return (
        f'PROJCS["WGS 84 / UTM zone {zone}{hemisphere}",{geogcs},'
        'PROJECTION["Transverse_Mercator"],PARAMETER["latitude_of_origin",0],'
        f'PARAMETER["central_meridian",{6 * zone - 183}],PARAMETER["scale_factor",0.9996],'
        f'PARAMETER["false_easting",500000],PARAMETER["false_northing",{0 if north else 10000000}],'
        'UNIT["metre",1,AUTHORITY["EPSG","9001"]],AXIS["Easting",EAST],AXIS["Northing",NORTH],'
        f'AUTHORITY["EPSG","{epsg}"]]'
    )


# --------------------------------------------------------------------------------------------
# Public API


def _check_args(
    height: int,
    width: int,
    bands: int,
    pixel_size_m: float,
    building_density: float,
    change_fraction: float,
    dtype: str,
) -> None:
    """Raise ValueError for arguments ``make_scene`` cannot honour."""
    if height < 16 or width < 16:
        raise ValueError(f"scene must be at least 16x16 pixels, got {height}x{width}")
    if bands < 1:
        raise ValueError(f"bands must be >= 1, got {bands}")
    if not pixel_size_m > 0:
        raise ValueError(f"pixel_size_m must be positive, got {pixel_size_m}")
    if not 0.0 <= building_density <= 0.5:
        raise ValueError(f"building_density must be in [0, 0.5], got {building_density}")
    if not 0.0 <= change_fraction <= 0.5:
        raise ValueError(f"change_fraction must be in [0, 0.5], got {change_fraction}")
    if dtype not in ("uint8", "uint16"):
        raise ValueError(f"dtype must be 'uint8' or 'uint16', got {dtype!r}")


def make_scene(
    height: int = 1024,
    width: int = 1024,
    seed: int = 0,
    bands: int = 3,
    pixel_size_m: float = 0.5,
    building_density: float = 0.08,
    change_fraction: float = 0.07,
    nuisance: bool = True,
    origin: tuple[float, float] = (500000.0, 5500000.0),
    epsg: int = 32633,
    dtype: str = "uint8",
) -> Scene:
    """Generate a deterministic before/after scene with its true change mask.

    Args:
        height, width: scene size H, W in pixels (>= 16).
        seed: non-negative seed; the same arguments give bit-identical scenes.
        bands: output bands C. 3 = RGB, 4 = RGB + NIR, more = extra NIR/SWIR-like blends,
            1 = panchromatic, 2 = pan + NIR.
        pixel_size_m: ground sampling distance; object sizes are set in metres.
        building_density: approximate share of the scene covered by established roofs.
        change_fraction: target share of changed pixels (achieved approximately; limited by
            how many buildings there are to change).
        nuisance: add illumination change, seasonal tint, noise and sub-pixel shift. The
            change mask and the scene content do not depend on this flag.
        origin: map coordinates (x, y) of the top-left corner.
        epsg: EPSG code of the CRS. WGS 84 / UTM codes need no GDAL, others use osr.
        dtype: "uint8" (0..255) or "uint16" (0..4095, same content).

    Returns:
        Scene with ``pre`` / ``post`` [C, H, W] of ``dtype`` and ``change`` bool [H, W].
    """
    _check_args(height, width, bands, pixel_size_m, building_density, change_fraction, dtype)
    layout_seq, change_seq, nuisance_seq = np.random.SeedSequence(seed).spawn(3)
    layout_rng = np.random.default_rng(layout_seq)
    azimuth = layout_rng.uniform(math.radians(20), math.radians(160))
    sun = (math.sin(azimuth), math.cos(azimuth))
    layout = _layout(
        layout_rng, height, width, pixel_size_m, building_density, change_fraction, sun
    )
    _assign_changes(
        np.random.default_rng(change_seq),
        layout.buildings,
        layout.centres,
        change_fraction * height * width,
    )

    rgb_pre, veg_pre, roofs_pre, shadow_pre = _render_date(layout, after=False)
    rgb_post, veg_post, roofs_post, shadow_post = _render_date(layout, after=True)
    change = (roofs_pre != roofs_post) | (shadow_pre != shadow_post)
    change |= (layout.road_post - layout.road_pre) > 0.5

    full_pre = _spectral(rgb_pre, veg_pre)
    full_post = _spectral(rgb_post, veg_post)
    noise_rng = np.random.default_rng(nuisance_seq)
    if nuisance:
        full_post = _seasonal_tint(full_post, veg_post, noise_rng.uniform(0.3, 0.6))
    pre = _blur(_to_bands(full_pre, bands))
    post = _blur(_to_bands(full_post, bands))
    if nuisance:
        shift = noise_rng.choice([-1.0, 1.0], size=2) * noise_rng.uniform(0.2, 0.45, size=2)
        post = _illumination(noise_rng, _subpixel_shift(post, shift[0], shift[1]))
        pre = _sensor_noise(noise_rng, pre, 2.0)
        post = _sensor_noise(noise_rng, post, 2.0)

    geotransform = (
        float(origin[0]),
        float(pixel_size_m),
        0.0,
        float(origin[1]),
        0.0,
        -float(pixel_size_m),
    )
    return Scene(
        _quantise(pre, dtype),
        _quantise(post, dtype),
        change,
        geotransform,
        _crs_wkt(epsg),
        int(seed),
    )


# --------------------------------------------------------------------------------------------
# Writing files


def _gdal():
    """The GDAL module, imported on first use."""
    from osgeo import gdal

    return gdal


def _gdal_type(array: np.ndarray) -> int:
    """GDAL data type code for a uint8 or uint16 array."""
    gdal = _gdal()
    types = {np.dtype(np.uint8): gdal.GDT_Byte, np.dtype(np.uint16): gdal.GDT_UInt16}
    if array.dtype not in types:
        raise ValueError(f"unsupported dtype {array.dtype}; expected uint8 or uint16")
    return types[array.dtype]


def _write_geotiff(
    path: Path,
    array: np.ndarray,
    geotransform: Optional[Sequence[float]],
    crs_wkt: Optional[str],
    nodata: Optional[int] = None,
) -> None:
    """Write [C, H, W] (or [H, W]) uint8/uint16 as a tiled, DEFLATE-compressed GeoTIFF."""
    gdal = _gdal()
    array = array[None] if array.ndim == 2 else array
    count, height, width = array.shape
    options = ["TILED=YES", "COMPRESS=DEFLATE", "PREDICTOR=2", "BLOCKXSIZE=256", "BLOCKYSIZE=256"]
    options.append(
        "PHOTOMETRIC=RGB" if count == 3 and array.dtype == np.uint8 else "PHOTOMETRIC=MINISBLACK"
    )
    ds = gdal.GetDriverByName("GTiff").Create(
        str(path), width, height, count, _gdal_type(array), options=options
    )
    if ds is None:
        raise OSError(f"GDAL could not create {path}: {gdal.GetLastErrorMsg()}")
    if geotransform is not None:
        ds.SetGeoTransform(tuple(geotransform))
    if crs_wkt:
        ds.SetProjection(crs_wkt)
    for i in range(count):
        band = ds.GetRasterBand(i + 1)
        if nodata is not None:
            band.SetNoDataValue(float(nodata))
        if band.WriteArray(array[i]) != 0:
            raise OSError(f"GDAL could not write band {i + 1} of {path}: {gdal.GetLastErrorMsg()}")
    ds.FlushCache()
    ds = None


def _avoid_nodata(array: np.ndarray, nodata: Optional[int]) -> np.ndarray:
    """Nudge valid pixels that equal ``nodata`` by one step so none reads as missing."""
    if nodata is None:
        return array
    info = np.iinfo(array.dtype)
    if not info.min <= nodata <= info.max:
        raise ValueError(f"nodata {nodata} outside the {array.dtype} range")
    step = 1 if nodata < info.max else -1
    return np.where(array == nodata, array + step, array).astype(array.dtype)


def _remove_quietly(path: Path) -> None:
    """Delete ``path`` and a GDAL side-car next to it, ignoring missing files."""
    for candidate in (path, path.with_name(path.name + ".aux.xml")):
        try:
            candidate.unlink()
        except FileNotFoundError:
            pass


def write_scene(scene: Scene, folder: PathLike, nodata: Optional[int] = None) -> dict[str, Path]:
    """Write ``before.tif``, ``after.tif`` and ``truth.tif`` (uint8 0/255) into ``folder``.

    The GeoTIFFs are tiled and DEFLATE-compressed and carry the scene's geotransform and CRS.
    Each file is written under a temporary name and moved into place only once all three are
    complete, so a failure leaves no half-written output. With ``nodata`` set, before/after
    bands declare it and valid pixels equal to it are nudged by one grey level.

    Returns:
        {"before": Path, "after": Path, "truth": Path}.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rasters = {
        "before": (_avoid_nodata(scene.pre, nodata), nodata),
        "after": (_avoid_nodata(scene.post, nodata), nodata),
        "truth": (scene.change.astype(np.uint8) * np.uint8(255), None),
    }
    final = {name: folder / f"{name}.tif" for name in rasters}
    temp = {name: folder / f".{name}.{os.getpid()}.tmp.tif" for name in rasters}
    try:
        for name, (array, nd) in rasters.items():
            _write_geotiff(temp[name], array, scene.geotransform, scene.crs_wkt, nd)
        for name in rasters:
            os.replace(temp[name], final[name])
    finally:
        for path in temp.values():
            _remove_quietly(path)
    return final


def _write_tile_image(path: Path, array: np.ndarray) -> None:
    """Write uint8 [C, h, w] or [h, w] as PNG (1 or 3 bands) or GeoTIFF (any band count)."""
    gdal = _gdal()
    array = array[None] if array.ndim == 2 else array
    count, height, width = array.shape
    if path.suffix.lower() != ".png":
        _write_geotiff(path, array, None, None)
        return
    mem = gdal.GetDriverByName("MEM").Create("", width, height, count, gdal.GDT_Byte)
    for i in range(count):
        mem.GetRasterBand(i + 1).WriteArray(array[i])
    out = gdal.GetDriverByName("PNG").CreateCopy(str(path), mem, 0)
    if out is None:
        raise OSError(f"GDAL could not write {path}: {gdal.GetLastErrorMsg()}")
    out.FlushCache()
    out = None
    mem = None


def _scene_tiles(scene: Scene, tile_size: int):
    """Yield (name, pre [C, t, t], post [C, t, t], change bool [t, t]) per full tile."""
    height, width = scene.shape
    for row in range(height // tile_size):
        for col in range(width // tile_size):
            rs = slice(row * tile_size, (row + 1) * tile_size)
            cs = slice(col * tile_size, (col + 1) * tile_size)
            name = f"s{scene.seed}_{row:03d}_{col:03d}"
            yield name, scene.pre[:, rs, cs], scene.post[:, rs, cs], scene.change[rs, cs]


def write_tile_dataset(scenes: Sequence[Scene], folder: PathLike, tile_size: int = 256) -> Path:
    """Cut scenes into non-overlapping tiles in the usual change-detection dataset layout.

    Writes ``A/<name>``, ``B/<name>`` (PNG for 3-band scenes, GeoTIFF otherwise), single-band
    ``label/<name>.png`` (0/255) and ``labels.csv`` (``name,changed``; changed = 1 when the
    tile holds any changed pixel). Names are ``s{seed}_{row:03d}_{col:03d}``; partial tiles at
    the right and bottom edges are dropped. Scenes must be uint8 with distinct seeds.

    Returns:
        ``folder`` as a Path.
    """
    if tile_size < 1:
        raise ValueError(f"tile_size must be positive, got {tile_size}")
    seeds = [s.seed for s in scenes]
    if len(set(seeds)) != len(seeds):
        raise ValueError("scenes must have distinct seeds (tile names derive from the seed)")
    for scene in scenes:
        if scene.pre.dtype != np.uint8 or scene.post.dtype != np.uint8:
            raise ValueError("tile datasets are 8-bit: generate scenes with dtype='uint8'")
    folder = Path(folder)
    for sub in ("A", "B", "label"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, int]] = []
    for scene in scenes:
        ext = ".png" if scene.bands == 3 else ".tif"
        for name, pre, post, change in _scene_tiles(scene, tile_size):
            _write_tile_image(folder / "A" / f"{name}{ext}", pre)
            _write_tile_image(folder / "B" / f"{name}{ext}", post)
            _write_tile_image(folder / "label" / f"{name}.png", change.astype(np.uint8) * 255)
            rows.append((name, int(change.any())))
    _write_labels_csv(folder / "labels.csv", rows)
    return folder


def _write_labels_csv(path: Path, rows: Sequence[tuple[str, int]]) -> None:
    """Write ``name,changed`` rows atomically (temporary file, then ``os.replace``)."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["name", "changed"])
            writer.writerows(rows)
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()
