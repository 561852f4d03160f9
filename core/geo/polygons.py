"""Change polygons from a probability raster, with true areas and probability statistics.

Pipeline of `polygonize_changes`:

1. threshold the probability raster strip by strip into a uint8 change mask (1 = change,
   0 = no change *or* invalid: nodata and masked pixels never become change);
2. `gdal.Polygonize` the mask band (it streams over the band; 8- or 4-connected; holes kept);
3. rasterize each polygon's label back onto the grid and gather, strip by strip, the mean and
   maximum probability per label (exact: polygon edges follow pixel edges);
4. area on the ellipsoid (Lambert azimuthal equal-area projection centred on the raster, which
   preserves area everywhere, so also right for geographic CRSs), optional simplification,
   minimum-area filter, ids 1..n.

Memory: for a raster path the mask and label rasters are temporary tiled GeoTIFFs on disk,
the polygons go to a temporary GeoPackage, and every pass reads ``strip_rows`` full-width rows
at a time, so raster memory is bounded by about ``strip_rows * width * 9`` bytes whatever the
height. `write_change_polygons` (what `kdmsi detect` uses) streams the polygons from that
GeoPackage to the output one by one, so only three numbers per polygon stay in memory;
`polygonize_changes` returns them as a list. For a numpy array input everything is in memory
(the array already is): fine for moderate sizes only.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
from osgeo import gdal, ogr

from ..progress import (
    CancelCheck,
    ProgressCallback,
    check_cancel,
    interrupts_deferred,
    report,
    stop_signal,
)
from ..types import PathLike
from .probability_raster import scratch_compression
from .raster import gdal_exceptions, open_raster, raster_extent, srs_from_wkt
from .vector import AreaCalculator, ChangePolygon, vector_driver, write_features

log = logging.getLogger(__name__)


def _row_strips(height: int, strip_rows: int) -> Iterator[tuple[int, int]]:
    for y in range(0, height, strip_rows):
        yield y, min(strip_rows, height - y)


def _gdal_callback(
    cancel: Optional[CancelCheck],
    progress: Optional[ProgressCallback],
    lo: float,
    hi: float,
    message: str,
):
    def callback(fraction: float, _msg: Any, _data: Any) -> int:
        report(progress, lo + (hi - lo) * fraction, message)
        return 0 if stop_signal() or (cancel is not None and cancel()) else 1

    return callback


def _scratch_dataset(
    workdir: Optional[str], name: str, like: gdal.Dataset, dtype: int
) -> gdal.Dataset:
    """Empty single-band raster on ``like``'s grid: MEM, or a tiled GeoTIFF in ``workdir``."""
    if workdir is None:
        ds = gdal.GetDriverByName("MEM").Create("", like.RasterXSize, like.RasterYSize, 1, dtype)
    else:
        ds = gdal.GetDriverByName("GTiff").Create(
            str(Path(workdir) / name),
            like.RasterXSize,
            like.RasterYSize,
            1,
            dtype,
            options=["TILED=YES", *scratch_compression(), "BIGTIFF=IF_SAFER", "SPARSE_OK=TRUE"],
        )
    ds.SetGeoTransform(like.GetGeoTransform())
    ds.SetProjection(like.GetProjection())
    return ds


def _array_dataset(
    prob: np.ndarray, geotransform: Optional[Sequence[float]], crs_wkt: Optional[str]
) -> gdal.Dataset:
    if prob.ndim != 2:
        raise ValueError(f"probability array must be [H, W], got shape {list(prob.shape)}")
    if geotransform is None or crs_wkt is None:
        raise ValueError("a probability array needs geotransform= and crs_wkt=")
    ds = gdal.GetDriverByName("MEM").Create("", prob.shape[1], prob.shape[0], 1, gdal.GDT_Float32)
    ds.SetGeoTransform(list(geotransform))
    ds.SetProjection(crs_wkt)
    ds.GetRasterBand(1).WriteArray(prob.astype(np.float32, copy=False))
    return ds


def _threshold(
    prob_ds: gdal.Dataset,
    mask_ds: gdal.Dataset,
    threshold: float,
    valid: Optional[np.ndarray],
    strip_rows: int,
    cancel: Optional[CancelCheck],
    progress: Optional[ProgressCallback],
) -> int:
    """Write the uint8 change mask (prob >= threshold on valid pixels); return its pixel count."""
    band = prob_ds.GetRasterBand(1)
    has_mask = band.GetMaskFlags() != gdal.GMF_ALL_VALID
    out = mask_ds.GetRasterBand(1)
    width, height = prob_ds.RasterXSize, prob_ds.RasterYSize
    changed = 0
    for y, n in _row_strips(height, strip_rows):
        check_cancel(cancel)
        p = band.ReadAsArray(0, y, width, n)
        change = np.isfinite(p) & (p >= threshold)
        if has_mask:
            change &= band.GetMaskBand().ReadAsArray(0, y, width, n) > 0
        if valid is not None:
            change &= valid[y : y + n]
        out.WriteArray(change.astype(np.uint8), 0, y)
        changed += int(change.sum())
        report(progress, 0.3 * (y + n) / height, "thresholding")
    return changed


