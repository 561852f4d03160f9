"""The tile loop: batches through a `BatchRunner`, blended into row strips of the probability
raster."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from ..data.tile_prep import TilePreparer
from ..geo.align import AlignedPair
from ..geo.probability_raster import create_probability_raster
from ..geo.tiling import (
    StitchAccumulator,
    blend_window,
    crop_tile,
    tile_grid,
)
from ..progress import CancelCheck, ProgressCallback, check_cancel, report
from ..runtime.batch_runners import BatchRunner
from ..types import PathLike
from .tile_reader import TileReader


@dataclass
class TileLoopStats:
    """Counts and times of one tile loop.

    Attributes:
        tiles, tiles_computed: tiles in the grid / tiles run through the model.
        predict_s: wall seconds inside ``run_batch`` (the model's forward).
        reader_cpu_s: CPU seconds of the background reader thread (reads, stretch,
            normalisation), which overlap the model.
        reader_wait_s: seconds the tile loop waited for the reader.
    """

    tiles: int = 0
    tiles_computed: int = 0
    predict_s: float = 0.0
    reader_cpu_s: float = 0.0
    reader_wait_s: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


def predict_probability_raster(
    pair: AlignedPair,
    run_batch: BatchRunner,
    prob_path: PathLike,
    prepare: TilePreparer,
    *,
    tile_size: int,
    overlap_px: int,
    batch_size: int,
    metadata: Optional[dict[str, Any]] = None,
    scratch: bool = False,
    rows: Optional[tuple[int, int]] = None,
    progress: Optional[ProgressCallback] = None,
    cancelled: Optional[CancelCheck] = None,
) -> TileLoopStats:
    """Write the stitched change probability of ``pair`` to a new GeoTIFF at ``prob_path``.

    Tiles of ``tile_size`` overlapping by ``overlap_px`` are prepared by
    ``prepare.prepare_into`` in a background thread, run through ``run_batch`` in batches of
    ``batch_size``, weighted by `blend_window` x the valid mask and accumulated; finished
    full-width row strips are written as soon as no later tile touches them. Pixels no valid
    tile covers are nodata. ``cancelled()`` is checked between batches. ``scratch``: the
    GeoTIFF is a temporary file (cheaper compression, see `create_probability_raster`).

    ``rows`` ``(y0, y1)``: only the raster rows ``[y0, y1)`` (a block of a split raster,
    `kdmsi.detect.blocks`): the GeoTIFF covers those rows, and every tile of the whole grid
    that touches them runs, in the grid's order, so each pixel is blended from the same tiles
    in the same order as in the whole raster's run.

    Raises:
        Cancelled: ``cancelled()`` returned True.
    """
    y_start, y_end = rows or (0, pair.height)
    windows = [
        w
        for w in tile_grid(pair.width, pair.height, tile_size, overlap_px)
        if w.y < y_end and w.y + w.h > y_start
    ]
    origin = windows[0].y  # the accumulator's row 0: the first tile row that is run
    span = max(w.y + w.h for w in windows) - origin
    weight = blend_window(tile_size, overlap_px)
    stitch = StitchAccumulator(pair.width, span, tile_size, overlap_px)
    stats = TileLoopStats(tiles=len(windows))
    writer = create_probability_raster(
        prob_path,
        pair.width,
        y_end - y_start,
        shifted_geotransform(pair.geotransform, y_start),
        pair.crs_wkt,
        metadata,
        scratch=scratch,
    )
    out = _RowsOut(writer, origin, y_start, y_end)
    reader = TileReader(prepare.prepare_into, windows, batch_size, pair.band_count, tile_size)
    try:
        with reader:
            for batch in reader:
                check_cancel(cancelled)
                if batch.windows:
                    start = time.perf_counter()
                    probs = run_batch(batch.pre, batch.post)
                    stats.predict_s += time.perf_counter() - start
                    stats.tiles_computed += len(batch.windows)
                    for window, prob, valid in zip(batch.windows, probs, batch.valid):
                        local = replace(window, y=window.y - origin)
                        out.write(stitch.pop_finished(local.y, copy=False))
                        tile_weight = crop_tile(weight, window)
                        if not valid.all():
                            tile_weight = tile_weight * valid
                        stitch.add(local, crop_tile(prob, window), tile_weight)
                report(
                    progress, batch.scanned / len(windows), f"tile {batch.scanned}/{len(windows)}"
                )
        out.write(stitch.pop_finished(span, copy=False))
    except BaseException:
        writer.dataset = None  # close without flushing: the caller removes the file
        raise
    finally:
        stats.reader_cpu_s, stats.reader_wait_s = reader.cpu_s, reader.wait_s
    writer.close()
    return stats


def shifted_geotransform(geotransform: Sequence[float], rows: int) -> tuple[float, ...]:
    """The geotransform of the same grid starting ``rows`` rows lower."""
    x0, dx, rx, y0, ry, dy = geotransform
    return (x0 + rows * rx, dx, rx, y0 + rows * dy, ry, dy)


@dataclass
class _RowsOut:
    """Writes the accumulator's strips (rows counted from ``origin``) that fall in the raster
    rows ``[y_start, y_end)`` to ``writer`` (row 0 = ``y_start``)."""

    writer: Any
    origin: int
    y_start: int
    y_end: int

    def write(self, strips: Iterator[tuple[int, np.ndarray]]) -> None:
        for local_y0, strip in strips:
            y0 = local_y0 + self.origin
            first, last = max(y0, self.y_start), min(y0 + len(strip), self.y_end)
            if first >= last:
                continue
            try:
                self.writer.write_rows(first - self.y_start, strip[first - y0 : last - y0])
            except RuntimeError as exc:  # GDAL write error: disk full, file gone...
                path = self.writer.path
                raise OSError(f"writing the probability raster {path} failed: {exc}") from exc
