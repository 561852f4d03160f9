"""A raster pair cut into row blocks that are predicted apart and mosaicked once: the unit of
work of `kdmsi detect-batch` (`kdmsi.detect.batch`) for a raster too large for one worker.

Each block runs every tile of the whole raster's grid that touches its rows, in the grid's order
(`predict_probability_raster` with ``rows``): the tiles of a block edge run in both neighbours
(the halo) and each block keeps only its own rows, so every pixel is blended from the same tiles
in the same order as in one process, and no blending ever crosses a block edge. Block edges lie
on tile-row starts. The band stretch is the whole pair's, computed once in `plan_pair`. Every
file is written by one process, atomically: a block its own GeoTIFF, `finish_pair` the mosaic
and the polygons.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from ..data.normalisation import Normalisation
from ..data.tile_prep import TilePreparer
from ..geo.align import align_pair
from ..geo.atomic import atomic_output
from ..geo.probability_raster import finalize_probability_raster, mosaic_probability_rasters
from ..geo.raster import gdal_exceptions
from ..geo.stretch import BandStretch, pair_stretches
from ..geo.tiling import tile_grid, tile_starts
from ..progress import CancelCheck, ProgressCallback
from ..runtime.batch_runners import BatchRunner
from ..types import PathLike
from .checks import check_band_count
from .outputs import output_metadata, output_temps, polygon_strip_rows, write_polygons
from .tile_loop import predict_probability_raster

DEFAULT_BLOCK_ROWS = 8192
"""Rows per block by default: at 256 px tiles about 40 tile rows, some minutes per 10,000 px of
width for a CPU worker (README, "More than one machine")."""


@dataclass(frozen=True)
class PairPlan:
    """What every block of one pair shares (plain values: it travels to the workers).

    Attributes:
        before, after, bands, bounds: the pair as `align_pair` opens it.
        width, height: the analysed grid.
        tile_size, overlap_px, threshold: the detect settings.
        stretch: ``{"before": BandStretch.to_dict(), "after": ...}`` of the whole pair.
        metadata: what the outputs record (`output_metadata`).
        blocks: rows ``(y0, y1)`` of each block, top to bottom.
        tiles: tiles each block runs (the halo tile rows count in both neighbours).
    """

    before: str
    after: str
    bands: tuple[int, ...]
    bounds: Optional[tuple[float, ...]]
    width: int
    height: int
    tile_size: int
    overlap_px: int
    threshold: float
    stretch: dict[str, Any]
    metadata: dict[str, Any]
    blocks: tuple[tuple[int, int], ...]
    tiles: tuple[int, ...]


def row_blocks(
    height: int, tile_size: int, overlap_px: int, block_rows: int
) -> list[tuple[int, int]]:
    """Rows ``[y0, y1)`` of blocks of about ``block_rows`` rows (at least one tile row each),
    every inner edge on a tile-row start."""
    starts = tile_starts(height, tile_size, overlap_px)
    stride = tile_size - overlap_px
    per_block = max(1, math.ceil(block_rows / stride))
    edges = [starts[i] for i in range(0, len(starts), per_block)] + [height]
    return list(zip(edges[:-1], edges[1:]))


def block_tiles(width: int, height: int, tile_size: int, overlap_px: int, rows: tuple[int, int]):
    """Tiles of the grid a block of ``rows`` runs."""
    y0, y1 = rows
    return sum(
        1 for w in tile_grid(width, height, tile_size, overlap_px) if w.y < y1 and w.y + w.h > y0
    )


def plan_pair(
    before: PathLike,
    after: PathLike,
    normalisation: Normalisation,
    *,
    bands: Sequence[int],
    bounds: Optional[Sequence[float]],
    tile_size: int,
    overlap_px: int,
    threshold: float,
    block_rows: int,
    model_info: Optional[dict[str, Any]] = None,
) -> PairPlan:
    """Open and align the pair, compute its band stretch and cut it into blocks.

    Raises:
        RasterInputError: unreadable rasters, no overlap, a band count the model cannot take.
    """
    with gdal_exceptions(), align_pair(before, after, bands, bounds) as pair:
        check_band_count(len(normalisation.mean), pair.band_count)
        stretches = pair_stretches(pair)
        stretch = {"before": stretches[0].to_dict(), "after": stretches[1].to_dict()}
        metadata = output_metadata(pair, stretch, threshold, tile_size, overlap_px, model_info)
        width, height, chosen = pair.width, pair.height, tuple(pair.bands)
    blocks = tuple(row_blocks(height, tile_size, overlap_px, block_rows))
    return PairPlan(
        before=str(before),
        after=str(after),
        bands=chosen,
        bounds=None if bounds is None else tuple(bounds),
        width=width,
        height=height,
        tile_size=tile_size,
        overlap_px=overlap_px,
        threshold=float(threshold),
        stretch=stretch,
        metadata=metadata,
        blocks=blocks,
        tiles=tuple(block_tiles(width, height, tile_size, overlap_px, b) for b in blocks),
    )


def predict_block(
    plan: PairPlan,
    index: int,
    run_batch: BatchRunner,
    normalisation: Normalisation,
    path: PathLike,
    *,
    batch_size: int,
    progress: Optional[ProgressCallback] = None,
    cancelled: Optional[CancelCheck] = None,
) -> int:
    """Write block ``index`` of ``plan`` to its own probability GeoTIFF at ``path`` (a scratch
    file for `finish_pair`); return the tiles that had a valid pixel."""
    stretches = tuple(BandStretch.from_dict(plan.stretch[d]) for d in ("before", "after"))
    with contextlib.ExitStack() as stack:
        stack.enter_context(gdal_exceptions())
        temp = stack.enter_context(atomic_output(path, overwrite=True))
        pair = stack.enter_context(align_pair(plan.before, plan.after, plan.bands, plan.bounds))
        stats = predict_probability_raster(
            pair,
            run_batch,
            temp,
            TilePreparer(pair, stretches, normalisation),
            tile_size=plan.tile_size,
            overlap_px=plan.overlap_px,
            batch_size=batch_size,
            metadata=plan.metadata,
            scratch=True,
            rows=plan.blocks[index],
            progress=progress,
            cancelled=cancelled,
        )
    return stats.tiles_computed


def finish_pair(
    plan: PairPlan,
    block_paths: Sequence[PathLike],
    out_vector: PathLike,
    out_probability: Optional[PathLike],
    *,
    min_area_m2: float = 0.0,
    simplify_m: float = 0.0,
    overwrite: bool = False,
    cancelled: Optional[CancelCheck] = None,
) -> int:
    """Mosaic the blocks into the probability GeoTIFF (with overviews) and polygonize it once;
    return the polygon count. Without ``out_probability`` the mosaic is a temporary file."""
    vector_target = Path(out_vector)
    with contextlib.ExitStack() as stack:
        prob_temp, vector_temp = output_temps(stack, vector_target, out_probability, overwrite)
        mosaic_probability_rasters(block_paths, prob_temp, plan.metadata)
        if out_probability is not None:
            finalize_probability_raster(prob_temp, cancel=cancelled)
        return write_polygons(
            prob_temp,
            vector_temp,
            vector_target,
            plan.metadata,
            threshold=plan.threshold,
            min_area_m2=min_area_m2,
            simplify_m=simplify_m,
            strip_rows=polygon_strip_rows(plan.width),
            progress=None,
            cancelled=cancelled,
        )


__all__ = [
    "DEFAULT_BLOCK_ROWS",
    "PairPlan",
    "block_tiles",
    "finish_pair",
    "plan_pair",
    "predict_block",
    "row_blocks",
]