def _polygonize(
    mask_ds: gdal.Dataset,
    crs_wkt: str,
    workdir: Optional[str],
    connectedness: int,
    cancel: Optional[CancelCheck],
    progress: Optional[ProgressCallback],
) -> tuple[ogr.DataSource, ogr.Layer]:
    """Polygons of the mask's 1-pixels in a layer with a ``label`` field 1..n: in memory, or
    (with ``workdir``) in a GeoPackage there, written in one transaction."""
    if workdir is None:
        source = ogr.GetDriverByName("Memory").CreateDataSource("changes")
        options: list[str] = []
    else:
        source = ogr.GetDriverByName("GPKG").CreateDataSource(str(Path(workdir) / "poly.gpkg"))
        options = ["SPATIAL_INDEX=NO"]
    layer = source.CreateLayer("changes", srs_from_wkt(crs_wkt), ogr.wkbPolygon, options)
    layer.CreateField(ogr.FieldDefn("label", ogr.OFTInteger64))
    band = mask_ds.GetRasterBand(1)
    if workdir is not None:
        source.StartTransaction()  # one transaction: thousands of inserts per second
    gdal.Polygonize(
        band,
        band,
        layer,
        0,
        [f"8CONNECTED={connectedness}"] if connectedness == 8 else [],
        callback=_gdal_callback(cancel, progress, 0.3, 0.6, "polygonizing"),
    )
    if workdir is not None:  # GeoPackage fids are 1..n in insertion order
        source.CommitTransaction()
        source.ExecuteSQL("UPDATE changes SET label = fid")
        return source, source.GetLayer(0)
    fids = [feature.GetFID() for feature in layer]
    for label, fid in enumerate(fids, start=1):
        feature = layer.GetFeature(fid)
        feature.SetField("label", label)
        layer.SetFeature(feature)
    return source, layer


