"""The ground both dates share: farmland parcels on a rotated irregular grid, each with a cover
class (grass, meadow, crop with row stripes, dry grass, bare soil), blended with wild meadow,
textured with fractal noise at two scales, and dotted with tree canopies that cast short
shadows. Besides RGB (0..255) it yields a vegetation fraction, from which the NIR band and the
seasonal tint are later drawn.
"""

from __future__ import annotations

import math

import numpy as np

from .noise import fractal_noise

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
# Brightness factor in a cast shadow (tree shadows here, building shadows in render).
SHADOW_FACTOR = 0.55


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
    crowns = fractal_noise(rng, height, width, 6.0 / px, 3)
    stands = fractal_noise(rng, height, width, 90.0 / px, 2)
    score = crowns + 1.3 * stands
    canopy = score > 2.1
    bright = np.clip(0.78 + 0.22 * (score - 2.1), 0.7, 1.15).astype(np.float32)
    length = 4.0 / px
    shadow = _shift_mask(canopy, round(sun[0] * length), round(sun[1] * length)) & ~canopy
    return canopy, bright, shadow


def make_ground(
    rng: np.random.Generator, height: int, width: int, px: float, sun: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Textured ground: RGB float32 [3, H, W] (0..255) and vegetation fraction float32 [H, W]."""
    rgb, veg = _fields(rng, height, width, px)
    wild = np.clip((fractal_noise(rng, height, width, 140.0 / px, 3) - 0.5) / 0.6, 0.0, 1.0)
    rgb = rgb * (1.0 - wild) + _MEADOW_RGB[:, None, None] * wild
    veg = veg * (1.0 - wild) + wild
    rgb *= 1.0 + 0.07 * fractal_noise(rng, height, width, 60.0 / px, 3)
    rgb *= 1.0 + 0.06 * fractal_noise(rng, height, width, 3.0 / px, 3)
    canopy, bright, shadow = _trees(rng, height, width, px, sun)
    rgb = np.where(canopy, _TREE_RGB[:, None, None] * bright, rgb)
    rgb = np.where(shadow, rgb * np.float32(SHADOW_FACTOR), rgb)
    veg = np.where(canopy, np.float32(1.0), veg)
    return rgb.astype(np.float32), veg.astype(np.float32)
