"""The detect path: a before/after raster pair and a model file -> change polygons.

Data flow (see ARCHITECTURE.md, "The detect path")::

    align_pair (after warped onto the before grid, intersection only)
      -> tile grid with overlap
      -> windows read in a background thread, one batch ahead of the model; uint8 (or
         stretched) pixels converted once, straight into a preallocated contiguous float32
         batch: a * x + b per band (stretch + normalisation fused, never float64)
      -> run_batch(pre, post) -> probability      (torch.inference_mode, or ONNX Runtime)
      -> probability x blend_window x valid mask -> StitchAccumulator (tile-row strips)
      -> finished row strips -> probability GeoTIFF (temporary path)
      -> threshold + nodata mask -> polygons streamed from disk to the vector output
      -> both moved into place at the end (`kdmsi.geo.atomic.atomic_output`)

The tile loop only knows a `BatchRunner` (numpy batch in, probability out): a torch
``predict(pre, post) -> prob`` callable (`Predict`: a detector's `change_probability`, a KD
student with MSI, a test oracle; `detect_with_predictor`) or an exported ONNX model in ONNX
Runtime (`kdmsi.runtime.onnx_model.OnnxPredictor`), through exactly the same code
(`detect_with_runner`).
`detect_changes` picks the runtime (``runtime=auto|torch|onnx``, see `choose_runtime`); with
an ``.onnx`` model file torch is never imported.

Memory is bounded by tile rows, never by the raster: the reader cycles through three
preallocated batches (one in the model, one queued, one being built), the accumulator holds
``(tile_size + stride) x width`` float32 twice, the probability writer one block row;
polygonizing streams strips and polygons from disk (see `kdmsi.geo.vector`). GDAL's own block
cache (``GDAL_CACHEMAX``, bounded by `kdmsi detect`, see `kdmsi.detect.process_tuning`) comes
on top.

Nodata or masked pixels of either date are never change: they are set to the normalised mean
(0) in both dates before the model sees them, they get zero blending weight, so they come out
as nodata in the probability raster, and `polygonize_changes` never marks nodata as change.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Optional, Sequence

from ..progress import CancelCheck, ProgressCallback
from ..runtime.load import LoadedModel, load_runner, model_threshold
from ..runtime.onnx_model import is_onnx_path
from ..types import PathLike
from .checks import check_detect_options, check_outputs, resolve_bands
from .with_runner import (
    DEFAULT_OVERLAP,
    DetectResult,
    detect_grid_tile_count,
    detect_with_runner,
    overlap_or_default,
)

log = logging.getLogger(__name__)


def detect_changes(
    before: PathLike,
    after: PathLike,
    model_path: PathLike,
    out_vector: PathLike,
    out_probability: Optional[PathLike] = None,
    *,
    tile_size: Optional[int] = None,
    overlap_px: Optional[int] = None,
    batch_size: int = 4,
    device: str = "auto",
    runtime: str = "auto",
    precision: str = "fp32",
    threshold: Optional[float] = None,
    min_area_m2: float = 0.0,
    simplify_m: float = 0.0,
    bands: Optional[Sequence[int]] = None,
    scales: Optional[Sequence[float]] = None,
    flip: bool = True,
    bounds: Optional[Sequence[float]] = None,
    overwrite: bool = False,
    progress: Optional[ProgressCallback] = None,
    cancelled: Optional[CancelCheck] = None,
) -> DetectResult:
    """Detect changes between two georeferenced rasters with a kdmsi model file.

    Args:
        before: reference raster; its grid (CRS, pixel size, alignment) is the output grid.
        after: raster warped (bilinear) onto that grid; only the overlap is analysed.
        model_path: a ``.kdmsi`` checkpoint: ``detector`` (DeepLabV3+ softmax change
            probability) or ``kd`` (its student with multiscale sigmoid inference); or an
            ``.onnx`` file from `kdmsi.runtime.onnx_export.export_onnx` (run by ONNX Runtime without
            importing torch; its batch and tile size are fixed).
        out_vector: change polygons (``.gpkg`` recommended; ``.shp``, ``.geojson``, ``.fgb``).
        out_probability: optional float32 probability GeoTIFF on the analysed grid.
        tile_size: tile edge in pixels (default: the model's training / export tile size;
            DeepLabV3+'s image-pooling branch makes a detector's probabilities depend on
            the tile size it sees, so it runs best on tiles of the size it was trained on).
        overlap_px: overlap of neighbouring tiles, blended with a raised-cosine window
            (default: an ONNX model's recorded overlap, else `kdmsi.geo.tiling.default_overlap`:
            64 px, at most a quarter of the tile).
        batch_size: tiles per forward pass (an ONNX model uses its own).
        device: ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:1``, ``mps``.
        runtime: ``auto``, ``torch`` or ``onnx`` (see `choose_runtime`).
        precision: ``fp32``; ``bf16`` or ``fp16`` (CUDA only) run the torch model under
            autocast (mixed precision, for GPUs: on an H200 the detector ran up to 1.15x
            and MSI up to 1.4x faster; README, "On a GPU").
        threshold: prob >= threshold is change (default: the model's, else 0.5).
        min_area_m2: drop smaller polygons (true area).
        simplify_m: polygon simplification tolerance in metres (0: pixel edges).
        bands: 1-based bands of both rasters (default: the model's bands).
        scales, flip: MSI scales (default `kdmsi.inference.msi.DEFAULT_SCALES`) and
            horizontal-flip averaging (``kd`` models only).
        bounds: optional area to analyse, (xmin, ymin, xmax, ymax) in the before raster's CRS
            (default: the whole overlap).
        overwrite: replace existing outputs (checked before any compute).
        progress: ``progress(fraction, message)``; cancelled: polled between batches.

    Raises:
        CheckpointError, OnnxModelError, RuntimeUnavailable, RasterInputError,
        VectorOutputError, DetectOutputError, FileExistsError, OutputNotWritableError,
        Cancelled. Nothing is left at the output paths when any of them is raised.
    """
    check_detect_options(
        device=device,
        tile_size=tile_size,
        overlap_px=overlap_px,
        batch_size=batch_size,
        threshold=threshold,
        min_area_m2=min_area_m2,
        simplify_m=simplify_m,
        bands=bands,
        scales=scales,
        bounds=bounds,
    )
    check_outputs(
        out_vector,
        out_probability,
        overwrite,
        {"--before": before, "--after": after, "--model": model_path},
    )
    with contextlib.ExitStack() as stack:
        model = load_runner(
            model_path,
            runtime,
            device,
            tile_size=tile_size,
            batch_size=batch_size,
            precision=precision,
            scales=scales,
            flip=flip,
            count_tiles=lambda tile: detect_grid_tile_count(
                before, after, bands, bounds, tile, overlap_or_default(overlap_px, tile)
            ),
            stack=stack,
        )
        overlap_px, chosen, threshold = model_defaults(
            model, model_path, before, after, overlap_px=overlap_px, bands=bands,
            threshold=threshold,
        )  # fmt: skip
        log.info("model %s (%s) with %s on %s", model_path, model.kind, model.runtime, model.device)
        return detect_with_runner(
            before,
            after,
            model.run_batch,
            model.normalisation,
            out_vector,
            out_probability,
            bands=chosen,
            tile_size=model.tile_size,
            overlap_px=overlap_px,
            batch_size=model.batch_size or batch_size,
            threshold=threshold,
            min_area_m2=min_area_m2,
            simplify_m=simplify_m,
            bounds=bounds,
            overwrite=overwrite,
            progress=progress,
            cancelled=cancelled,
            model_info={"model": str(model_path), **model.info},
            device=model.device,
            runtime=model.runtime,
            checked=True,
        )


def model_defaults(
    model: LoadedModel,
    model_path: PathLike,
    before: PathLike,
    after: PathLike,
    *,
    overlap_px: Optional[int],
    bands: Optional[Sequence[int]],
    threshold: Optional[float],
) -> tuple[int, list[int], float]:
    """(overlap, bands, threshold) to run ``model`` with, the model's own where the caller
    gives None: an ONNX export's recorded overlap (else `overlap_or_default`), the bands it
    was trained on (`resolve_bands`: checked against both rasters) and its threshold."""
    if overlap_px is None and is_onnx_path(model_path):  # the overlap it was exported for
        overlap_px = int(model.info.get("onnx_overlap_px", DEFAULT_OVERLAP))
    overlap = overlap_or_default(overlap_px, model.tile_size)
    chosen = resolve_bands(before, after, model.bands, bands)
    return overlap, chosen, model_threshold(model.threshold) if threshold is None else threshold
