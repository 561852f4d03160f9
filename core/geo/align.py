"""A before/after raster pair on one grid: the *before* raster's grid (pixel size, origin, CRS)
restricted to the intersection of both footprints.

The before raster is exposed as a VRT window over that intersection and the after raster is
warped (bilinear) onto exactly the same grid as a warped VRT, so nothing is resampled or held in
memory until a window is read."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
from osgeo import gdal, osr

from ..types import PathLike
from .bands import default_band_choice, default_bands
from .raster import (
    RasterInputError,
    crs_label,
    gdal_exceptions,
    open_raster,
    raster_extent,
    srs_from_wkt,
)

log = logging.getLogger(__name__)

_EPS_PX = 1e-6  # tolerance, in pixels, when snapping the intersection to the before grid


def _check_bands(ds: gdal.Dataset, name: str, bands: Sequence[int]) -> list[int]:
    if not bands:
        raise RasterInputError("the band list is empty: give 1-based band indices, e.g. 1,2,3")
    out = []
    for b in bands:
        if isinstance(b, bool) or int(b) != b or not 1 <= int(b) <= ds.RasterCount:
            noun = "band" if ds.RasterCount == 1 else "bands"
            raise RasterInputError(
                f"band {b} does not exist in {name}, which has {ds.RasterCount} {noun}: "
                f"choose 1-based band indices between 1 and {ds.RasterCount}"
            )
        out.append(int(b))
    return out


def _band_subset_vrt(ds: gdal.Dataset, bands: Sequence[int], src_win=None) -> gdal.Dataset:
    """In-memory VRT with only ``bands`` (optionally a pixel window) that keeps the validity
    mask: nodata per band, or the per-dataset mask / alpha band as a VRT mask band."""
    kwargs: dict[str, Any] = {"format": "VRT", "bandList": list(bands)}
    if src_win is not None:
        kwargs["srcWin"] = list(src_win)
    flags = ds.GetRasterBand(bands[0]).GetMaskFlags()
    if flags & gdal.GMF_PER_DATASET and not flags & gdal.GMF_NODATA:
        kwargs["maskBand"] = "mask"
    return gdal.Translate("", ds, **kwargs)


def _nodata_values(ds: gdal.Dataset, bands: Sequence[int]) -> list[Optional[float]]:
    return [ds.GetRasterBand(b).GetNoDataValue() for b in bands]


@dataclass
class AlignedPair:
    """A before/after raster pair on one grid (the before grid over the shared footprint).

    Attributes:
        before: VRT window of the before raster, bands 1..C = the selected bands.
        after: warped VRT of the after raster on the same grid, bands 1..C = the selected
            bands (bilinear) and band C+1 = alpha (0 outside the after footprint or where the
            after raster is masked).
        after_source: the after raster's selected bands in its own grid (for statistics).
        width, height: size of the shared grid in pixels.
        geotransform: GDAL geotransform of the shared grid (before pixel size and alignment).
        crs_wkt: CRS of the shared grid (the before raster's).
        before_nodata, after_nodata: nodata per selected band (None where unset).
        bands: the selected 1-based band indices of the source rasters.
        offset: (column, row) of the shared grid's origin in the before raster.
    """

    before: gdal.Dataset
    after: gdal.Dataset
    after_source: gdal.Dataset
    width: int
    height: int
    geotransform: tuple[float, ...]
    crs_wkt: str
    before_nodata: list[Optional[float]]
    after_nodata: list[Optional[float]]
    bands: tuple[int, ...]
    offset: tuple[int, int]
    before_path: str = ""
    after_path: str = ""
    _closed: bool = field(default=False, repr=False)

    @property
    def band_count(self) -> int:
        """C, the number of bands per date."""
        return len(self.bands)

    def read_window(
        self, x: int, y: int, w: int, h: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Read pixels ``[y, y + h) x [x, x + w)`` of both dates.

        Returns:
            pre: [C, h, w] in the before raster's data type.
            post: [C, h, w] in the after raster's data type (bilinear-resampled).
            valid: bool [h, w], False where any selected band of either date is nodata or
            masked (per-band nodata, per-dataset mask, alpha band), not finite (NaN, +-inf)
            or outside the after raster's footprint.
        """
        if self._closed:
            raise ValueError("this AlignedPair is closed")
        if x < 0 or y < 0 or w < 1 or h < 1 or x + w > self.width or y + h > self.height:
            raise ValueError(
                f"window x={x} y={y} w={w} h={h} is outside the {self.width} x {self.height} grid"
            )
        c = self.band_count
        with gdal_exceptions():
            pre = self.before.ReadAsArray(x, y, w, h).reshape(c, h, w)
            valid = _mask_valid(self.before, c, x, y, w, h)
            post_alpha = self.after.ReadAsArray(x, y, w, h).reshape(c + 1, h, w)
        post = post_alpha[:c]
        valid &= post_alpha[c] > 0
        for band, nodata in zip(post, self.after_nodata):
            if nodata is not None:
                valid &= ~_equals_nodata(band, nodata)
        for image in (pre, post):  # NaN and +-inf are nodata, declared or not
            if image.dtype.kind in "fc":
                valid &= np.isfinite(image).all(axis=0)
        return pre, post, valid

    def close(self) -> None:
        """Release the datasets."""
        self.before = self.after = self.after_source = None  # type: ignore[assignment]
        self._closed = True

    def __enter__(self) -> AlignedPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _equals_nodata(arr: np.ndarray, nodata: float) -> np.ndarray:
    if math.isnan(nodata):
        return np.isnan(arr)
    return arr == nodata


def _mask_valid(ds: gdal.Dataset, count: int, x: int, y: int, w: int, h: int) -> np.ndarray:
    """bool [h, w]: True where every band's GDAL mask band is non-zero."""
    valid = np.ones((h, w), dtype=bool)
    for b in range(1, count + 1):
        band = ds.GetRasterBand(b)
        flags = band.GetMaskFlags()
        if flags == gdal.GMF_ALL_VALID:
            continue
        valid &= band.GetMaskBand().ReadAsArray(x, y, w, h) > 0
        if flags & gdal.GMF_PER_DATASET:
            break  # the same mask for every band
    return valid


def _check_north_up(ds: gdal.Dataset, name: str) -> tuple[float, ...]:
    gt = ds.GetGeoTransform()
    if gt[2] != 0 or gt[4] != 0 or gt[1] <= 0 or gt[5] >= 0:
        raise RasterInputError(
            f"{name} is not north-up (geotransform {gt}): the before raster defines the output "
            "grid, so warp it north-up first (gdalwarp, or QGIS Raster > Projections > Warp)"
        )
    return gt


def _footprint_in(ds: gdal.Dataset, target_wkt: str) -> tuple[float, float, float, float]:
    """Bounding box of ``ds``'s footprint transformed (densified edges) into ``target_wkt``."""
    src = srs_from_wkt(ds.GetProjection())
    dst = srs_from_wkt(target_wkt)
    extent = raster_extent(ds)
    if src.IsSame(dst):
        return extent
    transform = osr.CoordinateTransformation(src, dst)
    xmin, ymin, xmax, ymax = extent
    return tuple(transform.TransformBounds(xmin, ymin, xmax, ymax, 21))


def _pixel_size_in(ds: gdal.Dataset, target_wkt: str) -> float:
    """Square root of the area of ``ds``'s centre pixel, measured in ``target_wkt`` units."""
    gt = ds.GetGeoTransform()
    src, dst = srs_from_wkt(ds.GetProjection()), srs_from_wkt(target_wkt)
    cx, cy = ds.RasterXSize / 2, ds.RasterYSize / 2
    corners = [(cx, cy), (cx + 1, cy), (cx, cy + 1)]
    points = [
        (gt[0] + px * gt[1] + py * gt[2], gt[3] + px * gt[4] + py * gt[5]) for px, py in corners
    ]
    if not src.IsSame(dst):
        transform = osr.CoordinateTransformation(src, dst)
        points = [transform.TransformPoint(x, y)[:2] for x, y in points]
    (x0, y0), (x1, y1), (x2, y2) = points
    return math.sqrt(abs((x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)))


def pixel_size_ratio(before_path: PathLike, after_path: PathLike) -> float:
    """Ground pixel size of the after raster divided by the before raster's (> 1: after coarser).

    Each size is the square root of one pixel's area; the after raster's centre pixel is
    measured in the before raster's CRS, so rasters in different CRSs compare. Use
    ``max(r, 1 / r)`` for "how many times do they differ".

    Raises:
        RasterNotFoundError, RasterInputError: as `open_raster` (a CRS is required).
    """
    before_ds, after_ds = open_raster(before_path), open_raster(after_path)
    with gdal_exceptions():
        before = _pixel_size_in(before_ds, before_ds.GetProjection())
        after = _pixel_size_in(after_ds, before_ds.GetProjection())
    return after / before


def _intersection_window(
    gt: Sequence[float], size: tuple[int, int], bbox: Sequence[float]
) -> Optional[tuple[int, int, int, int]]:
    """Pixel window (col, row, w, h) of a north-up grid covering ``bbox`` within the raster,
    snapped outwards to whole pixels; None when empty."""
    xmin, ymin, xmax, ymax = bbox
    col0 = math.floor((xmin - gt[0]) / gt[1] + _EPS_PX)
    col1 = math.ceil((xmax - gt[0]) / gt[1] - _EPS_PX)
    row0 = math.floor((ymax - gt[3]) / gt[5] + _EPS_PX)
    row1 = math.ceil((ymin - gt[3]) / gt[5] - _EPS_PX)
    col0, row0 = max(col0, 0), max(row0, 0)
    col1, row1 = min(col1, size[0]), min(row1, size[1])
    if col1 <= col0 or row1 <= row0:
        return None
    return col0, row0, col1 - col0, row1 - row0


def _restrict_window(
    window: tuple[int, int, int, int],
    gt: Sequence[float],
    bounds: Sequence[float],
    before_name: str,
    after_name: str,
    crs_wkt: str,
) -> tuple[int, int, int, int]:
    """The part of the overlap ``window`` (col, row, w, h) inside ``bounds``."""
    xmin, ymin, xmax, ymax = (float(v) for v in bounds)
    if not (xmin < xmax and ymin < ymax):
        raise RasterInputError(f"the area to analyse {_fmt_extent(bounds)} is empty")
    col, row, width, height = window
    cut = _intersection_window(gt, (col + width, row + height), bounds)
    if cut is not None:
        c0, r0 = max(cut[0], col), max(cut[1], row)
        c1, r1 = cut[0] + cut[2], cut[1] + cut[3]
        if c1 > c0 and r1 > r0:
            return c0, r0, c1 - c0, r1 - r0
    overlap = (
        gt[0] + col * gt[1],
        gt[3] + (row + height) * gt[5],
        gt[0] + (col + width) * gt[1],
        gt[3] + row * gt[5],
    )
    raise RasterInputError(
        f"the area to analyse {_fmt_extent(bounds)} does not meet the overlap of {before_name} "
        f"and {after_name}, {_fmt_extent(overlap)} ({crs_label(crs_wkt)}): choose an area "
        "inside both rasters, given in the before raster's CRS"
    )


def align_pair(
    before_path: PathLike,
    after_path: PathLike,
    bands: Optional[Sequence[int]] = None,
    bounds: Optional[Sequence[float]] = None,
) -> AlignedPair:
    """Put the after raster on the before raster's grid over the shared footprint.

    Args:
        before_path: the reference raster; its pixel size, alignment and CRS define the grid.
            It must be north-up.
        after_path: the raster warped (bilinear) onto that grid.
        bands: 1-based band indices read from both rasters; default the first 3 non-alpha
            bands of each (all of them when there are fewer than 3).
        bounds: optional area to analyse, (xmin, ymin, xmax, ymax) in the before raster's
            CRS; the grid is cut to it (snapped outwards to whole pixels).

    Raises:
        RasterNotFoundError, RasterInputError: unreadable raster, no CRS, band index out of
        range, different band counts, footprints that do not overlap, or ``bounds`` outside
        the overlap.
    """
    before_name, after_name = str(before_path), str(after_path)
    before_ds = open_raster(before_path)
    after_ds = open_raster(after_path)
    with gdal_exceptions():
        if bands is None:
            before_bands, reason = default_band_choice(before_ds)
            after_bands = default_bands(after_ds)
            for name, chosen in ((before_name, before_bands), (after_name, after_bands)):
                if not chosen:
                    raise RasterInputError(f"{name} has only alpha bands: give --bands")
            if len(before_bands) != len(after_bands):
                raise RasterInputError(
                    f"{before_name} gives {len(before_bands)} band(s) and {after_name} gives "
                    f"{len(after_bands)}: both dates need the same bands; choose them with "
                    "--bands (e.g. --bands 1)"
                )
            log.info("reading bands %s: %s", ", ".join(map(str, before_bands)), reason)
        else:
            before_bands = _check_bands(before_ds, before_name, bands)
            after_bands = _check_bands(after_ds, after_name, bands)
        gt = _check_north_up(before_ds, before_name)
        crs_wkt = before_ds.GetProjection()
        before_extent = raster_extent(before_ds)
        after_extent = _footprint_in(after_ds, crs_wkt)
        window = _intersection_window(
            gt, (before_ds.RasterXSize, before_ds.RasterYSize), after_extent
        )
        if window is None:
            raise RasterInputError(
                f"{before_name} and {after_name} do not overlap: {before_name} covers "
                f"{_fmt_extent(before_extent)} ({crs_label(crs_wkt)}); {after_name} covers "
                f"{_fmt_extent(raster_extent(after_ds))} ({crs_label(after_ds.GetProjection())}"
                f"), i.e. {_fmt_extent(after_extent)} in {crs_label(crs_wkt)}. Check that both "
                "show the same area and that their CRSs are right"
            )
        if bounds is not None:
            window = _restrict_window(window, gt, bounds, before_name, after_name, crs_wkt)
        col, row, width, height = window
        out_gt = (gt[0] + col * gt[1], gt[1], 0.0, gt[3] + row * gt[5], 0.0, gt[5])
        before_vrt = _band_subset_vrt(before_ds, before_bands, (col, row, width, height))
        after_source = _band_subset_vrt(after_ds, after_bands)
        after_nodata = _nodata_values(after_ds, after_bands)
        origin = _same_grid_origin(after_ds, out_gt, width, height, crs_wkt)
        if origin is not None:  # nothing to resample: read the after pixels as they are
            after_vrt = _window_with_mask(after_ds, after_bands, (*origin, width, height))
        else:
            after_vrt = warp_onto(after_source, out_gt, width, height, crs_wkt, after_nodata)
    log.info(
        "aligned %s and %s on a %d x %d grid (%s, pixel %g)",
        before_name,
        after_name,
        width,
        height,
        crs_label(crs_wkt),
        gt[1],
    )
    return AlignedPair(
        before=before_vrt,
        after=after_vrt,
        after_source=after_source,
        width=width,
        height=height,
        geotransform=out_gt,
        crs_wkt=crs_wkt,
        before_nodata=_nodata_values(before_ds, before_bands),
        after_nodata=after_nodata,
        bands=tuple(before_bands),
        offset=(col, row),
        before_path=before_name,
        after_path=after_name,
    )


def _same_grid_origin(
    ds: gdal.Dataset, gt: Sequence[float], width: int, height: int, crs_wkt: str
) -> Optional[tuple[int, int]]:
    """(col, row) of the grid ``gt`` (``width`` x ``height``) in ``ds`` when ``ds``'s pixels
    are exactly that grid's (same CRS and pixel size, whole-pixel offset, inside ``ds``);
    else None. The bilinear warp onto such a grid would return the pixels unchanged."""
    own = ds.GetGeoTransform()
    if own[2] != 0 or own[4] != 0:
        return None
    if any(abs(own[i] - gt[i]) > 1e-9 * abs(gt[i]) for i in (1, 5)):
        return None
    col, row = (gt[0] - own[0]) / own[1], (gt[3] - own[3]) / own[5]
    if abs(col - round(col)) > _EPS_PX or abs(row - round(row)) > _EPS_PX:
        return None
    col, row = round(col), round(row)
    if col < 0 or row < 0 or col + width > ds.RasterXSize or row + height > ds.RasterYSize:
        return None
    if not srs_from_wkt(ds.GetProjection()).IsSame(srs_from_wkt(crs_wkt)):
        return None
    return col, row


def _window_with_mask(
    ds: gdal.Dataset, bands: Sequence[int], src_win: Sequence[int]
) -> gdal.Dataset:
    """VRT window of ``bands`` plus, as the last band, the GDAL mask of the first one (0 where
    masked or nodata): the layout of `warp_onto`'s output, without resampling."""
    return gdal.Translate("", ds, format="VRT", bandList=[*bands, "mask"], srcWin=list(src_win))


def warp_onto(
    src: gdal.Dataset,
    gt: Sequence[float],
    width: int,
    height: int,
    crs_wkt: str,
    nodata: Sequence[Optional[float]],
    resample: str = "bilinear",
) -> gdal.Dataset:
    """Warped VRT of ``src`` on the grid (gt, width, height, crs), all bands + an alpha band.

    Per-band nodata is kept as the output nodata so per-band validity survives the warp (the
    alpha band only marks pixels where every band is invalid or outside the footprint).
    """
    bounds = (gt[0], gt[3] + height * gt[5], gt[0] + width * gt[1], gt[3])
    kwargs: dict[str, Any] = {}
    if any(v is not None for v in nodata):
        kwargs["dstNodata"] = " ".join("None" if v is None else repr(float(v)) for v in nodata)
    return gdal.Warp(
        "",
        src,
        format="VRT",
        dstSRS=crs_wkt,
        outputBounds=bounds,
        width=width,
        height=height,
        resampleAlg=resample,
        dstAlpha=True,
        warpOptions=["UNIFIED_SRC_NODATA=NO"],
        **kwargs,
    )


def _fmt_extent(extent: Sequence[float]) -> str:
    xmin, ymin, xmax, ymax = extent
    return f"x {xmin:.6g}..{xmax:.6g}, y {ymin:.6g}..{ymax:.6g}"
