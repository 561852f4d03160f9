"""What acquisition adds to a clean rendered date: the sensor's blur, the sub-pixel
misregistration (bilinear shift) and global illumination change of the after date, Gaussian
sensor noise, and quantisation to uint8 (0..255) or uint16 (0..4095). All act on float32
[C, H, W] images on the 0..255 scale; only illumination and noise draw random numbers.
"""

from __future__ import annotations

import numpy as np

_UINT16_MAX = 4095


def blur(img: np.ndarray) -> np.ndarray:
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


def subpixel_shift(img: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """Bilinear resampling of float32 [C, H, W] so that content moves by (dy, dx) pixels."""
    return _shift_axis(_shift_axis(img, dy, axis=1), dx, axis=2)


def illumination(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Global gain/offset change with a slight per-band white balance, float32 [C, H, W]."""
    gain = 1.0 + rng.choice([-1.0, 1.0]) * rng.uniform(0.06, 0.18)
    gains = (gain * rng.uniform(0.96, 1.04, size=img.shape[0])).astype(np.float32)
    offsets = (rng.uniform(-10.0, 10.0) + rng.uniform(-3.0, 3.0, size=img.shape[0])).astype(
        np.float32
    )
    return img * gains[:, None, None] + offsets[:, None, None]


def sensor_noise(rng: np.random.Generator, img: np.ndarray, sigma: float) -> np.ndarray:
    """Add Gaussian noise of ``sigma`` DN (0..255 scale) to float32 [C, H, W]."""
    return img + np.float32(sigma) * rng.standard_normal(img.shape, dtype=np.float32)


def quantise(img: np.ndarray, dtype: str) -> np.ndarray:
    """float32 [C, H, W] on the 0..255 scale to uint8 (0..255) or uint16 (0..4095)."""
    if dtype == "uint8":
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)
    scaled = img.astype(np.float64) * (_UINT16_MAX / 255.0)
    return np.clip(np.rint(scaled), 0, _UINT16_MAX).astype(np.uint16)
