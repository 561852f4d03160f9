"""Clean images of one date drawn from the layout: road cover over the ground, bare-soil scars
where buildings were demolished, building shadows and roofs; then a NIR band derived from
colour and vegetation, the seasonal tint of the after date, and the mapping of R, G, B, NIR to
the requested output bands (pan, pan + NIR, RGB, RGB + NIR, or more with SWIR-like blends).
"""

from __future__ import annotations

import numpy as np

from .buildings import GONE, NEW, Building
from .ground import SHADOW_FACTOR
from .layout import Layout

_SCAR_RGB = np.array([140, 122, 98], dtype=np.float32)
# Seasonal shift of fully vegetated pixels at strength 1 (R, G, B, NIR).
_SEASON_DELTA = np.array([62.0, 22.0, -8.0, -45.0], dtype=np.float32)


def render_date(
    layout: Layout, after: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Clean image of one date.

    Returns RGB float32 [3, H, W], vegetation float32 [H, W], roofs bool [H, W] and drawn
    shadows bool [H, W].
    """
    cover = layout.road_post if after else layout.road_pre
    rgb = layout.ground * (1.0 - cover) + layout.asphalt * cover
    veg = layout.veg * (1.0 - cover)
    absent = GONE if after else NEW
    present = [b for b in layout.buildings if b.state != absent]
    if after:
        for b in layout.buildings:
            if b.state == GONE:
                _paint(rgb, b, np.broadcast_to(_SCAR_RGB[:, None, None], b.colour.shape), 0.8)
    roofs = np.zeros(cover.shape, dtype=bool)
    shaded = np.zeros(cover.shape, dtype=bool)
    for b in present:
        roofs[b.rows, b.cols] |= b.roof
        shaded[b.rows, b.cols] |= b.shade
    shadow = shaded & ~roofs
    rgb = np.where(shadow, rgb * np.float32(SHADOW_FACTOR), rgb)
    for b in present:
        _paint(rgb, b, b.colour, 1.0)
    if after:
        for b in layout.buildings:
            if b.state == GONE:
                veg[b.rows, b.cols][b.roof] = 0.0
    veg[roofs] = 0.0
    return rgb.astype(np.float32), veg, roofs, shadow


def _paint(rgb: np.ndarray, building: Building, colour: np.ndarray, alpha: float) -> None:
    """Blend ``colour`` (float32 [3, h, w]) into ``rgb`` [3, H, W] over the building's roof."""
    view = rgb[:, building.rows, building.cols]
    mask = building.roof
    view[:, mask] = (1.0 - alpha) * view[:, mask] + alpha * colour[:, mask]


def spectral(rgb: np.ndarray, veg: np.ndarray) -> np.ndarray:
    """Append a NIR band (bright for vegetation) to RGB: float32 [4, H, W]."""
    nir = 0.8 * rgb[0] + 0.2 * rgb[1] + 105.0 * veg + 10.0
    return np.concatenate([rgb, nir[None]], axis=0).astype(np.float32)


def to_bands(full: np.ndarray, bands: int) -> np.ndarray:
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


def seasonal_tint(full: np.ndarray, veg: np.ndarray, strength: float) -> np.ndarray:
    """Shift vegetated pixels of R, G, B, NIR float32 [4, H, W] towards autumn colours."""
    return (full + strength * _SEASON_DELTA[:, None, None] * veg[None]).astype(np.float32)
