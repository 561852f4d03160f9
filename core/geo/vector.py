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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
from osgeo import gdal, ogr, osr

from ..progress import CancelCheck, Cancelled, ProgressCallback, check_cancel, report
from .atomic import atomic_output
from .raster import gdal_exceptions, open_raster, raster_extent, scratch_compression, srs_from_wkt

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

VECTOR_DRIVERS: dict[str, str] = {
    ".gpkg": "GPKG",
    ".shp": "ESRI Shapefile",
    ".geojson": "GeoJSON",
    ".json": "GeoJSON",
    ".fgb": "FlatGeobuf",
}
"""Output extension -> OGR driver used by `write_vector`."""

SCHEMA_PROPERTIES = {"id": "int", "area_m2": "float", "mean_prob": "float", "max_prob": "float"}
"""The output's attributes as fiona reports them."""


class VectorOutputError(ValueError):
    """The vector output cannot be written as asked (e.g. unknown extension)."""


@dataclass(frozen=True)
class ChangePolygon:
    """One changed region.

    Attributes:
        id: 1..n in output order (top to bottom as polygonized).
        area_m2: area on the ellipsoid in square metres.
        mean_prob, max_prob: probability statistics over the polygon's pixels.
        wkb: geometry (Polygon, holes kept) as ISO WKB in the raster's CRS.
    """

    id: int
    area_m2: float
    mean_prob: float
    max_prob: float
    wkb: bytes

    def ogr_geometry(self) -> ogr.Geometry:
        return ogr.CreateGeometryFromWkb(self.wkb)

    @property
    def geometry_type(self) -> str:
        """OGR geometry name, e.g. ``POLYGON``."""
        return self.ogr_geometry().GetGeometryName()

    def properties(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "area_m2": self.area_m2,
            "mean_prob": self.mean_prob,
            "max_prob": self.max_prob,
        }


# ----------------------------------------------------------------------------------- areas


class AreaCalculator:
    """True (ellipsoidal) areas, and metre-based simplification, for geometries in one CRS.

    Geometries are projected to a Lambert azimuthal equal-area projection on the CRS's own
    ellipsoid, centred at ``center`` (x, y in the CRS). Being equal-area, it gives the
    ellipsoidal area wherever the polygon lies; the centre only keeps shapes undistorted.
    A CRS without a geographic base (local/engineering) falls back to planar area times the
    squared linear unit.
    """

    def __init__(self, crs_wkt: str, center: tuple[float, float]):
        self.srs = srs_from_wkt(crs_wkt)
        self.geographic = bool(self.srs.IsGeographic())
        self.to_laea: Optional[osr.CoordinateTransformation] = None
        self.from_laea: Optional[osr.CoordinateTransformation] = None
        if self.srs.IsGeographic() or self.srs.IsProjected():
            geog = self.srs.CloneGeogCS()
            geog.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
            lon, lat = osr.CoordinateTransformation(self.srs, geog).TransformPoint(*center)[:2]
            laea = osr.SpatialReference()
            laea.CopyGeogCSFrom(self.srs)
            laea.SetLAEA(lat, lon, 0.0, 0.0)
            laea.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
            self.to_laea = osr.CoordinateTransformation(self.srs, laea)
            self.from_laea = osr.CoordinateTransformation(laea, self.srs)
        else:
            log.warning("CRS has no geographic base: areas are planar (CRS units squared)")
        self.unit_m = self.srs.GetLinearUnits() if not self.geographic else 1.0

    def _projected(self, geom: ogr.Geometry) -> ogr.Geometry:
        out = geom.Clone()
        if self.geographic:
            out.Segmentize(0.01)  # degree: keep long edges along parallels curved
        out.Transform(self.to_laea)
        return out

    def area_m2(self, geom: ogr.Geometry) -> float:
        """Area of ``geom`` (in the CRS) in square metres."""
        if self.to_laea is None:
            return geom.GetArea() * self.unit_m**2
        return self._projected(geom).GetArea()

    def simplify(self, geom: ogr.Geometry, tolerance_m: float) -> ogr.Geometry:
        """Topology-preserving simplification with a tolerance in metres."""
        if tolerance_m <= 0:
            return geom
        if not self.geographic or self.to_laea is None:
            return geom.SimplifyPreserveTopology(tolerance_m / self.unit_m)
        simple = self._projected(geom).SimplifyPreserveTopology(tolerance_m)
        simple.Transform(self.from_laea)
        return simple


# ---------------------------------------------------------------------------- polygonizing


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
        return 0 if cancel is not None and cancel() else 1

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
    with contextlib.ExitStack() as stack, gdal_exceptions():
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
    with contextlib.ExitStack() as stack, gdal_exceptions():
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
            return _write_features(polygons, out, crs, False, overwrite, layer)
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


