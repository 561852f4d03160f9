"""The tile loop: batches through a `BatchRunner`, blended into row strips of the probability
raster."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

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

    Raises:
        Cancelled: ``cancelled()`` returned True.
    """
    windows = tile_grid(pair.width, pair.height, tile_size, overlap_px)
    weight = blend_window(tile_size, overlap_px)
    stitch = StitchAccumulator(pair.width, pair.height, tile_size, overlap_px)
    stats = TileLoopStats(tiles=len(windows))
    writer = create_probability_raster(
        prob_path,
        pair.width,
        pair.height,
        pair.geotransform,
        pair.crs_wkt,
        metadata,
        scratch=scratch,
    )
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
                        _write_strips(writer, stitch.pop_finished(window.y, copy=False))
                        tile_weight = crop_tile(weight, window)
                        if not valid.all():
                            tile_weight = tile_weight * valid
                        stitch.add(window, crop_tile(prob, window), tile_weight)
                report(
                    progress, batch.scanned / len(windows), f"tile {batch.scanned}/{len(windows)}"
                )
        _write_strips(writer, stitch.pop_finished(pair.height, copy=False))
    except BaseException:
        writer.dataset = None  # close without flushing: the caller removes the file
        raise
    finally:
        stats.reader_cpu_s, stats.reader_wait_s = reader.cpu_s, reader.wait_s
    writer.close()
    return stats


def _write_strips(writer: Any, strips: Iterator[tuple[int, np.ndarray]]) -> None:
    for y0, strip in strips:
        try:
            writer.write_rows(y0, strip)
        except RuntimeError as exc:  # GDAL write error: disk full, file gone...
            raise OSError(f"writing the probability raster {writer.path} failed: {exc}") from exc
