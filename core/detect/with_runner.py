"""Detect with a `BatchRunner` already in hand: align, stretch, the tile loop, overviews and
polygons, each output written atomically. `kdmsi.detect.with_model.detect_changes` picks the
runner from a model file."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

from ..data.normalisation import Normalisation
from ..data.tile_prep import TilePreparer
from ..geo.align import align_pair
from ..geo.probability_raster import finalize_probability_raster
from ..geo.raster import RasterInputError, gdal_exceptions
from ..geo.stretch import pair_stretches
from ..geo.tiling import (
    MAX_OVERLAP,
    default_overlap,
    tile_grid,
)
from ..progress import CancelCheck, ProgressCallback, check_cancel, report, sub_progress
from ..runtime.batch_runners import BatchRunner, Predict, torch_batch_runner
from ..runtime.load import DEFAULT_THRESHOLD
from ..types import PathLike
from .checks import check_band_count, check_numbers, check_outputs, check_overlap
from .outputs import output_metadata, output_temps, polygon_strip_rows, write_polygons
from .tile_loop import predict_probability_raster

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


DEFAULT_OVERLAP = MAX_OVERLAP  # detect's overlap for 256 px tiles and larger

# Share of the whole job's progress per stage.
_ALIGN_END, _TILES_END, _OVERVIEWS_END = 0.03, 0.85, 0.88


@dataclass(frozen=True)
class DetectResult:
    """What `detect_changes` produced.

    Attributes:
        vector_path: the change polygons (attributes id, area_m2, mean_prob, max_prob).
        probability_path: the probability GeoTIFF, or None when none was asked for.
        polygon_count: number of change polygons written.
        threshold: probability threshold used (prob >= threshold is change).
        stretch: ``{"before": BandStretch.to_dict(), "after": ...}`` applied to the inputs.
        timing_s: seconds per stage (align, stretch, tiles, overviews, polygons) and
            ``total``; ``predict`` is the model's share of ``tiles``, ``reader_wait`` the time
            the tile loop waited for the reader thread, ``reader_cpu`` that thread's CPU time.
        width, height: size of the analysed grid (the before grid over the overlap).
        tiles, tiles_computed: tiles in the grid / tiles with a valid pixel (the others skip
            the model).
        device: the torch device the model ran on (``cpu`` for ONNX Runtime).
        model_kind: ``detector``, ``kd`` or ``custom`` (a caller's predict callable).
        bands: 1-based bands read from both rasters.
        runtime: ``torch``, ``onnx`` or ``custom``.
    """

    vector_path: Path
    probability_path: Optional[Path]
    polygon_count: int
    threshold: float
    stretch: dict[str, Any]
    timing_s: dict[str, float]
    width: int
    height: int
    tiles: int
    tiles_computed: int
    device: str
    model_kind: str
    bands: tuple[int, ...]
    runtime: str = "torch"


def overlap_or_default(overlap_px: Optional[int], tile_size: int) -> int:
    return default_overlap(tile_size) if overlap_px is None else int(overlap_px)


def detect_grid_tile_count(
    before: PathLike,
    after: PathLike,
    bands: Optional[Sequence[int]],
    bounds: Optional[Sequence[float]],
    tile_size: int,
    overlap_px: int,
) -> int:
    """Tiles in the detect grid of the pair (opens and aligns it, reads no pixels)."""
    with gdal_exceptions(), align_pair(before, after, bands, bounds) as pair:
        width, height = pair.width, pair.height
    if not 0 <= overlap_px < tile_size:
        return 0  # detect_with_runner reports the bad overlap
    return len(tile_grid(width, height, tile_size, overlap_px))


def detect_with_predictor(
    before: PathLike,
    after: PathLike,
    predict: Predict,
    normalisation: Normalisation,
    out_vector: PathLike,
    out_probability: Optional[PathLike] = None,
    *,
    bands: Optional[Sequence[int]] = None,
    tile_size: int = 256,
    overlap_px: Optional[int] = None,
    batch_size: int = 4,
    device: Union[str, torch.device] = "cpu",
    precision: str = "fp32",
    threshold: float = DEFAULT_THRESHOLD,
    min_area_m2: float = 0.0,
    simplify_m: float = 0.0,
    bounds: Optional[Sequence[float]] = None,
    overwrite: bool = False,
    progress: Optional[ProgressCallback] = None,
    cancelled: Optional[CancelCheck] = None,
    model_info: Optional[dict[str, Any]] = None,
    checked: bool = False,
) -> DetectResult:
    """The detect path with any torch ``predict`` callable.

    ``predict(pre, post)`` gets normalised float32 [B, C, T, T] tensors on ``device`` (a
    torch device, or a name for `kdmsi.inference.msi.pick_device`) and returns change
    probabilities [B, 1, T, T] in [0, 1], under autocast with ``precision`` bf16 / fp16
    (`kdmsi.runtime.batch_runners.forward_batch`). Other arguments, the outputs and the errors are
    those of `detect_with_runner`.
    """
    from ..inference.msi import pick_device

    torch_device = pick_device(device) if isinstance(device, str) else device
    return detect_with_runner(
        before,
        after,
        torch_batch_runner(predict, torch_device, precision),
        normalisation,
        out_vector,
        out_probability,
        bands=bands,
        tile_size=tile_size,
        overlap_px=overlap_px,
        batch_size=batch_size,
        threshold=threshold,
        min_area_m2=min_area_m2,
        simplify_m=simplify_m,
        bounds=bounds,
        overwrite=overwrite,
        progress=progress,
        cancelled=cancelled,
        model_info=model_info,
        device=str(torch_device),
        runtime="torch" if model_info else "custom",
        checked=checked,
    )


def detect_with_runner(
    before: PathLike,
    after: PathLike,
    run_batch: BatchRunner,
    normalisation: Normalisation,
    out_vector: PathLike,
    out_probability: Optional[PathLike] = None,
    *,
    bands: Optional[Sequence[int]] = None,
    tile_size: int = 256,
    overlap_px: Optional[int] = None,
    batch_size: int = 4,
    threshold: float = DEFAULT_THRESHOLD,
    min_area_m2: float = 0.0,
    simplify_m: float = 0.0,
    bounds: Optional[Sequence[float]] = None,
    overwrite: bool = False,
    progress: Optional[ProgressCallback] = None,
    cancelled: Optional[CancelCheck] = None,
    model_info: Optional[dict[str, Any]] = None,
    device: str = "cpu",
    runtime: str = "custom",
    checked: bool = False,
) -> DetectResult:
    """The detect path with any `BatchRunner` (`detect_changes` passes a model's).

    ``run_batch(pre, post)`` gets normalised float32 [n, C, T, T] numpy arrays (n <=
    ``batch_size``) and returns change probabilities float32 [n, T, T] in [0, 1];
    ``normalisation`` is what the inputs are normalised with. ``bands`` default:
    `kdmsi.geo.bands.default_bands`. ``model_info`` is recorded in the outputs' metadata;
    ``device`` and ``runtime`` in the result. Other arguments, the outputs and the errors are
    those of `detect_changes`. Without ``out_probability`` the probability raster is a
    temporary file in the system's temporary folder (float32, compressed). ``checked``: the
    caller (`detect_changes`, `detect_zero_shot`) checked every option and both outputs before
    reading the model, so only the overlap against the model's tile is checked here.
    """
    timing: dict[str, float] = {}
    start = time.perf_counter()
    overlap_px = overlap_or_default(overlap_px, tile_size)
    if checked:
        vector_target = Path(out_vector)
        prob_target = None if out_probability is None else Path(out_probability)
        check_overlap(tile_size, overlap_px)
    else:
        vector_target, prob_target = check_outputs(
            out_vector, out_probability, overwrite, {"--before": before, "--after": after}
        )
        check_numbers(tile_size, overlap_px, batch_size, threshold, min_area_m2, simplify_m)
    with contextlib.ExitStack() as stack:
        stack.enter_context(gdal_exceptions())  # on for the reader thread too (process-wide)
        prob_temp, vector_temp = output_temps(stack, vector_target, prob_target, overwrite)

        report(progress, 0.0, "aligning rasters")
        check_cancel(cancelled)
        pair = stack.enter_context(
            _timed(timing, "align", align_pair, before, after, bands, bounds)
        )
        check_band_count(len(normalisation.mean), pair.band_count)
        report(progress, _ALIGN_END / 2, "computing the band stretch")
        stretches = _timed(timing, "stretch", pair_stretches, pair)
        stretch = {"before": stretches[0].to_dict(), "after": stretches[1].to_dict()}
        metadata = output_metadata(pair, stretch, threshold, tile_size, overlap_px, model_info)

        report(progress, _ALIGN_END, "detecting")
        tiles_start = time.perf_counter()
        stats = predict_probability_raster(
            pair,
            run_batch,
            prob_temp,
            TilePreparer(pair, stretches, normalisation),
            tile_size=tile_size,
            overlap_px=overlap_px,
            batch_size=batch_size,
            metadata=metadata,
            scratch=prob_target is None,
            progress=sub_progress(progress, _ALIGN_END, _TILES_END),
            cancelled=cancelled,
        )
        if stats.tiles_computed == 0:  # an empty map is not a result: say why
            raise RasterInputError(
                f"{before} and {after} share no valid pixel in the analysed area (nodata, "
                "masked or NaN everywhere in one or both): check their nodata values and masks, "
                "or choose another area with --bounds"
            )
        timing["tiles"] = time.perf_counter() - tiles_start
        timing["predict"] = stats.predict_s
        timing["reader_cpu"] = stats.reader_cpu_s
        timing["reader_wait"] = stats.reader_wait_s
        width, height, pair_bands = pair.width, pair.height, pair.bands
        pair.close()  # its datasets' cached blocks go before polygonizing

        if prob_target is not None:
            _timed(
                timing,
                "overviews",
                finalize_probability_raster,
                prob_temp,
                sub_progress(progress, _TILES_END, _OVERVIEWS_END),
                cancelled,
            )
        polygon_count = _timed(
            timing,
            "polygons",
            write_polygons,
            prob_temp,
            vector_temp,
            vector_target,
            metadata,
            threshold=threshold,
            min_area_m2=min_area_m2,
            simplify_m=simplify_m,
            strip_rows=polygon_strip_rows(width),
            progress=sub_progress(progress, _OVERVIEWS_END, 1.0),
            cancelled=cancelled,
        )
        check_cancel(cancelled)
    timing["total"] = time.perf_counter() - start
    report(progress, 1.0, f"{polygon_count} change polygons")
    result = DetectResult(
        vector_path=vector_target,
        probability_path=prob_target,
        polygon_count=polygon_count,
        threshold=float(threshold),
        stretch=stretch,
        timing_s={k: round(v, 3) for k, v in timing.items()},
        width=width,
        height=height,
        tiles=stats.tiles,
        tiles_computed=stats.tiles_computed,
        device=device,
        model_kind=str((model_info or {}).get("model_kind", "custom")),
        bands=tuple(pair_bands),
        runtime=runtime,
    )
    log.info(
        "%d change polygons in %s (%d x %d px, %d tiles, %.1f s)",
        result.polygon_count,
        vector_target,
        width,
        height,
        stats.tiles,
        timing["total"],
    )
    return result


def _timed(timing: dict[str, float], name: str, fn: Callable[..., Any], *args, **kwargs) -> Any:
    start = time.perf_counter()
    try:
        return fn(*args, **kwargs)
    finally:
        timing[name] = time.perf_counter() - start
