"""What detect checks before any compute: its outputs, the bands to read, the numbers asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from ..geo.atomic import check_output_target
from ..geo.raster import RasterInputError, gdal_exceptions, open_raster
from ..geo.vector import vector_driver
from ..options import (
    OptionError,
    check_bands,
    check_bounds,
    check_device,
    check_outputs_are_not_inputs,
    check_scales,
    same_file,
)
from ..options import (
    check_numbers as check_option_values,
)
from ..types import PathLike

PROBABILITY_SUFFIXES = (".tif", ".tiff")


class DetectOutputError(ValueError):
    """An output path that cannot be used as asked (wrong extension, the same file twice)."""


def check_outputs(
    out_vector: PathLike,
    out_probability: Optional[PathLike],
    overwrite: bool,
    inputs: Optional[dict[str, Optional[PathLike]]] = None,
) -> tuple[Path, Optional[Path]]:
    """Check both outputs before any compute; return them as Paths.

    Args:
        inputs: option name -> input path (rasters, model, reference); an output naming one
            of them, by any spelling, is refused even with ``overwrite``.

    Raises:
        OptionError: an output is one of ``inputs``.
        VectorOutputError: unknown vector extension.
        DetectOutputError: probability not ``.tif``/``.tiff``, or both paths the same file.
        FileExistsError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
            OutputNotWritableError: see `kdmsi.geo.atomic.check_output_target`.
    """
    check_outputs_are_not_inputs(
        {"--out": out_vector, "--probability": out_probability}, inputs or {}
    )
    vector = Path(out_vector)
    vector_driver(vector)
    check_output_target(vector, overwrite)
    if out_probability is None:
        return vector, None
    probability = Path(out_probability)
    if probability.suffix.lower() not in PROBABILITY_SUFFIXES:
        raise DetectOutputError(
            f"the probability output {probability} must be a GeoTIFF: give it a .tif name"
        )
    if same_file(probability, vector):
        raise DetectOutputError(f"{vector} is given as both the vector and the raster output")
    check_output_target(probability, overwrite)
    return vector, probability


def _raster_band_count(path: PathLike) -> int:
    with gdal_exceptions():
        return open_raster(path).RasterCount


def resolve_bands(
    before: PathLike,
    after: PathLike,
    model_bands: Sequence[int],
    bands: Optional[Sequence[int]] = None,
) -> list[int]:
    """The 1-based bands to read from both rasters for a model trained on ``model_bands``.

    Default: the model's own band indices. An explicit ``bands`` must have as many entries as
    the model has input bands.

    Raises:
        RasterInputError: the band count does not fit the model (the message names both numbers
            and suggests ``--bands``), or a raster is unreadable.
    """
    expected = len(model_bands)
    if bands is not None:
        chosen = [int(b) for b in bands]
        if len(chosen) != expected:
            raise RasterInputError(
                f"--bands selects {len(chosen)} band(s) ({_csv(chosen)}) but the model was "
                f"trained on {expected} band(s) per date: give {expected} band indices, e.g. "
                f"--bands {_csv(range(1, expected + 1))}"
            )
        return chosen
    chosen = [int(b) for b in model_bands]
    for path in (before, after):
        count = _raster_band_count(path)
        if max(chosen) > count:
            example = _csv(min(i, count) for i in range(1, expected + 1))
            raise RasterInputError(
                f"the model expects {expected} band(s) per date (bands {_csv(chosen)} of its "
                f"training images) but {path} has {count} band(s): choose {expected} of its bands "
                f"with --bands (e.g. --bands {example})"
            )
    return chosen


def _csv(values: Any) -> str:
    return ",".join(str(v) for v in values)


def check_numbers(
    tile_size: Optional[int],
    overlap_px: Optional[int],
    batch_size: int,
    threshold: Optional[float],
    min_area_m2: float = 0.0,
    simplify_m: float = 0.0,
) -> None:
    """Detect's numbers against `kdmsi.options.NUMBERS` (None: not given yet, as before the
    model is read), and the overlap against the tile.

    Raises:
        OptionError: naming the option and its range.
    """
    check_option_values(
        {
            "tile_size": tile_size,
            "overlap": overlap_px,
            "batch_size": batch_size,
            "threshold": threshold,
            "min_area": min_area_m2,
            "simplify": simplify_m,
        }
    )
    check_overlap(tile_size, overlap_px)


def check_band_count(model_bands: int, read_bands: int) -> None:
    """The bands read per date against the bands the model normalises.

    Raises:
        RasterInputError: they differ (the message says how many to choose).
    """
    if model_bands != read_bands:
        raise RasterInputError(
            f"the model normalises {model_bands} band(s) per date but {read_bands} are read: "
            f"choose {model_bands} bands with --bands (detect-batch: the pair list's bands)"
        )


def check_overlap(tile_size: Optional[int], overlap_px: Optional[int]) -> None:
    """The overlap against the tile (once both are known: a model's tile size is known only
    after it is read).

    Raises:
        OptionError: an overlap of a whole tile or more.
    """
    if tile_size is not None and overlap_px is not None and overlap_px >= tile_size:
        raise OptionError(
            f"--overlap must be from 0 to the tile size - 1 ({tile_size - 1}), not {overlap_px}"
        )


def check_detect_options(
    *,
    device: str,
    tile_size: Optional[int],
    overlap_px: Optional[int],
    batch_size: int,
    threshold: Optional[float],
    min_area_m2: float,
    simplify_m: float,
    bands: Optional[Sequence[int]],
    scales: Optional[Sequence[float]],
    bounds: Optional[Sequence[float]],
) -> None:
    """Every option of `detect_changes` that can be checked before opening a file (the CLI,
    the Processing algorithm and the dialog all pass through here).

    Raises:
        OptionError: naming the option and what to give.
    """
    check_device(device)
    check_numbers(tile_size, overlap_px, batch_size, threshold, min_area_m2, simplify_m)
    if bands is not None:
        check_bands(bands)
    if scales is not None:
        check_scales(scales)
    if bounds is not None:
        check_bounds(bounds)