# ---------------------------------------------------------------------------------- writing


def vector_driver(path: PathLike) -> str:
    """OGR driver for ``path``'s extension.

    Raises:
        VectorOutputError: unknown extension.
    """
    ext = Path(path).suffix.lower()
    if ext not in VECTOR_DRIVERS:
        known = ", ".join(VECTOR_DRIVERS)
        raise VectorOutputError(
            f"cannot tell the vector format of {path} from its extension {ext or '(none)'!r}: "
            f"use one of {known} (GeoPackage .gpkg recommended)"
        )
    return VECTOR_DRIVERS[ext]


def write_vector(
    features: Sequence[ChangePolygon],
    path: PathLike,
    crs_wkt: str,
    overwrite: bool = False,
    layer: Optional[str] = None,
) -> Path:
    """Write change polygons to a vector file (driver from the extension), atomically.

    Schema: ``id`` int, ``area_m2``/``mean_prob``/``max_prob`` float, geometry Polygon (or
    MultiPolygon when any feature is one; polygons are then promoted). The CRS is written
    from ``crs_wkt``. The file appears only when complete (`atomic_output`).

    Args:
        features: from `polygonize_changes`.
        path: ``.gpkg`` (GeoPackage), ``.shp``, ``.geojson``/``.json`` or ``.fgb``.
        crs_wkt: CRS of the geometries.
        overwrite: replace an existing file.
        layer: GeoPackage layer name (default: the file's stem).

    Raises:
        VectorOutputError: unknown extension. FileExistsError / OutputNotWritableError: see
        `kdmsi.geo.atomic.atomic_output`.
    """
    target = Path(path)
    multi = "MULTIPOLYGON" in {f.geometry_type for f in features}
    count = _write_features(features, target, crs_wkt, multi, overwrite, layer)
    log.info("wrote %d polygons to %s", count, target)
    return target


def _write_features(
    features: Iterable[ChangePolygon],
    target: Path,
    crs_wkt: str,
    multi: bool,
    overwrite: bool,
    layer: Optional[str],
) -> int:
    """Write ``features`` (consumed once) atomically to ``target`` with OGR; return how many.

    Fields: ``id`` Integer64, ``area_m2``, ``mean_prob``, ``max_prob`` Real; geometry from
    each feature's WKB (promoted to MultiPolygon when ``multi``). One transaction where the
    driver has them (GeoPackage).
    """
    target = Path(target)
    driver = vector_driver(target)
    with atomic_output(target, overwrite) as temp, gdal_exceptions():
        source = ogr.GetDriverByName(driver).CreateDataSource(str(temp))
        sink = source.CreateLayer(
            layer or target.stem,  # not the temporary file's name
            srs_from_wkt(crs_wkt),
            ogr.wkbMultiPolygon if multi else ogr.wkbPolygon,
        )
        for name, kind in _FIELD_TYPES.items():
            sink.CreateField(ogr.FieldDefn(name, kind))
        transaction = bool(source.TestCapability(ogr.ODsCTransactions))
        if transaction:
            source.StartTransaction()
        count = 0
        for feature in _ogr_features(features, sink.GetLayerDefn(), multi):
            sink.CreateFeature(feature)
            count += 1
        if transaction:
            source.CommitTransaction()
        sink = source = None  # closes and flushes the file
    return count


_FIELD_TYPES = {
    "id": ogr.OFTInteger64,
    "area_m2": ogr.OFTReal,
    "mean_prob": ogr.OFTReal,
    "max_prob": ogr.OFTReal,
}


def _ogr_features(
    features: Iterable[ChangePolygon], defn: ogr.FeatureDefn, multi: bool
) -> Iterator[ogr.Feature]:
    index = [defn.GetFieldIndex(name) for name in _FIELD_TYPES]
    for feature in features:
        out = ogr.Feature(defn)
        out.SetFieldInteger64(index[0], feature.id)
        out.SetField(index[1], feature.area_m2)
        out.SetField(index[2], feature.mean_prob)
        out.SetField(index[3], feature.max_prob)
        geom = ogr.CreateGeometryFromWkb(feature.wkb)
        if multi and geom.GetGeometryType() != ogr.wkbMultiPolygon:
            geom = ogr.ForceToMultiPolygon(geom)
        out.SetGeometryDirectly(geom)
        yield out


__all__ = [
    "VECTOR_DRIVERS",
    "AreaCalculator",
    "Cancelled",
    "ChangePolygon",
    "VectorOutputError",
    "polygonize_changes",
    "vector_driver",
    "write_change_polygons",
    "write_vector",
]
