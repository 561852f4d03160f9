"""The tile layer an analyst tags: square tiles on the detect grid of a raster pair, with an empty
`changed` attribute."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

from .align import align_pair
from .atomic import atomic_output, check_output_target
from .raster import gdal_exceptions
from .vector import vector_driver

PathLike = Union[str, Path]

log = logging.getLogger(__name__)


TILE_GRID_SCHEMA = {
    "geometry": "Polygon",
    "properties": {"tile_id": "int", "row": "int", "col": "int", "changed": "int"},
}


def make_tile_grid(
    before: PathLike,
    after: PathLike,
    out: PathLike,
    tile_size: int = 256,
    overwrite: bool = False,
    bounds: Optional[Sequence[float]] = None,
) -> Path:
    """Write a polygon layer of ``tile_size`` px tiles for an analyst to tag as changed or not.

    Tiles do not overlap and follow the aligned grid of `align_pair` (the before raster's
    pixels over the two rasters' overlap), row by row from the top-left; the last column/row
    is cut at the edge of the overlap, so the tiles cover it exactly. Fields: ``tile_id``
    (1..n), ``row``, ``col`` (tile indices on that grid) and ``changed`` (integer, NULL: to be
    set to 1 or 0). CRS: the before raster's. ``bounds`` (xmin, ymin, xmax, ymax in that CRS)
    restricts the grid to an area, as in `align_pair`.

    Raises:
        RasterInputError, VectorOutputError, FileExistsError, OutputNotWritableError.
    """
    import fiona
    from fiona.crs import CRS

    target = Path(out)
    driver = vector_driver(target)
    check_output_target(target, overwrite)
    if tile_size < 1:
        raise ValueError(f"--tile-size must be positive, got {tile_size}")
    with gdal_exceptions(), align_pair(before, after, bands=[1], bounds=bounds) as pair:
        gt, width, height, crs_wkt = pair.geotransform, pair.width, pair.height, pair.crs_wkt
    kwargs: dict[str, Any] = {"driver": driver, "schema": TILE_GRID_SCHEMA}
    kwargs["crs"] = CRS.from_wkt(crs_wkt)
    if driver in ("GPKG", "GeoJSON"):
        kwargs["layer"] = target.stem
    with atomic_output(target, overwrite) as temp:
        with fiona.open(str(temp), "w", **kwargs) as sink:
            sink.writerecords(_tile_records(gt, width, height, tile_size))
    log.info(
        "wrote a grid of %d x %d px tiles over %d x %d px to %s",
        tile_size,
        tile_size,
        width,
        height,
        target,
    )
    return target


def _tile_records(
    gt: Sequence[float], width: int, height: int, tile_size: int
) -> Iterator[dict[str, Any]]:
    """Fiona records of the non-overlapping tiles of a north-up grid."""
    tile_id = 0
    for row, y in enumerate(range(0, height, tile_size)):
        for col, x in enumerate(range(0, width, tile_size)):
            tile_id += 1
            x0, x1 = gt[0] + x * gt[1], gt[0] + min(x + tile_size, width) * gt[1]
            y0, y1 = gt[3] + y * gt[5], gt[3] + min(y + tile_size, height) * gt[5]
            ring = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
            yield {
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"tile_id": tile_id, "row": row, "col": col, "changed": None},
            }
