"""Raster input/output for change detection: open, align a before/after pair, normalise, write.

The pair is aligned on the *before* raster's grid (pixel size, origin, CRS) restricted to the
intersection of both footprints: the before raster is exposed as a VRT window over that
intersection and the after raster is warped (bilinear) onto exactly the same grid as a warped
VRT, so nothing is resampled or held in memory until a window is read.

All GDAL calls run with GDAL exceptions switched on locally (`gdal_exceptions`) and restored
afterwards, so the module behaves the same inside QGIS, whose global setting it leaves alone.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
from osgeo import gdal, ogr, osr

from ..progress import CancelCheck, Cancelled, ProgressCallback, check_cancel
from .metadata import decode_metadata, metadata_strings

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

PROB_NODATA = -1.0
"""Nodata value of the probability raster (probabilities are float32 in [0, 1])."""

_EPS_PX = 1e-6  # tolerance, in pixels, when snapping the intersection to the before grid


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


def _fmt_extent(extent: Sequence[float]) -> str:
    xmin, ymin, xmax, ymax = extent
    return f"x {xmin:.6g}..{xmax:.6g}, y {ymin:.6g}..{ymax:.6g}"


# --------------------------------------------------------------------------------- alignment


def default_bands(dataset: gdal.Dataset) -> list[int]:
    """The first 3 data bands (alpha bands skipped), or all of them when there are fewer."""
    data = [
        b
        for b in range(1, dataset.RasterCount + 1)
        if dataset.GetRasterBand(b).GetColorInterpretation() != gdal.GCI_AlphaBand
    ]
    return data[:3]


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
            masked (per-band nodata, per-dataset mask, alpha band) or outside the after
            raster's footprint.
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
            before_bands = default_bands(before_ds)
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
            after_vrt = _warp_onto(after_source, out_gt, width, height, crs_wkt, after_nodata)
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
    masked or nodata): the layout of `_warp_onto`'s output, without resampling."""
    return gdal.Translate("", ds, format="VRT", bandList=[*bands, "mask"], srcWin=list(src_win))


