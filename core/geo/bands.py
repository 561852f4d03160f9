"""The bands read from a raster when none are given: red, green, blue where the raster says
which they are, otherwise the first three data bands (`kdmsi.recipe.DEFAULT_BANDS`)."""

from __future__ import annotations

import re
from typing import Optional, Sequence

from osgeo import gdal

from ..types import PathLike
from .raster import gdal_exceptions, open_raster

RGB_INTERPRETATIONS = (gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand)
RGB_NAMES = ("red", "green", "blue")


def default_bands(dataset: gdal.Dataset) -> list[int]:
    """The bands read when none are given: red, green, blue where the raster says which they
    are (colour interpretation, else band descriptions naming them), otherwise the first 3
    data bands (alpha bands skipped), or all of them when there are fewer."""
    return default_band_choice(dataset)[0]


def default_band_choice(dataset: gdal.Dataset) -> tuple[list[int], str]:
    """`default_bands` and why, in a few words (shown to the user before a run)."""
    count = dataset.RasterCount
    codes = [dataset.GetRasterBand(b).GetColorInterpretation() for b in range(1, count + 1)]
    if all(code in codes for code in RGB_INTERPRETATIONS):
        rgb = [codes.index(code) + 1 for code in RGB_INTERPRETATIONS]
        return rgb, "red, green, blue by the colour interpretation"
    descriptions = [dataset.GetRasterBand(b).GetDescription().lower() for b in range(1, count + 1)]
    named = [_band_named(descriptions, colour) for colour in RGB_NAMES]
    if all(named) and len(set(named)) == 3:
        return named, "red, green, blue by the band descriptions"
    data = [b for b in range(1, count + 1) if codes[b - 1] != gdal.GCI_AlphaBand]
    return data[:3], "the first data bands: no band says which is red, green, blue"


def describe_default_bands(path: PathLike) -> str:
    """The bands a run reads from ``path`` when none are given, and why: ``3, 2, 1 (red, green,
    blue by the colour interpretation)``. Opens the raster, reads no pixel.

    Raises:
        RasterNotFoundError, RasterInputError: as `open_raster`.
    """
    with gdal_exceptions():
        bands, reason = default_band_choice(open_raster(path, require_crs=False))
    return f"{', '.join(map(str, bands))} ({reason})"


def _band_named(descriptions: Sequence[str], colour: str) -> Optional[int]:
    """The 1-based band whose description names ``colour`` as a word, if exactly one does."""
    hits = [i + 1 for i, d in enumerate(descriptions) if re.search(rf"\b{colour}\b", d)]
    return hits[0] if len(hits) == 1 else None
