"""The scene generator: ``Scene`` (before/after images, true change mask, georeferencing) and
``make_scene``, which draws the layout, marks the changed buildings, renders both dates and
adds the nuisance changes, each stage from its own child of ``numpy.random.SeedSequence(seed)``
so that the same arguments give bit-identical scenes. WGS 84 / UTM coordinate systems are
written as WKT without GDAL; other EPSG codes go through osr.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .layout import assign_changes, make_layout
from .render import render_date, seasonal_tint, spectral, to_bands
from .sensor import blur, illumination, quantise, sensor_noise, subpixel_shift


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
    layout = make_layout(
        layout_rng, height, width, pixel_size_m, building_density, change_fraction, sun
    )
    assign_changes(
        np.random.default_rng(change_seq),
        layout.buildings,
        layout.centres,
        change_fraction * height * width,
    )

    rgb_pre, veg_pre, roofs_pre, shadow_pre = render_date(layout, after=False)
    rgb_post, veg_post, roofs_post, shadow_post = render_date(layout, after=True)
    change = (roofs_pre != roofs_post) | (shadow_pre != shadow_post)
    change |= (layout.road_post - layout.road_pre) > 0.5

    full_pre = spectral(rgb_pre, veg_pre)
    full_post = spectral(rgb_post, veg_post)
    noise_rng = np.random.default_rng(nuisance_seq)
    if nuisance:
        full_post = seasonal_tint(full_post, veg_post, noise_rng.uniform(0.3, 0.6))
    pre = blur(to_bands(full_pre, bands))
    post = blur(to_bands(full_post, bands))
    if nuisance:
        shift = noise_rng.choice([-1.0, 1.0], size=2) * noise_rng.uniform(0.2, 0.45, size=2)
        post = illumination(noise_rng, subpixel_shift(post, shift[0], shift[1]))
        pre = sensor_noise(noise_rng, pre, 2.0)
        post = sensor_noise(noise_rng, post, 2.0)

    geotransform = (
        float(origin[0]),
        float(pixel_size_m),
        0.0,
        float(origin[1]),
        0.0,
        -float(pixel_size_m),
    )
    return Scene(
        quantise(pre, dtype),
        quantise(post, dtype),
        change,
        geotransform,
        _crs_wkt(epsg),
        int(seed),
    )
