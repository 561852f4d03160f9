"""Opening rasters for change detection: errors, CRS labels, extents, GDAL exceptions.

`kdmsi.geo.align` puts a before/after pair on one grid, `kdmsi.geo.stretch` maps its values to
the networks' range, `kdmsi.geo.probability_raster` writes the result.

All GDAL calls run with GDAL exceptions switched on locally (`gdal_exceptions`) and restored
afterwards, so the module behaves the same inside QGIS, whose global setting it leaves alone.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterator

from osgeo import gdal, ogr, osr

from ..types import PathLike

log = logging.getLogger(__name__)


PROB_NODATA = -1.0
"""Nodata value of the probability raster (probabilities are float32 in [0, 1])."""


class RasterInputError(ValueError):
    """An input raster cannot be used; the message names the problem and a fix."""


class RasterNotFoundError(RasterInputError, FileNotFoundError):
    """An input raster path does not exist."""


@contextlib.contextmanager
def gdal_exceptions() -> Iterator[None]:
    """Switch GDAL/OGR/OSR exceptions on inside the block and restore the previous setting.

    Not thread-safe (the setting is process-wide in GDAL 3.6).
    """
    modules = (gdal, ogr, osr)
    previous = [m.GetUseExceptions() for m in modules]
    for m in modules:
        m.UseExceptions()
    try:
        yield
    finally:
        # GDAL keeps the modules' error handlers on a stack: undo in reverse order
        for m, was_on in reversed(list(zip(modules, previous))):
            if not was_on:
                m.DontUseExceptions()


def srs_from_wkt(wkt: str) -> osr.SpatialReference:
    """An `osr.SpatialReference` in x=easting/longitude, y=northing/latitude axis order."""
    srs = osr.SpatialReference()
    srs.ImportFromWkt(wkt)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def crs_label(wkt: str) -> str:
    """Short human-readable CRS name, e.g. ``EPSG:32633`` (or the CRS name)."""
    if not wkt:
        return "no CRS"
    srs = srs_from_wkt(wkt)
    with contextlib.suppress(RuntimeError):
        srs.AutoIdentifyEPSG()
    auth, code = srs.GetAuthorityName(None), srs.GetAuthorityCode(None)
    return f"{auth}:{code}" if auth and code else (srs.GetName() or "unnamed CRS")


# ----------------------------------------------------------------------------------- opening


def open_raster(path: PathLike, require_crs: bool = True) -> gdal.Dataset:
    """Open a raster read-only.

    Args:
        path: a file GDAL can read (``/vsi...`` paths are passed through).
        require_crs: also require a CRS and a geotransform.

    Raises:
        RasterNotFoundError: the path does not exist.
        RasterInputError: not a raster, no bands, or (``require_crs``) no CRS/georeferencing.
    """
    name = str(path)
    if not name.startswith("/vsi") and not Path(name).exists():
        raise RasterNotFoundError(f"{name} does not exist: check the path")
    with gdal_exceptions():
        try:
            ds = gdal.OpenEx(name, gdal.OF_RASTER | gdal.OF_READONLY)
        except RuntimeError as exc:
            raise RasterInputError(
                f"{name} is not a raster GDAL can read ({exc}): give a GeoTIFF or another "
                "GDAL raster format"
            ) from exc
        if ds is None:
            raise RasterInputError(f"{name} is not a raster GDAL can read")
        if ds.RasterCount == 0:
            subdatasets = ds.GetSubDatasets()
            if subdatasets:
                raise RasterInputError(
                    f"{name} holds {len(subdatasets)} subdatasets: open one of them, e.g. "
                    f"{subdatasets[0][0]}"
                )
            raise RasterInputError(f"{name} has no raster bands (is it a vector file?)")
        if require_crs:
            _require_georeferencing(ds, name)
    return ds


def _require_georeferencing(ds: gdal.Dataset, name: str) -> None:
    srs = ds.GetSpatialRef()
    if srs is None or not srs.ExportToWkt():
        raise RasterInputError(
            f"{name} has no CRS: assign one with gdal_edit.py -a_srs EPSG:xxxx or in QGIS "
            "(Layer properties > Source)"
        )
    if ds.GetGeoTransform(can_return_null=True) is None:
        raise RasterInputError(
            f"{name} has no georeferencing (geotransform): georeference it (QGIS "
            "Georeferencer, or gdal_translate -a_ullr ulx uly lrx lry)"
        )


def raster_extent(ds: gdal.Dataset) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) of the dataset's footprint in its own CRS."""
    gt = ds.GetGeoTransform()
    xs, ys = [], []
    for px, py in (
        (0, 0),
        (ds.RasterXSize, 0),
        (0, ds.RasterYSize),
        (ds.RasterXSize, ds.RasterYSize),
    ):
        xs.append(gt[0] + px * gt[1] + py * gt[2])
        ys.append(gt[3] + px * gt[4] + py * gt[5])
    return min(xs), min(ys), max(xs), max(ys)
