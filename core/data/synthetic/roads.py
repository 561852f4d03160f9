"""Asphalt roads: a few straight or gently sinusoidal roads crossing the scene (the first one
wider, with a dashed centre line), their anti-aliased coverage and the keep-out band that
buildings must avoid, straight segments for new access roads, and the worn asphalt colour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .noise import fractal_noise

_ASPHALT_RGB = np.array([104, 104, 107], dtype=np.float32)
_MARKING_RGB = np.array([205, 205, 200], dtype=np.float32)


@dataclass(frozen=True)
class Road:
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


def make_roads(rng: np.random.Generator, height: int, width: int, px: float) -> list[Road]:
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
        roads.append(Road(angle, offset, amp, period, phase, half_width, i == 0))
    return roads


def _road_frame(road: Road, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
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


def road_layers(
    roads: Sequence[Road], height: int, width: int, px: float, margin: float
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


def segment_coverage(
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


def asphalt_colour(
    rng: np.random.Generator, height: int, width: int, px: float, marks: np.ndarray
) -> np.ndarray:
    """Road surface colour with wear texture and markings, float32 [3, H, W]."""
    wear = 1.0 + 0.05 * fractal_noise(rng, height, width, 4.0 / px, 2)
    surface = _ASPHALT_RGB[:, None, None] * wear
    return np.where(marks, _MARKING_RGB[:, None, None], surface).astype(np.float32)