def _warp_onto(
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


# ------------------------------------------------------------------------------ normalising


@dataclass(frozen=True)
class BandStretch:
    """Per-band linear stretch to the network's input range [0, 255].

    ``apply`` maps ``low`` -> 0 and ``high`` -> 255 and clips. 8-bit rasters use low=0,
    high=255 (values unchanged); 16-bit and float rasters use percentiles of a sample.
    """

    low: tuple[float, ...]
    high: tuple[float, ...]
    method: str = "uint8"
    percentiles: tuple[float, float] = (0.0, 100.0)

    @classmethod
    def identity(cls, band_count: int) -> BandStretch:
        """The 8-bit stretch: values used as they are."""
        return cls((0.0,) * band_count, (255.0,) * band_count, "uint8", (0.0, 100.0))

    @property
    def band_count(self) -> int:
        return len(self.low)

    def apply(self, arr: np.ndarray) -> np.ndarray:
        """``arr`` [C, h, w] (any numeric dtype) -> float32 [C, h, w] in [0, 255].

        NaN (float nodata) becomes 0; mask such pixels with the validity mask anyway.
        """
        if arr.ndim != 3 or arr.shape[0] != self.band_count:
            raise ValueError(
                f"expected [{self.band_count}, h, w] for this stretch, got {list(arr.shape)}"
            )
        out = arr.astype(np.float32)  # a copy
        if self.method != "uint8":
            low = np.asarray(self.low, dtype=np.float32)[:, None, None]
            span = np.asarray(self.high, dtype=np.float32)[:, None, None] - low
            scale = np.float32(255.0) / np.maximum(span, np.float32(1e-12))
            out -= low
            out *= scale
        np.nan_to_num(out, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
        np.clip(out, 0.0, 255.0, out=out)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly description (for output metadata)."""
        return {
            "method": self.method,
            "low": [float(v) for v in self.low],
            "high": [float(v) for v in self.high],
            "percentiles": [float(v) for v in self.percentiles],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BandStretch:
        return cls(
            tuple(float(v) for v in d["low"]),
            tuple(float(v) for v in d["high"]),
            str(d.get("method", "percentile")),
            tuple(float(v) for v in d.get("percentiles", (0.0, 100.0))),  # type: ignore[arg-type]
        )


def sample_shape(width: int, height: int, max_samples: int) -> tuple[int, int]:
    """(w, h) of a decimated read of about ``max_samples`` pixels at most (never larger)."""
    scale = min(1.0, math.sqrt(max_samples / float(width * height)))
    return max(1, min(width, round(width * scale))), max(1, min(height, round(height * scale)))


def compute_stretch(
    dataset: gdal.Dataset,
    bands: Optional[Sequence[int]] = None,
    low_pct: float = 2.0,
    high_pct: float = 98.0,
    max_samples: int = 1_000_000,
    alpha_band: Optional[int] = None,
) -> BandStretch:
    """Per-band stretch of ``dataset``: identity for 8-bit, percentiles otherwise.

    Percentiles come from one decimated read (nearest neighbour, ~``max_samples`` pixels per
    band, using overviews when the file has them), so memory stays bounded whatever the raster
    size. Masked/nodata pixels (GDAL mask band, and ``alpha_band`` == 0 when given) and NaNs
    are left out.

    Args:
        dataset: the raster (e.g. `AlignedPair.before`, or the after raster).
        bands: 1-based bands; default all bands.
        low_pct, high_pct: percentiles mapped to 0 and 255.
        max_samples: pixels per band read for the statistics.
        alpha_band: 1-based band whose zeros also mark invalid pixels.

    Raises:
        RasterInputError: a band has no valid pixel.
    """
    if not 0.0 <= low_pct < high_pct <= 100.0:
        raise ValueError(f"need 0 <= low_pct < high_pct <= 100, got {low_pct}, {high_pct}")
    bands = list(bands) if bands is not None else list(range(1, dataset.RasterCount + 1))
    with gdal_exceptions():
        types = {dataset.GetRasterBand(b).DataType for b in bands}
        if types == {gdal.GDT_Byte}:
            return BandStretch.identity(len(bands))
        bw, bh = sample_shape(dataset.RasterXSize, dataset.RasterYSize, max_samples)

        def sample(band: gdal.Band) -> np.ndarray:
            return band.ReadAsArray(
                0,
                0,
                dataset.RasterXSize,
                dataset.RasterYSize,
                buf_xsize=bw,
                buf_ysize=bh,
                resample_alg=gdal.GRIORA_NearestNeighbour,
            )

        alpha_ok = sample(dataset.GetRasterBand(alpha_band)) > 0 if alpha_band else True
        lows, highs = [], []
        for b in bands:
            band = dataset.GetRasterBand(b)
            values = sample(band).astype(np.float64)
            ok = np.isfinite(values) & alpha_ok
            if band.GetMaskFlags() != gdal.GMF_ALL_VALID:
                ok &= sample(band.GetMaskBand()) > 0
            values = values[ok]
            if values.size == 0:
                raise RasterInputError(
                    f"band {b} of {dataset.GetDescription() or 'the raster'} has no valid pixel "
                    "in the analysed area: check its nodata value and mask"
                )
            low, high = np.percentile(values, [low_pct, high_pct])
            if high <= low:
                high = low + 1.0
            lows.append(float(low))
            highs.append(float(high))
    log.debug("stretch %s..%s from a %d x %d sample", lows, highs, bw, bh)
    return BandStretch(tuple(lows), tuple(highs), "percentile", (float(low_pct), float(high_pct)))


def pair_stretches(
    pair: AlignedPair, low_pct: float = 2.0, high_pct: float = 98.0, max_samples: int = 1_000_000
) -> tuple[BandStretch, BandStretch]:
    """(before, after) stretches computed over the shared footprint only.

    The after sample is a nearest-neighbour warp of the after raster onto a decimated version
    of the shared grid, so the statistics cover the same area as the before ones without
    bilinear-warping the whole raster.
    """
    c = pair.band_count
    before = compute_stretch(pair.before, None, low_pct, high_pct, max_samples)
    with gdal_exceptions():
        if {pair.after_source.GetRasterBand(b).DataType for b in range(1, c + 1)} == {
            gdal.GDT_Byte
        }:
            return before, BandStretch.identity(c)
        bw, bh = sample_shape(pair.width, pair.height, max_samples)
        gt = pair.geotransform
        small_gt = (gt[0], gt[1] * pair.width / bw, 0.0, gt[3], 0.0, gt[5] * pair.height / bh)
        small = _warp_onto(
            pair.after_source, small_gt, bw, bh, pair.crs_wkt, pair.after_nodata, "near"
        )
    after = compute_stretch(small, list(range(1, c + 1)), low_pct, high_pct, max_samples, c + 1)
    return before, after


# ------------------------------------------------------------------------ probability output


_OUTPUT_COMPRESSION = ("COMPRESS=DEFLATE", "PREDICTOR=3", "ZLEVEL=1")


def scratch_compression() -> tuple[str, ...]:
    """GeoTIFF creation options for temporary files only kdmsi reads back: ZSTD level 1 when
    this GDAL's GeoTIFF driver has it (several times cheaper than DEFLATE), else DEFLATE 1."""
    options = gdal.GetDriverByName("GTiff").GetMetadataItem("DMD_CREATIONOPTIONLIST") or ""
    if "<Value>ZSTD</Value>" in options:
        return ("COMPRESS=ZSTD", "ZSTD_LEVEL=1")
    return ("COMPRESS=DEFLATE", "ZLEVEL=1")


class ProbabilityRasterWriter:
    """Writes a probability raster top to bottom in full-width row strips of any height.

    Rows are buffered up to one block row (block_size x width float32) so the tiled, DEFLATE
    compressed GeoTIFF is written block row by block row, each block once. NaN (or
    ``valid == False``) is written as nodata (`PROB_NODATA`).
    """

    def __init__(self, dataset: gdal.Dataset, path: str):
        self.dataset = dataset
        self.path = path
        self.width, self.height = dataset.RasterXSize, dataset.RasterYSize
        self.block_height = dataset.GetRasterBand(1).GetBlockSize()[1]
        self._buffer = np.empty((self.block_height, self.width), dtype=np.float32)
        self._buffer_y0 = 0
        self._filled = 0

    @property
    def next_row(self) -> int:
        """The row the next `write_rows` call must start at."""
        return self._buffer_y0 + self._filled

    def write_rows(self, y0: int, rows: np.ndarray, valid: Optional[np.ndarray] = None) -> None:
        """Write ``rows`` float32 [n, width] at raster rows ``[y0, y0 + n)``.

        ``y0`` must equal `next_row` (rows come in order); ``valid`` bool [n, width] optional.
        """
        if self.dataset is None:
            raise ValueError(f"{self.path} is already closed")
        if y0 != self.next_row:
            raise ValueError(
                f"rows must be written in order: expected row {self.next_row}, got {y0}"
            )
        if rows.ndim != 2 or rows.shape[1] != self.width or y0 + rows.shape[0] > self.height:
            raise ValueError(
                f"rows {list(rows.shape)} at row {y0} do not fit the {self.width} x "
                f"{self.height} raster"
            )
        start = 0
        while start < rows.shape[0]:
            n = min(rows.shape[0] - start, self.block_height - self._filled)
            part = self._buffer[self._filled : self._filled + n]
            part[...] = rows[start : start + n]
            np.copyto(part, np.float32(PROB_NODATA), where=np.isnan(part))  # no strip copies
            if valid is not None:
                part[~valid[start : start + n]] = PROB_NODATA
            self._filled += n
            start += n
            if self._filled == self.block_height:
                self._flush_buffer()

    def _flush_buffer(self) -> None:
        """Write the buffered rows and drop the written blocks from GDAL's block cache (so
        the cache is left to the reads: compressed once, never evicted half-written)."""
        if self._filled:
            with gdal_exceptions():
                band = self.dataset.GetRasterBand(1)
                band.WriteArray(self._buffer[: self._filled], 0, self._buffer_y0)
                band.FlushCache()
            self._buffer_y0 += self._filled
            self._filled = 0

    def close(self) -> None:
        """Write the buffered rows and close the file (rows never written stay nodata)."""
        if self.dataset is None:
            return
        self._flush_buffer()
        if self.next_row != self.height:
            log.warning("%s: only %d of %d rows written", self.path, self.next_row, self.height)
        with gdal_exceptions():
            self.dataset.FlushCache()
        self.dataset = None

    def __enter__(self) -> ProbabilityRasterWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


SCRATCH_BLOCK_ROWS = 64
"""Block height of a scratch probability raster (a multiple of 16, as TIFF tiles must be)."""


def create_probability_raster(
    path: PathLike,
    width: int,
    height: int,
    geotransform: Sequence[float],
    crs_wkt: str,
    metadata: Optional[dict[str, Any]] = None,
    block_size: int = 256,
    scratch: bool = False,
) -> ProbabilityRasterWriter:
    """Create the change-probability GeoTIFF and return a writer for its rows.

    Float32 in [0, 1], nodata `PROB_NODATA` (-1), tiled ``block_size`` x ``block_size`` (a
    ``scratch`` file: ``block_size`` x `SCRATCH_BLOCK_ROWS`, as the writer holds one block row
    of the raster's width: 4 instead of 16 MiB at 16k px), BigTIFF when needed. Compression:
    DEFLATE level 1 with the floating-point predictor (read everywhere; level 1 costs about
    60 % of the default level's time for 2 % more bytes), or with ``scratch`` (a temporary
    file only kdmsi reads back) ZSTD level 1 without predictor, several times cheaper again.
    ``metadata`` items are stored as GDAL metadata (non-string values as JSON strings).
    Usually ``path`` is the temporary path from
    `kdmsi.geo.atomic.atomic_output`.
    """
    options = [
        "TILED=YES",
        f"BLOCKXSIZE={block_size}",
        f"BLOCKYSIZE={min(block_size, SCRATCH_BLOCK_ROWS) if scratch else block_size}",
        *(scratch_compression() if scratch else _OUTPUT_COMPRESSION),
        "BIGTIFF=IF_SAFER",
    ]
    with gdal_exceptions():
        ds = gdal.GetDriverByName("GTiff").Create(
            str(path), width, height, 1, gdal.GDT_Float32, options=options
        )
        ds.SetGeoTransform(list(geotransform))
        ds.SetProjection(crs_wkt)
        band = ds.GetRasterBand(1)
        band.SetNoDataValue(PROB_NODATA)
        band.SetDescription("change probability")
        items = metadata_strings(metadata)
        if items:
            ds.SetMetadata(items)
    return ProbabilityRasterWriter(ds, str(path))


def read_metadata(path: PathLike) -> dict[str, Any]:
    """GDAL metadata of a raster, JSON values decoded (the inverse of what we store)."""
    with gdal_exceptions():
        ds = gdal.Open(str(path))
        items = ds.GetMetadata() or {}
    return decode_metadata(items)


def overview_levels(width: int, height: int, smallest: int = 256) -> list[int]:
    """Overview factors 2, 4, 8... until the coarsest fits in ``smallest`` pixels."""
    levels, level = [], 2
    while max(width, height) / (level // 2) > smallest:
        levels.append(level)
        level *= 2
    return levels


def finalize_probability_raster(
    path: PathLike,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCheck] = None,
) -> None:
    """Build internal AVERAGE overviews (DEFLATE) in a closed probability GeoTIFF.

    Raises:
        Cancelled: ``cancel()`` returned True while building.
    """

    def callback(fraction: float, _msg: Any, _data: Any) -> int:
        if progress is not None:
            progress(fraction, "building overviews")
        return 0 if cancel is not None and cancel() else 1

    check_cancel(cancel)
    with gdal_exceptions():
        ds = gdal.OpenEx(str(path), gdal.OF_RASTER | gdal.OF_UPDATE)
        levels = overview_levels(ds.RasterXSize, ds.RasterYSize)
        if levels:
            previous = gdal.GetThreadLocalConfigOption("COMPRESS_OVERVIEW", None)
            gdal.SetThreadLocalConfigOption("COMPRESS_OVERVIEW", "DEFLATE")
            try:
                ds.BuildOverviews("AVERAGE", levels, callback)
            except RuntimeError:
                check_cancel(cancel)
                raise
            finally:
                gdal.SetThreadLocalConfigOption("COMPRESS_OVERVIEW", previous)
        ds = None
    check_cancel(cancel)
    log.debug("overviews %s built for %s", levels, path)


__all__ = [
    "PROB_NODATA",
    "AlignedPair",
    "BandStretch",
    "Cancelled",
    "ProbabilityRasterWriter",
    "RasterInputError",
    "RasterNotFoundError",
    "align_pair",
    "compute_stretch",
    "create_probability_raster",
    "crs_label",
    "default_bands",
    "finalize_probability_raster",
    "gdal_exceptions",
    "open_raster",
    "overview_levels",
    "pair_stretches",
    "raster_extent",
    "read_metadata",
    "sample_shape",
    "srs_from_wkt",
]
