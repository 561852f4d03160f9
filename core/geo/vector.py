"""Change polygons as records (true areas on the ellipsoid, probability statistics) and their
vector files: GeoPackage, Shapefile, GeoJSON, FlatGeobuf.

`kdmsi.geo.polygons` makes them from a probability raster."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

from osgeo import gdal, ogr, osr

from ..types import PathLike
from .atomic import atomic_output
from .raster import gdal_exceptions, srs_from_wkt

log = logging.getLogger(__name__)


VECTOR_DRIVERS: dict[str, str] = {
    ".gpkg": "GPKG",
    ".shp": "ESRI Shapefile",
    ".geojson": "GeoJSON",
    ".json": "GeoJSON",
    ".fgb": "FlatGeobuf",
}
"""Output extension -> OGR driver used by `write_vector`."""


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
    count = write_features(features, target, crs_wkt, multi, overwrite, layer)
    log.info("wrote %d polygons to %s", count, target)
    return target


def write_features(
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
    with atomic_output(target, overwrite) as temp, gdal_exceptions(), fixed_write_date():
        try:
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
        except RuntimeError as exc:  # GDAL: disk full, quota, file system gone
            sink = source = None
            raise write_failed(target, exc) from exc
    return count


def write_failed(target: PathLike, exc: BaseException) -> OSError:
    """The one-line error of a GDAL write that failed (disk full, quota, file system gone)."""
    reason = " ".join(str(exc).split()) or "GDAL gave no reason"
    return OSError(
        f"writing {target} failed ({reason}): free some disk space or choose another folder"
    )


WRITE_DATE = "2000-01-01T00:00:00Z"
"""The date a GeoPackage records as its last change (``gpkg_contents.last_change``): fixed, so
identical runs give byte-identical files that users can diff."""


@contextlib.contextmanager
def fixed_write_date() -> Iterator[None]:
    """GDAL's ``OGR_CURRENT_DATE`` set to `WRITE_DATE` for this thread, then restored."""
    previous = gdal.GetThreadLocalConfigOption("OGR_CURRENT_DATE", None)
    gdal.SetThreadLocalConfigOption("OGR_CURRENT_DATE", WRITE_DATE)
    try:
        yield
    finally:
        gdal.SetThreadLocalConfigOption("OGR_CURRENT_DATE", previous)


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
