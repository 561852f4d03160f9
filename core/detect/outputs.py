"""Detect's outputs besides the probability raster: the change polygons and the metadata both
carry."""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

from .. import __version__
from ..geo.align import AlignedPair
from ..geo.atomic import atomic_output
from ..geo.metadata import metadata_strings
from ..geo.polygons import write_change_polygons
from ..geo.raster import gdal_exceptions
from ..geo.vector import fixed_write_date, vector_driver, write_failed
from ..progress import CancelCheck, ProgressCallback
from ..types import PathLike


def no_change_message(threshold: float) -> str:
    """What the CLI and the plugin say when detect found no change polygon."""
    return (
        f"no change found: the map stays below the threshold {threshold:.3g} everywhere; look "
        "at the probability raster, and give a lower threshold if it shows the changes"
    )


def output_metadata(
    pair: AlignedPair,
    stretch: dict[str, Any],
    threshold: float,
    tile_size: int,
    overlap_px: int,
    model_info: Optional[dict[str, Any]],
) -> dict[str, Any]:
    """What is recorded in the probability GeoTIFF (and a GeoPackage's layer metadata)."""
    return {
        "kdmsi_version": __version__,
        "before": pair.before_path,
        "after": pair.after_path,
        "bands": list(pair.bands),
        "stretch": stretch,
        "threshold": float(threshold),
        "tile_size": int(tile_size),
        "overlap_px": int(overlap_px),
        **(model_info or {"model_kind": "custom"}),
    }


def write_polygons(
    prob_path: Path,
    temp: Path,
    target: Path,
    metadata: dict[str, Any],
    *,
    threshold: float,
    min_area_m2: float,
    simplify_m: float,
    strip_rows: int,
    progress: Optional[ProgressCallback],
    cancelled: Optional[CancelCheck],
) -> int:
    """Polygonize ``prob_path`` into ``temp`` (layer named after ``target``), streaming, plus
    the GeoPackage layer metadata; return the polygon count."""
    # the writers would log the temporary name (`atomic_output` renames it in their errors)
    with _quiet("kdmsi.geo"):
        count = write_change_polygons(
            prob_path,
            temp,
            threshold=threshold,
            min_area_m2=min_area_m2,
            simplify_m=simplify_m,
            strip_rows=strip_rows,
            layer=target.stem,
            overwrite=True,
            progress=progress,
            cancel=cancelled,
        )
    if vector_driver(target) == "GPKG":
        from osgeo import ogr

        with gdal_exceptions(), fixed_write_date():
            try:
                source = ogr.Open(str(temp), 1)
                source.GetLayer(0).SetMetadata(_metadata_strings(metadata))
                source = None
            except RuntimeError as exc:  # disk full, file system gone
                source = None
                raise write_failed(target, exc) from exc
    return count


def output_temps(
    stack: contextlib.ExitStack,
    vector_target: Path,
    prob_target: Optional[PathLike],
    overwrite: bool,
) -> tuple[Path, Path]:
    """(probability, vector) temporary paths for the lifetime of ``stack``: the vector's and,
    with ``prob_target``, the probability raster's from `atomic_output` (moved into place when
    the stack closes without error), else a scratch file in the system's temporary folder."""
    if prob_target is not None:
        prob_temp = stack.enter_context(atomic_output(prob_target, overwrite))
    else:
        scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="kdmsi-detect-"))
        prob_temp = Path(scratch) / "probability.tif"
    return prob_temp, stack.enter_context(atomic_output(vector_target, overwrite))


def polygon_strip_rows(width: int) -> int:
    """Rows per polygonize pass: about 2 Mpx per strip (32 to 512 rows), so its buffers do
    not grow with the raster's width either."""
    return max(32, min(512, (1 << 21) // max(width, 1)))


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Hide the INFO messages of one logger inside the block."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _metadata_strings(metadata: dict[str, Any]) -> dict[str, str]:
    """The vector layer's metadata: `metadata_strings` under ``kdmsi_`` keys."""
    return {f"kdmsi_{k}": v for k, v in metadata_strings(metadata).items()}
