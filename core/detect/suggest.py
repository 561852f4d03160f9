"""A tile grid that says which tiles to tag next (`kdmsi tile-grid --suggest`).

raster pair -> change map over the whole grid (the zero-shot map, or a trained model's, through
the detect path) -> change evidence per tile (`kdmsi.inference.tile_suggest.tile_evidence`) ->
the tagging order (`zero_shot_order` before a model exists, `uncertainty_order` with one) ->
the grid's ``change_score``, ``suggest`` and ``suggest_rank`` fields.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from ..data.tagged import TagError, read_grid_tags
from ..geo.atomic import check_output_target
from ..geo.raster import PROB_NODATA
from ..geo.tile_layer import (
    Cell,
    TileSuggestion,
    default_grid_tile_size,
    make_tile_grid,
    tile_cells,
)
from ..geo.vector import vector_driver
from ..inference.tile_suggest import tile_evidence, uncertainty_order, zero_shot_order
from ..options import check_outputs_are_not_inputs
from ..progress import CancelCheck, ProgressCallback, report, sub_progress
from ..types import PathLike
from .checks import check_detect_options

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Suggestions:
    """Per-tile suggestions of a grid: ``tiles`` {(row, col): `TileSuggestion`}; ``source``
    ``zero-shot`` or the model file; ``threshold``: the map's change threshold."""

    tiles: dict[Cell, TileSuggestion]
    source: str
    threshold: float

    def first(self, count: int = 5) -> list[Cell]:
        """The ``count`` tiles to tag first, in order."""
        ranked = [(s.rank, cell) for cell, s in self.tiles.items() if s.rank is not None]
        return [cell for _, cell in sorted(ranked)[:count]]


def suggest_tiles(
    before: PathLike,
    after: PathLike,
    tile_size: int = 256,
    *,
    tags: Optional[Mapping[Cell, int]] = None,
    model: Optional[PathLike] = None,
    bands: Optional[Sequence[int]] = None,
    bounds: Optional[Sequence[float]] = None,
    device: str = "auto",
    progress: Optional[ProgressCallback] = None,
    cancelled: Optional[CancelCheck] = None,
) -> Suggestions:
    """The tagging order of the ``tile_size`` px grid of `kdmsi.geo.tile_layer.make_tile_grid`.

    Without ``model``, the zero-shot map ranks the tiles (`zero_shot_order`); with a trained
    model file, its map does (`uncertainty_order`: least sure first). Tiles in ``tags``
    ({(row, col): 0/1}) are tagged already and get no rank.

    Raises:
        the errors of `kdmsi.detect.with_model.detect_changes`, Cancelled.
    """
    tags = dict(tags or {})
    with tempfile.TemporaryDirectory(prefix="kdmsi-suggest-") as scratch:
        out = Path(scratch) / "changes.gpkg"
        prob = Path(scratch) / "map.tif"
        mapping = sub_progress(progress, 0.0, 0.95)
        if model is None:
            from .zero_shot import detect_zero_shot

            result = detect_zero_shot(
                before, after, out, prob, bands=bands, bounds=bounds, device=device,
                progress=mapping, cancelled=cancelled,
            )  # fmt: skip
        else:
            from .with_model import detect_changes

            result = detect_changes(
                before, after, model, out, prob, bands=bands, bounds=bounds, device=device,
                progress=mapping, cancelled=cancelled,
            )  # fmt: skip
        report(progress, 0.95, "scoring the tiles")
        evidence = _tile_evidence(prob, tile_size)
    cells = list(evidence)
    tagged = [cell in tags for cell in cells]
    scores = [evidence[cell] for cell in cells]
    if model is None:
        order = zero_shot_order(np.array(cells, int).reshape(-1, 2), scores, tagged)
    else:
        order = uncertainty_order(scores, tagged, result.threshold)
    rank = {cells[i]: k for k, i in enumerate(order, start=1)}
    tiles = {
        cell: TileSuggestion(
            change_score=None if scores[i] is None else round(scores[i], 4),
            rank=rank.get(cell),
            suggest=None if cell not in rank else round(1.0 - (rank[cell] - 1) / len(order), 4),
        )
        for i, cell in enumerate(cells)
    }
    source = "zero-shot" if model is None else str(model)
    report(progress, 1.0, f"{len(order)} tiles ranked ({source})")
    return Suggestions(tiles, source, float(result.threshold))


