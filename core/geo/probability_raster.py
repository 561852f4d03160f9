"""The probability raster: float32 GeoTIFF written in row strips, its metadata and overviews."""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import numpy as np
from osgeo import gdal

from ..progress import CancelCheck, ProgressCallback, check_cancel, interrupts_deferred, stop_signal
from ..types import PathLike
from .metadata import decode_metadata, metadata_strings
from .raster import PROB_NODATA, gdal_exceptions

log = logging.getLogger(__name__)


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
    with gdal_exceptions():
        ds = gdal.GetDriverByName("GTiff").Create(
            str(path), width, height, 1, gdal.GDT_Float32, options=_options(block_size, scratch)
        )
        ds.SetGeoTransform(list(geotransform))
        ds.SetProjection(crs_wkt)
        _describe(ds, metadata)
    return ProbabilityRasterWriter(ds, str(path))


def _options(block_size: int, scratch: bool) -> list[str]:
    return [
        "TILED=YES",
        f"BLOCKXSIZE={block_size}",
        f"BLOCKYSIZE={min(block_size, SCRATCH_BLOCK_ROWS) if scratch else block_size}",
        *(scratch_compression() if scratch else _OUTPUT_COMPRESSION),
        "BIGTIFF=IF_SAFER",
    ]


def _describe(ds: gdal.Dataset, metadata: Optional[dict[str, Any]]) -> None:
    band = ds.GetRasterBand(1)
    band.SetNoDataValue(PROB_NODATA)
    band.SetDescription("change probability")
    items = metadata_strings(metadata)
    if items:
        ds.SetMetadata(items)


def mosaic_probability_rasters(
    parts: Sequence[PathLike],
    path: PathLike,
    metadata: Optional[dict[str, Any]] = None,
    block_size: int = 256,
) -> None:
    """Join probability rasters that tile one grid without overlap (the row blocks of a split
    raster) into one new probability GeoTIFF at ``path``, created as `create_probability_raster`
    creates it: through a VRT, block row by block row, never holding the raster in memory."""
    with gdal_exceptions():
        vrt = gdal.BuildVRT("", [str(p) for p in parts])
        ds = gdal.Translate(
            str(path),
            vrt,
            format="GTiff",
            creationOptions=_options(block_size, scratch=False),
            noData=PROB_NODATA,
        )
        _describe(ds, metadata)
        ds = vrt = None


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
        return 0 if stop_signal() or (cancel is not None and cancel()) else 1

    check_cancel(cancel)
    with interrupts_deferred(), gdal_exceptions():
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
