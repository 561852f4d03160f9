"""The tile layer an analyst tags: square tiles on the detect grid of a raster pair, with an empty
`changed` attribute, and (when asked, `kdmsi.detect.suggest`) which tiles to tag first."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

from ..recipe import TAG_FIELD, grid_tile_size
from ..types import PathLike
from .align import align_pair
from .atomic import atomic_output, check_output_target
from .raster import gdal_exceptions
from .vector import vector_driver

log = logging.getLogger(__name__)


TILE_GRID_SCHEMA = {
    "geometry": "Polygon",
    "properties": {
        "tile_id": "int",
        "row": "int",
        "col": "int",
        TAG_FIELD: "int",
        "change_score": "float",
        "suggest": "float",
        "suggest_rank": "int",
    },
}
Cell = tuple[int, int]


@dataclass(frozen=True)
class TileSuggestion:
    """What the grid records about one tile: ``change_score``, the map's change evidence in
    the tile (`kdmsi.inference.tile_suggest.tile_evidence`; None: no valid pixel); ``rank``,
    its place in the tagging order (1 = tag first; None: tagged already, or no evidence);
    ``suggest``, the same order as a 0..1 priority for styling (1 = first)."""

    change_score: Optional[float]
    rank: Optional[int]
    suggest: Optional[float]


def tile_cells(width: int, height: int, tile_size: int) -> list[Cell]:
    """(row, col) of the non-overlapping tiles of the grid, row by row from the top-left."""
    return [
        (row, col)
        for row in range((height + tile_size - 1) // tile_size)
        for col in range((width + tile_size - 1) // tile_size)
    ]


def default_grid_tile_size(
    before: PathLike, after: PathLike, bounds: Optional[Sequence[float]] = None
) -> int:
    """The grid's tile side when none is given: `kdmsi.recipe.grid_tile_size` of the pair's
    aligned overlap (cut to ``bounds``), so that a small region still gives enough tiles to
    tag."""
    with gdal_exceptions(), align_pair(before, after, bands=[1], bounds=bounds) as pair:
        return grid_tile_size(pair.width, pair.height)


def make_tile_grid(
    before: PathLike,
    after: PathLike,
    out: PathLike,
    tile_size: Optional[int] = None,
    overwrite: bool = False,
    bounds: Optional[Sequence[float]] = None,
    tags: Optional[Mapping[Cell, int]] = None,
    suggestions: Optional[Mapping[Cell, TileSuggestion]] = None,
) -> Path:
    """Write a polygon layer of ``tile_size`` px tiles for an analyst to tag as changed or not
    (None: `default_grid_tile_size`, chosen from the raster's size).

    Tiles do not overlap and follow the aligned grid of `align_pair` (the before raster's
    pixels over the two rasters' overlap), row by row from the top-left; the last column/row
    is cut at the edge of the overlap, so the tiles cover it exactly. Fields: ``tile_id``
    (1..n), ``row``, ``col`` (tile indices on that grid) and ``changed`` (integer, NULL: to be
    set to 1 or 0). CRS: the before raster's. ``bounds`` (xmin, ymin, xmax, ymax in that CRS)
    restricts the grid to an area, as in `align_pair`. ``tags`` ({(row, col): 0/1}, e.g.
    from an earlier grid, `read_grid_tags`) fill ``changed``; ``suggestions`` fill
    ``change_score``, ``suggest`` and ``suggest_rank`` (NULL otherwise).

    Raises:
        RasterInputError, VectorOutputError, FileExistsError, OutputNotWritableError.
    """
    import fiona
    from fiona.crs import CRS

    target = Path(out)
    driver = vector_driver(target)
    check_output_target(target, overwrite)
    if tile_size is not None and tile_size < 1:
        raise ValueError(f"--tile-size must be positive, got {tile_size}")
    with gdal_exceptions(), align_pair(before, after, bands=[1], bounds=bounds) as pair:
        gt, width, height, crs_wkt = pair.geotransform, pair.width, pair.height, pair.crs_wkt
    if tile_size is None:
        tile_size = grid_tile_size(width, height)
    kwargs: dict[str, Any] = {"driver": driver, "schema": TILE_GRID_SCHEMA}
    kwargs["crs"] = CRS.from_wkt(crs_wkt)
    if driver in ("GPKG", "GeoJSON"):
        kwargs["layer"] = target.stem
    with atomic_output(target, overwrite) as temp:
        with fiona.open(str(temp), "w", **kwargs) as sink:
            records = _tile_records(gt, width, height, tile_size, tags or {}, suggestions or {})
            sink.writerecords(records)
    log.info(
        "wrote a grid of %d tiles of %d x %d px over %d x %d px to %s",
        len(tile_cells(width, height, tile_size)),
        tile_size,
        tile_size,
        width,
        height,
        target,
    )
    return target


def _tile_records(
    gt: Sequence[float],
    width: int,
    height: int,
    tile_size: int,
    tags: Mapping[Cell, int],
    suggestions: Mapping[Cell, TileSuggestion],
) -> Iterator[dict[str, Any]]:
    """Fiona records of the non-overlapping tiles of a north-up grid."""
    none = TileSuggestion(None, None, None)
    for tile_id, (row, col) in enumerate(tile_cells(width, height, tile_size), start=1):
        x, y = col * tile_size, row * tile_size
        x0, x1 = gt[0] + x * gt[1], gt[0] + min(x + tile_size, width) * gt[1]
        y0, y1 = gt[3] + y * gt[5], gt[3] + min(y + tile_size, height) * gt[5]
        ring = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
        hint = suggestions.get((row, col), none)
        properties = {"tile_id": tile_id, "row": row, "col": col}
        properties.update(changed=tags.get((row, col)), change_score=hint.change_score)
        properties.update(suggest=hint.suggest, suggest_rank=hint.rank)
        yield {"geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": properties}
