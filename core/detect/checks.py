"""What detect checks before any compute: its outputs, the bands to read, the numbers asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

from ..geo.atomic import check_output_target
from ..geo.raster import RasterInputError, gdal_exceptions, open_raster
from ..geo.vector import vector_driver

PathLike = Union[str, Path]


PROBABILITY_SUFFIXES = (".tif", ".tiff")


class DetectOutputError(ValueError):
    """An output path that cannot be used as asked (wrong extension, the same file twice)."""


def check_outputs(
    out_vector: PathLike, out_probability: Optional[PathLike], overwrite: bool
) -> tuple[Path, Optional[Path]]:
    """Check both outputs before any compute; return them as Paths.

    Raises:
        VectorOutputError: unknown vector extension.
        DetectOutputError: probability not ``.tif``/``.tiff``, or both paths the same file.
        FileExistsError, FileNotFoundError, IsADirectoryError, OutputNotWritableError: see
            `kdmsi.geo.atomic.check_output_target`.
    """
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
    if probability.resolve() == vector.resolve():
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


def check_numbers(tile_size: int, overlap_px: int, batch_size: int, threshold: float) -> None:
    if tile_size < 16:
        raise ValueError(f"--tile-size must be at least 16 pixels, got {tile_size}")
    if not 0 <= overlap_px < tile_size:
        raise ValueError(
            f"--overlap must be between 0 and the tile size - 1 ({tile_size - 1}), got {overlap_px}"
        )
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"--threshold must be a probability in [0, 1], got {threshold}")