def _tile_evidence(prob: Path, tile_size: int) -> dict[Cell, Optional[float]]:
    """{(row, col): change evidence} of the map's non-overlapping tiles."""
    from osgeo import gdal

    dataset = gdal.Open(str(prob))
    band = dataset.GetRasterBand(1)
    width, height = dataset.RasterXSize, dataset.RasterYSize
    evidence = {}
    for row, col in tile_cells(width, height, tile_size):
        x, y = col * tile_size, row * tile_size
        w, h = min(tile_size, width - x), min(tile_size, height - y)
        evidence[(row, col)] = tile_evidence(band.ReadAsArray(x, y, w, h), PROB_NODATA)
    return evidence


def check_suggested_grid(
    before: PathLike,
    after: PathLike,
    out: PathLike,
    tile_size: Optional[int] = None,
    *,
    tags_from: Optional[PathLike] = None,
    model: Optional[PathLike] = None,
    bands: Optional[Sequence[int]] = None,
    bounds: Optional[Sequence[float]] = None,
    device: str = "auto",
    overwrite: bool = False,
) -> dict[Cell, int]:
    """Everything `make_suggested_tile_grid` can check before any compute; returns the tags
    of ``tags_from`` ({} without it).

    Raises:
        OptionError, FileExistsError, VectorOutputError, TagError: one line each.
    """
    vector_driver(out)
    check_outputs_are_not_inputs(
        {"--out": out},
        {"--before": before, "--after": after, "--tags-from": tags_from, "--model": model},
    )
    check_output_target(out, overwrite)
    check_detect_options(
        device=device, tile_size=tile_size, overlap_px=None, batch_size=1, threshold=None,
        min_area_m2=0.0, simplify_m=0.0, bands=bands, scales=None, bounds=bounds,
    )  # fmt: skip
    return read_grid_tags(tags_from) if tags_from is not None else {}


def make_suggested_tile_grid(
    before: PathLike,
    after: PathLike,
    out: PathLike,
    tile_size: Optional[int] = None,
    *,
    tags_from: Optional[PathLike] = None,
    model: Optional[PathLike] = None,
    bands: Optional[Sequence[int]] = None,
    bounds: Optional[Sequence[float]] = None,
    device: str = "auto",
    overwrite: bool = False,
    progress: Optional[ProgressCallback] = None,
    cancelled: Optional[CancelCheck] = None,
) -> tuple[Path, Suggestions]:
    """`make_tile_grid` with the suggestion fields filled (`suggest_tiles`); the tags of an
    earlier grid of the same tiles (``tags_from``) are carried over. ``tile_size`` None:
    `default_grid_tile_size`, as `make_tile_grid`. The output is checked
    before any compute (`check_suggested_grid`) and written whole, or not at all.

    Raises:
        TagError (``tags_from``), the errors of `make_tile_grid` and `suggest_tiles`.
    """
    tags = check_suggested_grid(
        before, after, out, tile_size, tags_from=tags_from, model=model, bands=bands,
        bounds=bounds, device=device, overwrite=overwrite,
    )  # fmt: skip
    if tile_size is None:
        tile_size = default_grid_tile_size(before, after, bounds)
    suggestions = suggest_tiles(
        before, after, tile_size, tags=tags, model=model, bands=bands, bounds=bounds,
        device=device, progress=sub_progress(progress, 0.0, 0.97), cancelled=cancelled,
    )  # fmt: skip
    unknown = set(tags) - set(suggestions.tiles)
    if unknown:
        raise TagError(
            f"{tags_from} has tags on {len(unknown)} tiles outside this grid: make the new grid "
            "with the same rasters, --tile-size and --bounds as the tagged one"
        )
    path = make_tile_grid(
        before, after, out, tile_size, overwrite, bounds, tags=tags, suggestions=suggestions.tiles
    )
    report(progress, 1.0, f"tile grid written to {path}")
    return path, suggestions
