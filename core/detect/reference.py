"""Metrics of a detection against a reference map an analyst trusts (mask raster or polygons).

The reference is put on the probability raster's grid strip by strip, so memory stays bounded
by one strip whatever the raster size:

* a mask raster (any CRS) is warped with nearest neighbour; values > 0 are change, its nodata
  and the area outside it are left out of the metrics;
* a polygon layer (any CRS, any OGR format) is rasterised: pixels whose centre falls in a
  polygon are change, all others no change.

Pixels that are nodata in the probability raster (outside either image) are left out too.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from osgeo import gdal

from ..geo.atomic import PathLike
from ..geo.raster import PROB_NODATA, RasterInputError, gdal_exceptions
from ..metrics.change import ConfusionCounts, format_table
from ..progress import CancelCheck, ProgressCallback, check_cancel, report, sub_progress

log = logging.getLogger(__name__)

STRIP_ROWS = 512
_OUTSIDE = -1.0  # value of warped mask pixels outside the mask or nodata in it
METRIC_NAMES = ("OA", "F1", "cIoU", "mIoU", "FP", "FN")


class ReferenceError(RasterInputError):
    """The reference cannot be read or does not meet the analysed area."""


@dataclass
class ReferenceEvaluation:
    """Metrics of a detection against a reference.

    Attributes:
        metrics: `kdmsi.metrics.change.ConfusionCounts.metrics` (fractions in [0, 1]).
        counts: the pixel confusion counts behind them.
        threshold: probability threshold used (prob >= threshold is change).
        pixels: pixels compared (valid in both the detection and the reference).
        reference_kind: ``raster`` or ``vector``.
        detect: what `kdmsi.detect.with_model.detect_changes` reported (`evaluate_model`) or {}.
    """

    metrics: dict[str, float]
    counts: ConfusionCounts
    threshold: float
    pixels: int
    reference_kind: str
    detect: dict[str, Any] = field(default_factory=dict)

    def table(self, label: str = "detection") -> str:
        """The fixed-width metrics table (percent) the CLI and QGIS print."""
        return format_table({label: self.metrics}, METRIC_NAMES)


def open_reference(path: PathLike) -> tuple[str, gdal.Dataset]:
    """Open ``path`` as a raster (``raster``) or a vector layer (``vector``).

    Raises:
        ReferenceError: missing, unreadable, or neither a raster nor a polygon layer.
    """
    if not Path(path).exists():
        raise ReferenceError(f"reference {path} does not exist")
    with gdal_exceptions():
        try:
            ds = gdal.OpenEx(str(path), gdal.OF_RASTER | gdal.OF_VECTOR | gdal.OF_READONLY)
        except RuntimeError as exc:
            raise ReferenceError(f"reference {path} cannot be read: {exc}") from exc
    if ds is None:
        raise ReferenceError(f"reference {path} is neither a raster nor a vector file")
    if ds.RasterCount > 0:
        if not ds.GetProjection():
            raise ReferenceError(
                f"reference raster {path} has no CRS: assign one (e.g. gdal_edit.py -a_srs)"
            )
        return "raster", ds
    if ds.GetLayerCount() == 0:
        raise ReferenceError(f"reference {path} holds no raster band and no vector layer")
    if ds.GetLayerCount() > 1:
        log.warning("reference %s holds %d layers; the first one is used", path, ds.GetLayerCount())
    layer = ds.GetLayer(0)
    if layer.GetSpatialRef() is None:
        raise ReferenceError(f"reference layer {path} has no CRS: assign one in QGIS or ogr2ogr")
    return "vector", ds


class _StripReader:
    """Reads (reference change, reference valid) for row strips of the probability grid."""

    def __init__(self, kind: str, ds: gdal.Dataset, grid: gdal.Dataset):
        self.kind, self.ds = kind, ds
        self.gt = grid.GetGeoTransform()
        self.wkt = grid.GetProjection()
        self.width, self.height = grid.RasterXSize, grid.RasterYSize
        if kind == "raster":
            self.warped = self._warp_mask(ds)

    def _warp_mask(self, ds: gdal.Dataset) -> gdal.Dataset:
        gt, w, h = self.gt, self.width, self.height
        bounds = (gt[0], gt[3] + h * gt[5], gt[0] + w * gt[1], gt[3])
        with gdal_exceptions():
            first_band = gdal.Translate("", ds, format="VRT", bandList=[1])
            nodata = first_band.GetRasterBand(1).GetNoDataValue()
            # float32 with nodata -1 keeps every mask value (0/1, 0/255, class codes) apart
            # from "outside the mask"
            return gdal.Warp(
                "",
                first_band,
                format="VRT",
                outputBounds=bounds,
                width=w,
                height=h,
                dstSRS=self.wkt,
                resampleAlg="near",
                srcNodata=nodata,
                dstNodata=_OUTSIDE,
                outputType=gdal.GDT_Float32,
            )

    def read(self, y0: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """bool change [rows, width], bool valid [rows, width] for grid rows [y0, y0 + rows)."""
        if self.kind == "raster":
            band = self.warped.GetRasterBand(1)
            with gdal_exceptions():
                values = band.ReadAsArray(0, y0, self.width, rows)
            valid = values != _OUTSIDE
            return (values > 0) & valid, valid
        strip = gdal.GetDriverByName("MEM").Create("", self.width, rows, 1, gdal.GDT_Byte)
        strip.SetGeoTransform(
            (self.gt[0], self.gt[1], 0.0, self.gt[3] + y0 * self.gt[5], 0.0, self.gt[5])
        )
        strip.SetProjection(self.wkt)
        with gdal_exceptions():
            gdal.RasterizeLayer(strip, [1], self.ds.GetLayer(0), burn_values=[1])
        values = strip.GetRasterBand(1).ReadAsArray()
        return values > 0, np.ones(values.shape, bool)


def compare_probability(
    probability_path: PathLike,
    reference: PathLike,
    threshold: float,
    *,
    progress: Optional[ProgressCallback] = None,
    cancelled: Optional[CancelCheck] = None,
) -> ReferenceEvaluation:
    """Metrics of ``probability >= threshold`` against ``reference``, strip by strip.

    Args:
        probability_path: a probability GeoTIFF from `kdmsi.detect.with_model.detect_changes`
            (float32 in [0, 1], nodata -1).
        reference: mask raster or polygon layer (see the module docstring).
        threshold: probability threshold.

    Raises:
        ReferenceError: unreadable reference, or no pixel in common with the detection.
    """
    kind, ds = open_reference(reference)
    with gdal_exceptions():
        grid = gdal.Open(str(probability_path))
    reader = _StripReader(kind, ds, grid)
    band = grid.GetRasterBand(1)
    counts = ConfusionCounts()
    for y0 in range(0, reader.height, STRIP_ROWS):
        check_cancel(cancelled)
        rows = min(STRIP_ROWS, reader.height - y0)
        with gdal_exceptions():
            prob = band.ReadAsArray(0, y0, reader.width, rows)
        change, valid = reader.read(y0, rows)
        valid &= prob != PROB_NODATA
        counts.update(prob >= threshold, change, valid)
        report(progress, (y0 + rows) / reader.height, "comparing with the reference")
    pixels = counts.tp + counts.fp + counts.fn + counts.tn
    if pixels == 0:
        raise ReferenceError(
            f"reference {reference} has no valid pixel over the analysed area: check that it "
            "covers the same place as the images (and its CRS)"
        )
    return ReferenceEvaluation(counts.metrics(), counts, float(threshold), pixels, kind)


def evaluate_model(
    before: PathLike,
    after: PathLike,
    model_path: PathLike,
    reference: PathLike,
    *,
    threshold: Optional[float] = None,
    tile_size: Optional[int] = None,
    overlap_px: Optional[int] = None,
    batch_size: int = 4,
    device: str = "auto",
    runtime: str = "auto",
    bands: Optional[Sequence[int]] = None,
    bounds: Optional[Sequence[float]] = None,
    progress: Optional[ProgressCallback] = None,
    cancelled: Optional[CancelCheck] = None,
) -> ReferenceEvaluation:
    """Run a model on a raster pair and measure it against a reference.

    The detection runs as `kdmsi.detect.with_model.detect_changes` does (same tiling, stretch and
    threshold rules) into a temporary folder that is removed afterwards; nothing is written
    elsewhere. Arguments are those of `detect_changes`; ``reference`` as in
    `compare_probability`.
    """
    from .with_model import detect_changes

    open_reference(reference)  # a bad reference is reported before minutes of compute
    with tempfile.TemporaryDirectory(prefix="kdmsi-evaluate-") as scratch:
        result = detect_changes(
            before,
            after,
            model_path,
            Path(scratch) / "changes.gpkg",
            Path(scratch) / "probability.tif",
            tile_size=tile_size,
            overlap_px=overlap_px,
            batch_size=batch_size,
            device=device,
            runtime=runtime,
            threshold=threshold,
            bands=bands,
            bounds=bounds,
            progress=sub_progress(progress, 0.0, 0.9),
            cancelled=cancelled,
        )
        evaluation = compare_probability(
            result.probability_path,
            reference,
            result.threshold,
            progress=sub_progress(progress, 0.9, 1.0),
            cancelled=cancelled,
        )
    evaluation.detect = {
        "polygons": result.polygon_count,
        "width": result.width,
        "height": result.height,
        "device": str(result.device),
        "seconds": result.timing_s.get("total"),
    }
    log.info("against %s:\n%s", reference, evaluation.table())
    return evaluation