def _label_statistics(
    prob_ds: gdal.Dataset,
    label_ds: gdal.Dataset,
    count: int,
    strip_rows: int,
    cancel: Optional[CancelCheck],
    progress: Optional[ProgressCallback],
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and max probability per label 1..count (index 0 unused), float64 [count + 1]."""
    sums = np.zeros(count + 1, dtype=np.float64)
    pixels = np.zeros(count + 1, dtype=np.int64)
    maxima = np.full(count + 1, -np.inf, dtype=np.float64)
    width, height = prob_ds.RasterXSize, prob_ds.RasterYSize
    prob_band, label_band = prob_ds.GetRasterBand(1), label_ds.GetRasterBand(1)
    for y, n in _row_strips(height, strip_rows):
        check_cancel(cancel)
        labels = label_band.ReadAsArray(0, y, width, n).ravel()
        inside = labels > 0
        if not inside.any():
            continue
        labels = labels[inside].astype(np.int64)
        p = prob_band.ReadAsArray(0, y, width, n).ravel()[inside].astype(np.float64)
        sums += np.bincount(labels, weights=p, minlength=count + 1)
        pixels += np.bincount(labels, minlength=count + 1)
        np.maximum.at(maxima, labels, p)
        report(progress, 0.7 + 0.2 * (y + n) / height, "polygon statistics")
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / pixels
    return means, maxima


def polygonize_changes(
    prob: Union[PathLike, np.ndarray],
    threshold: float = 0.5,
    valid: Optional[np.ndarray] = None,
    geotransform: Optional[Sequence[float]] = None,
    crs_wkt: Optional[str] = None,
    min_area_m2: float = 0.0,
    simplify_m: float = 0.0,
    connectedness: int = 8,
    strip_rows: int = 512,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCheck] = None,
) -> list[ChangePolygon]:
    """Polygons of the pixels whose change probability is >= ``threshold``.

    Args:
        prob: probability raster path (float, nodata/mask marks invalid pixels, georeferenced)
            or a float array [H, W] (then ``geotransform`` and ``crs_wkt`` are required; NaN
            is invalid).
        threshold: pixels with ``prob >= threshold`` are change.
        valid: optional bool [H, W]; False pixels are never change.
        geotransform, crs_wkt: grid of an array input (ignored for a path: read from the file).
        min_area_m2: drop polygons smaller than this (true area, square metres).
        simplify_m: topology-preserving simplification tolerance in metres (0: exact pixel
            edges). Statistics always use the exact pixels.
        connectedness: 8 (diagonal neighbours join) or 4.
        strip_rows: rows per strip in the raster passes (memory, see the module docstring).
        progress, cancel: progress report and cancel check (raises `Cancelled`).

    Returns:
        Polygons (holes kept) with ids 1..n, ``area_m2``, ``mean_prob``, ``max_prob``.
    """
    if connectedness not in (4, 8):
        raise ValueError(f"connectedness must be 4 or 8, got {connectedness}")
    with interrupts_deferred(), contextlib.ExitStack() as stack, gdal_exceptions():
        if isinstance(prob, np.ndarray):
            prob_ds = _array_dataset(prob, geotransform, crs_wkt)
            workdir = None
        else:
            prob_ds = open_raster(prob)
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="kdmsi-poly-"))
        if valid is not None and valid.shape != (prob_ds.RasterYSize, prob_ds.RasterXSize):
            raise ValueError(
                f"valid mask {list(valid.shape)} does not match the probability raster "
                f"[{prob_ds.RasterYSize}, {prob_ds.RasterXSize}]"
            )
        crs = prob_ds.GetProjection()
        try:
            return list(
                _iter_polygons(
                    prob_ds,
                    crs,
                    workdir,
                    threshold,
                    valid,
                    min_area_m2,
                    simplify_m,
                    connectedness,
                    strip_rows,
                    progress,
                    cancel,
                )
            )
        except RuntimeError:
            check_cancel(cancel)  # a GDAL callback stopped the work: report it as Cancelled
            raise


def write_change_polygons(
    prob: PathLike,
    out: PathLike,
    threshold: float = 0.5,
    min_area_m2: float = 0.0,
    simplify_m: float = 0.0,
    connectedness: int = 8,
    strip_rows: int = 512,
    layer: Optional[str] = None,
    overwrite: bool = False,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCheck] = None,
) -> int:
    """Polygonize a probability raster file straight into a vector file; return the count.

    The same polygons as `polygonize_changes` (arguments alike), written as `write_vector`
    writes them (Polygon layer in the raster's CRS), but streamed: no list of polygons is
    ever held in memory, so memory does not grow with the number of changes.

    Raises:
        VectorOutputError, FileExistsError, OutputNotWritableError, Cancelled.
    """
    if connectedness not in (4, 8):
        raise ValueError(f"connectedness must be 4 or 8, got {connectedness}")
    vector_driver(out)
    with interrupts_deferred(), contextlib.ExitStack() as stack, gdal_exceptions():
        prob_ds = open_raster(prob)
        workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="kdmsi-poly-"))
        crs = prob_ds.GetProjection()
        polygons = _iter_polygons(
            prob_ds,
            crs,
            workdir,
            threshold,
            None,
            min_area_m2,
            simplify_m,
            connectedness,
            strip_rows,
            progress,
            cancel,
        )
        try:
            return write_features(polygons, out, crs, False, overwrite, layer)
        except RuntimeError:
            check_cancel(cancel)
            raise


def _iter_polygons(
    prob_ds: gdal.Dataset,
    crs_wkt: str,
    workdir: Optional[str],
    threshold: float,
    valid: Optional[np.ndarray],
    min_area_m2: float,
    simplify_m: float,
    connectedness: int,
    strip_rows: int,
    progress: Optional[ProgressCallback],
    cancel: Optional[CancelCheck],
) -> Iterator[ChangePolygon]:
    """The change polygons of ``prob_ds``, one by one (see `polygonize_changes`)."""
    mask_ds = _scratch_dataset(workdir, "mask.tif", prob_ds, gdal.GDT_Byte)
    changed = _threshold(prob_ds, mask_ds, threshold, valid, strip_rows, cancel, progress)
    if changed == 0:
        report(progress, 1.0, "no change found")
        return
    source, layer = _polygonize(mask_ds, crs_wkt, workdir, connectedness, cancel, progress)
    mask_ds = None
    count = layer.GetFeatureCount()
    label_ds = _scratch_dataset(workdir, "labels.tif", prob_ds, gdal.GDT_UInt32)
    gdal.RasterizeLayer(
        label_ds,
        [1],
        layer,
        # A fixed chunk height bounds rasterize's buffer; by default GDAL sizes it from its
        # block cache, which made the peak memory of a 16k^2 run follow GDAL_CACHEMAX.
        options=["ATTRIBUTE=label", f"CHUNKYSIZE={strip_rows}"],
        callback=_gdal_callback(cancel, progress, 0.6, 0.7, "labelling"),
    )
    means, maxima = _label_statistics(prob_ds, label_ds, count, strip_rows, cancel, progress)
    label_ds = None
    xmin, ymin, xmax, ymax = raster_extent(prob_ds)
    areas = AreaCalculator(crs_wkt, ((xmin + xmax) / 2, (ymin + ymax) / 2))
    kept = 0
    layer.ResetReading()
    for index, feature in enumerate(layer, start=1):
        if index % 256 == 0:
            check_cancel(cancel)
            report(progress, 0.9 + 0.1 * index / count, "polygons")
        label = feature.GetFieldAsInteger64(0)  # the "label" field
        geom = areas.simplify(feature.GetGeometryRef(), simplify_m)
        area = areas.area_m2(geom)
        if area < min_area_m2 or geom.IsEmpty():
            continue
        kept += 1
        yield ChangePolygon(
            id=kept,
            area_m2=float(area),
            mean_prob=float(means[label]),
            max_prob=float(maxima[label]),
            wkb=bytes(geom.ExportToIsoWkb()),
        )
    check_cancel(cancel)
    del layer, source  # the layer lives as long as its data source
    log.info("%d change polygons (%d before filtering)", kept, count)
    report(progress, 1.0, f"{kept} change polygons")
