"""The detect path: a before/after raster pair and a model file -> change polygons.

Data flow (see ARCHITECTURE.md, "The detect path")::

    align_pair (after warped onto the before grid, intersection only)
      -> tile grid with overlap
      -> windows read, stretched and normalised in a background thread, one batch ahead
      -> batched predict(pre, post) -> probability            (torch.inference_mode)
      -> probability x blend_window x valid mask -> StitchAccumulator
      -> finished row strips -> probability GeoTIFF (temporary path)
      -> threshold + nodata mask -> polygonize_changes -> write_vector (temporary path)
      -> both moved into place at the end (`kdmsi.atomic.atomic_output`)

The tile loop only knows a ``predict(pre, post) -> prob`` callable (`Predict`), so a detector
(`SiameseDeepLabV3Plus.change_probability`), a KD student with MSI, or any test oracle run
through exactly the same code (`detect_with_predictor`).

Memory is bounded by tile rows, never by the raster: the reader holds at most two batches
(one queued, one being built), the accumulator ``(tile_size + stride) x width`` float32 twice,
the probability writer one block row; polygonizing streams strips from disk (see
`kdmsi.vector`). GDAL's own block cache (``GDAL_CACHEMAX``) comes on top.

Nodata or masked pixels of either date are never change: they are set to the normalised mean
(0) in both dates before the model sees them, they get zero blending weight, so they come out
as nodata in the probability raster, and `polygonize_changes` never marks nodata as change.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import queue
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from . import __version__
from .atomic import atomic_output, check_output_target
from .checkpoint import load_checkpoint
from .data import Normalisation
from .inference import DEFAULT_SCALES, multiscale_sigmoid_inference, pick_device
from .progress import CancelCheck, ProgressCallback, check_cancel, report, sub_progress
from .raster import (
    AlignedPair,
    BandStretch,
    RasterInputError,
    align_pair,
    create_probability_raster,
    finalize_probability_raster,
    gdal_exceptions,
    open_raster,
    pair_stretches,
)
from .tiling import StitchAccumulator, Window, blend_window, crop_tile, pad_tile, tile_grid
from .vector import polygonize_changes, vector_driver, write_vector

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
Predict = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``predict(pre, post)``: normalised float32 [B, C, T, T] pairs -> probability [B, 1, T, T]."""

DEFAULT_THRESHOLD = 0.5
PROBABILITY_SUFFIXES = (".tif", ".tiff")
PREFETCH_BATCHES = 1  # batches queued ahead of the model (one more is being built)
_SCAN_PER_BATCH = 16  # hand over a (possibly short) batch after this many tiles per slot

# Share of the whole job's progress per stage.
_ALIGN_END, _TILES_END, _OVERVIEWS_END, _POLYGONS_END = 0.03, 0.85, 0.88, 0.98


class DetectOutputError(ValueError):
    """An output path that cannot be used as asked (wrong extension, the same file twice)."""


@dataclass(frozen=True)
class DetectResult:
    """What `detect_changes` produced.

    Attributes:
        vector_path: the change polygons (attributes id, area_m2, mean_prob, max_prob).
        probability_path: the probability GeoTIFF, or None when none was asked for.
        polygon_count: number of change polygons written.
        threshold: probability threshold used (prob >= threshold is change).
        stretch: ``{"before": BandStretch.to_dict(), "after": ...}`` applied to the inputs.
        timing_s: seconds per stage (align, stretch, tiles, predict, overviews, polygonize,
            write) and ``total``; ``predict`` is the model's share of ``tiles``.
        width, height: size of the analysed grid (the before grid over the overlap).
        tiles, tiles_computed: tiles in the grid / tiles with a valid pixel (the others skip
            the model).
        device: the torch device the model ran on.
        model_kind: ``detector``, ``kd`` or ``custom`` (a caller's predict callable).
        bands: 1-based bands read from both rasters.
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

    @property
    def pixels_per_second(self) -> float:
        """End-to-end throughput: analysed pixels / total seconds."""
        return self.width * self.height / max(self.timing_s.get("total", 0.0), 1e-9)


# ------------------------------------------------------------------------------ predictors


def model_predictor(
    model: torch.nn.Module,
    kind: str,
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = True,
) -> Predict:
    """The `Predict` callable of a loaded network.

    Args:
        model: a network in eval mode on the device the batches will be on.
        kind: ``detector`` (softmax change probability of `SiameseDeepLabV3Plus`) or ``kd``
            (the KD student with multiscale sigmoid inference over ``scales`` and ``flip``).
    """
    if kind == "detector":
        return model.change_probability
    if kind == "kd":
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"scales must be positive numbers, got {list(scales)}")
        return functools.partial(
            multiscale_sigmoid_inference, model, scales=tuple(float(s) for s in scales), flip=flip
        )
    raise ValueError(f"unknown model kind {kind!r}; expected 'detector' or 'kd'")


# ------------------------------------------------------------------------- input checking


def check_outputs(
    out_vector: PathLike, out_probability: Optional[PathLike], overwrite: bool
) -> tuple[Path, Optional[Path]]:
    """Check both outputs before any compute; return them as Paths.

    Raises:
        VectorOutputError: unknown vector extension.
        DetectOutputError: probability not ``.tif``/``.tiff``, or both paths the same file.
        FileExistsError, FileNotFoundError, IsADirectoryError, OutputNotWritableError: see
            `kdmsi.atomic.check_output_target`.
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


def _check_numbers(tile_size: int, overlap_px: int, batch_size: int, threshold: float) -> None:
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


# ----------------------------------------------------------------------------- tile reading


@dataclass
class _Batch:
    """Tiles ready for the model.

    Attributes:
        windows: the tiles, in grid order.
        pre, post: normalised float32 [B, C, T, T] (None when the batch is empty).
        valid: bool [h, w] per window.
        scanned: tiles of the grid read so far (computed or skipped).
    """

    windows: list[Window]
    pre: Optional[np.ndarray]
    post: Optional[np.ndarray]
    valid: list[np.ndarray]
    scanned: int


@dataclass(frozen=True)
class TilePreparer:
    """Reads one window of the pair and turns it into network input.

    ``__call__(window)`` -> (pre, post, valid): pre/post float32 [C, T, T] stretched to
    [0, 255] and normalised with the checkpoint's mean/std (padded to the full tile), invalid
    pixels set to 0 in both dates; valid bool [h, w]. None when no pixel is valid.
    """

    pair: AlignedPair
    stretches: tuple[BandStretch, BandStretch]
    normalisation: Normalisation

    def __call__(self, window: Window) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        try:
            pre, post, valid = self.pair.read_window(window.x, window.y, window.w, window.h)
        except RuntimeError as exc:
            raise RasterInputError(
                f"cannot read pixels x={window.x} y={window.y} ({window.w} x {window.h}) of "
                f"{self.pair.before_path} / {self.pair.after_path}: {exc}"
            ) from exc
        if not valid.any():
            return None
        return (
            pad_tile(self._network_input(self.stretches[0], pre, valid), window),
            pad_tile(self._network_input(self.stretches[1], post, valid), window),
            valid,
        )

    def _network_input(
        self, stretch: BandStretch, pixels: np.ndarray, valid: np.ndarray
    ) -> np.ndarray:
        """[C, h, w] raster values -> float32 [C, h, w] ``(x / 255 - mean) / std``, 0 if invalid."""
        x = stretch.apply(pixels)  # float32 copy in [0, 255]
        mean = np.asarray(self.normalisation.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.normalisation.std, dtype=np.float32)[:, None, None]
        x *= np.float32(1.0 / 255.0)
        x -= mean
        x /= std
        if not valid.all():
            x[:, ~valid] = 0.0
        return x


class TileReader:
    """Prepares batches in a background thread, one batch ahead of the model.

    Iterate over it inside a ``with`` block; leaving the block (normally, on an error, or on a
    cancel) stops and joins the thread. An error in the thread is re-raised by the iteration.
    GDAL datasets of the pair are only touched by the reader thread while it runs.
    """

    _END = object()

    def __init__(
        self,
        prepare: Callable[[Window], Optional[tuple[np.ndarray, np.ndarray, np.ndarray]]],
        windows: Sequence[Window],
        batch_size: int,
        prefetch: int = PREFETCH_BATCHES,
    ):
        self._prepare = prepare
        self._windows = list(windows)
        self._batch_size = batch_size
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kdmsi-tile-reader", daemon=True)

    def __enter__(self) -> TileReader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.05)  # unblock a pending put
        self._thread.join()

    def __iter__(self) -> Iterator[_Batch]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for batch in self._batches():
                if not self._put(batch):
                    return
            self._put(self._END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread
            self._put(exc)

    def _batches(self) -> Iterator[_Batch]:
        tiles: list[tuple[Window, tuple[np.ndarray, np.ndarray, np.ndarray]]] = []
        scanned_since = 0
        for index, window in enumerate(self._windows):
            if self._stop.is_set():
                return
            prepared = self._prepare(window)
            scanned_since += 1
            if prepared is not None:
                tiles.append((window, prepared))
            if len(tiles) == self._batch_size or scanned_since >= _SCAN_PER_BATCH * max(
                1, self._batch_size
            ):
                yield _stack(tiles, index + 1)
                tiles, scanned_since = [], 0
        if tiles or scanned_since:
            yield _stack(tiles, len(self._windows))


def _stack(
    tiles: list[tuple[Window, tuple[np.ndarray, np.ndarray, np.ndarray]]], scanned: int
) -> _Batch:
    if not tiles:
        return _Batch([], None, None, [], scanned)
    return _Batch(
        windows=[w for w, _ in tiles],
        pre=np.stack([t[0] for _, t in tiles]),
        post=np.stack([t[1] for _, t in tiles]),
        valid=[t[2] for _, t in tiles],
        scanned=scanned,
    )


# -------------------------------------------------------------------------------- tile loop


def forward_batch(
    predict: Predict, pre: np.ndarray, post: np.ndarray, device: torch.device
) -> np.ndarray:
    """Run ``predict`` on one batch: float32 [B, C, T, T] pairs -> float32 [B, T, T] on the CPU.

    Raises:
        ValueError: ``predict`` returned something other than [B, 1, T, T].
        MemoryError: the device ran out of memory (with a hint to lower the batch size).
    """
    batch, _, height, width = pre.shape
    try:
        with torch.inference_mode():
            x = torch.from_numpy(pre).to(device, non_blocking=True)
            y = torch.from_numpy(post).to(device, non_blocking=True)
            prob = predict(x, y)
            if tuple(prob.shape) != (batch, 1, height, width):
                raise ValueError(
                    f"the model returned {list(prob.shape)} for a batch of {batch} tiles of "
                    f"{height} x {width}; expected [{batch}, 1, {height}, {width}]"
                )
            return prob[:, 0].float().clamp(0.0, 1.0).cpu().numpy()
    except torch.cuda.OutOfMemoryError as exc:
        raise MemoryError(
            f"the GPU ran out of memory for a batch of {batch} tiles of {height} x {width}: "
            "lower --batch-size or --tile-size"
        ) from exc


@dataclass
class TileLoopStats:
    """Counts and times of one tile loop."""

    tiles: int = 0
    tiles_computed: int = 0
    predict_s: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


def predict_probability_raster(
    pair: AlignedPair,
    predict: Predict,
    prob_path: PathLike,
    prepare: Callable[[Window], Optional[tuple[np.ndarray, np.ndarray, np.ndarray]]],
    *,
    tile_size: int,
    overlap_px: int,
    batch_size: int,
    device: torch.device,
    metadata: Optional[dict[str, Any]] = None,
    progress: Optional[ProgressCallback] = None,
    cancelled: Optional[CancelCheck] = None,
) -> TileLoopStats:
    """Write the stitched change probability of ``pair`` to a new GeoTIFF at ``prob_path``.

    Tiles of ``tile_size`` overlapping by ``overlap_px`` are prepared by ``prepare`` in a
    background thread, run through ``predict`` in batches of ``batch_size`` on ``device``,
    weighted by `blend_window` x the valid mask and accumulated; finished full-width row
    strips are written as soon as no later tile touches them. Pixels no valid tile covers are
    nodata. ``cancelled()`` is checked between batches.

    Raises:
        Cancelled: ``cancelled()`` returned True.
    """
    windows = tile_grid(pair.width, pair.height, tile_size, overlap_px)
    weight = blend_window(tile_size, overlap_px)
    stitch = StitchAccumulator(pair.width, pair.height, tile_size, overlap_px)
    stats = TileLoopStats(tiles=len(windows))
    writer = create_probability_raster(
        prob_path, pair.width, pair.height, pair.geotransform, pair.crs_wkt, metadata
    )
    try:
        with TileReader(prepare, windows, batch_size) as reader:
            for batch in reader:
                check_cancel(cancelled)
                if batch.windows:
                    start = time.perf_counter()
                    probs = forward_batch(predict, batch.pre, batch.post, device)
                    stats.predict_s += time.perf_counter() - start
                    stats.tiles_computed += len(batch.windows)
                    for window, prob, valid in zip(batch.windows, probs, batch.valid):
                        _write_strips(writer, stitch.pop_finished(window.y))
                        tile_weight = crop_tile(weight, window) * valid
                        stitch.add(window, crop_tile(prob, window), tile_weight)
                report(
                    progress, batch.scanned / len(windows), f"tile {batch.scanned}/{len(windows)}"
                )
        _write_strips(writer, stitch.flush())
    except BaseException:
        writer.dataset = None  # close without flushing: the caller removes the file
        raise
    writer.close()
    return stats


def _write_strips(writer: Any, strips: Iterator[tuple[int, np.ndarray]]) -> None:
    for y0, strip in strips:
        try:
            writer.write_rows(y0, strip)
        except RuntimeError as exc:  # GDAL write error: disk full, file gone...
            raise OSError(f"writing the probability raster {writer.path} failed: {exc}") from exc


# ---------------------------------------------------------------------------------- detect


def detect_changes(
    before: PathLike,
    after: PathLike,
    model_path: PathLike,
    out_vector: PathLike,
    out_probability: Optional[PathLike] = None,
    *,
    tile_size: Optional[int] = None,
    overlap_px: int = 64,
    batch_size: int = 4,
    device: str = "auto",
    threshold: Optional[float] = None,
    min_area_m2: float = 0.0,
    simplify_m: float = 0.0,
    bands: Optional[Sequence[int]] = None,
    scales: Sequence[float] = DEFAULT_SCALES,
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
            probability) or ``kd`` (its student with multiscale sigmoid inference).
        out_vector: change polygons (``.gpkg`` recommended; ``.shp``, ``.geojson``, ``.fgb``).
        out_probability: optional float32 probability GeoTIFF on the analysed grid.
        tile_size: tile edge in pixels (default: the checkpoint's training tile size).
        overlap_px: overlap of neighbouring tiles, blended with a raised-cosine window.
        batch_size: tiles per forward pass.
        device: ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:1``, ``mps``.
        threshold: prob >= threshold is change (default: the checkpoint's, else 0.5).
        min_area_m2: drop smaller polygons (true area).
        simplify_m: polygon simplification tolerance in metres (0: pixel edges).
        bands: 1-based bands of both rasters (default: the checkpoint's bands).
        scales, flip: MSI scales and horizontal-flip averaging (``kd`` models only).
        bounds: optional area to analyse, (xmin, ymin, xmax, ymax) in the before raster's CRS
            (default: the whole overlap).
        overwrite: replace existing outputs (checked before any compute).
        progress: ``progress(fraction, message)``; cancelled: polled between batches.

    Raises:
        CheckpointError, RasterInputError, VectorOutputError, DetectOutputError,
        FileExistsError, OutputNotWritableError, Cancelled. Nothing is left at the output
        paths when any of them is raised.
    """
    check_outputs(out_vector, out_probability, overwrite)
    torch_device = pick_device(device)
    model, meta = load_checkpoint(model_path, role="auto", device=torch_device)
    chosen = resolve_bands(before, after, meta["bands"], bands)
    if threshold is None:
        threshold = _checkpoint_threshold(meta)
    info = {
        "model": str(model_path),
        "model_kind": meta["kind"],
        "model_config": meta["model"],
        "model_bands": list(meta["bands"]),
    }
    if meta["kind"] == "kd":
        info.update(scales=[float(s) for s in scales], flip=flip)
    log.info("model %s (%s) on %s", model_path, meta["kind"], torch_device)
    return detect_with_predictor(
        before,
        after,
        model_predictor(model, meta["kind"], scales, flip),
        Normalisation.from_dict(meta["normalisation"]),
        out_vector,
        out_probability,
        bands=chosen,
        tile_size=int(tile_size or meta["tile_size"]),
        overlap_px=overlap_px,
        batch_size=batch_size,
        device=torch_device,
        threshold=threshold,
        min_area_m2=min_area_m2,
        simplify_m=simplify_m,
        bounds=bounds,
        overwrite=overwrite,
        progress=progress,
        cancelled=cancelled,
        model_info=info,
    )


def _checkpoint_threshold(meta: dict[str, Any]) -> float:
    value = meta.get("threshold")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict) and isinstance(value.get("threshold"), (int, float)):
        return float(value["threshold"])
    log.warning(
        "the model file records no threshold; using %.2f (set one with --threshold)",
        DEFAULT_THRESHOLD,
    )
    return DEFAULT_THRESHOLD


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
    overlap_px: int = 64,
    batch_size: int = 4,
    device: Union[str, torch.device] = "cpu",
    threshold: float = DEFAULT_THRESHOLD,
    min_area_m2: float = 0.0,
    simplify_m: float = 0.0,
    bounds: Optional[Sequence[float]] = None,
    overwrite: bool = False,
    progress: Optional[ProgressCallback] = None,
    cancelled: Optional[CancelCheck] = None,
    model_info: Optional[dict[str, Any]] = None,
) -> DetectResult:
    """The detect path with any ``predict`` callable (`detect_changes` passes a model's).

    ``predict(pre, post)`` gets normalised float32 [B, C, T, T] tensors on ``device`` (a
    torch device, or a name for `kdmsi.inference.pick_device`) and returns change
    probabilities [B, 1, T, T] in [0, 1]; ``normalisation`` is what the inputs are normalised
    with. ``bands`` default: `kdmsi.raster.default_bands`. ``model_info`` is recorded in the
    outputs' metadata. Other arguments, the outputs and the errors are those of
    `detect_changes`. Without ``out_probability`` the probability raster is a temporary file
    in the system's temporary folder (float32, about 4 bytes per pixel before compression).
    """
    timing: dict[str, float] = {}
    start = time.perf_counter()
    vector_target, prob_target = check_outputs(out_vector, out_probability, overwrite)
    _check_numbers(tile_size, overlap_px, batch_size, threshold)
    torch_device = pick_device(device) if isinstance(device, str) else device
    with contextlib.ExitStack() as stack:
        stack.enter_context(gdal_exceptions())  # on for the reader thread too (process-wide)
        if prob_target is not None:
            prob_temp = stack.enter_context(atomic_output(prob_target, overwrite))
        else:
            scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="kdmsi-detect-"))
            prob_temp = Path(scratch) / "probability.tif"
        vector_temp = stack.enter_context(atomic_output(vector_target, overwrite))

        report(progress, 0.0, "aligning rasters")
        check_cancel(cancelled)
        pair = stack.enter_context(
            _timed(timing, "align", align_pair, before, after, bands, bounds)
        )
        if len(normalisation.mean) != pair.band_count:
            raise RasterInputError(
                f"the model normalises {len(normalisation.mean)} band(s) per date but "
                f"{pair.band_count} are read: choose {len(normalisation.mean)} bands with --bands"
            )
        report(progress, _ALIGN_END / 2, "computing the band stretch")
        stretches = _timed(timing, "stretch", pair_stretches, pair)
        stretch = {"before": stretches[0].to_dict(), "after": stretches[1].to_dict()}
        metadata = _output_metadata(pair, stretch, threshold, tile_size, overlap_px, model_info)

        report(progress, _ALIGN_END, "detecting")
        tiles_start = time.perf_counter()
        stats = predict_probability_raster(
            pair,
            predict,
            prob_temp,
            TilePreparer(pair, stretches, normalisation),
            tile_size=tile_size,
            overlap_px=overlap_px,
            batch_size=batch_size,
            device=torch_device,
            metadata=metadata,
            progress=sub_progress(progress, _ALIGN_END, _TILES_END),
            cancelled=cancelled,
        )
        timing["tiles"] = time.perf_counter() - tiles_start
        timing["predict"] = stats.predict_s

        if prob_target is not None:
            _timed(
                timing,
                "overviews",
                finalize_probability_raster,
                prob_temp,
                sub_progress(progress, _TILES_END, _OVERVIEWS_END),
                cancelled,
            )
        polygons = _timed(
            timing,
            "polygonize",
            polygonize_changes,
            prob_temp,
            threshold=threshold,
            min_area_m2=min_area_m2,
            simplify_m=simplify_m,
            progress=sub_progress(progress, _OVERVIEWS_END, _POLYGONS_END),
            cancel=cancelled,
        )
        check_cancel(cancelled)
        report(progress, _POLYGONS_END, "writing polygons")
        _timed(
            timing,
            "write",
            _write_polygons,
            polygons,
            vector_temp,
            vector_target,
            pair.crs_wkt,
            metadata,
        )
        width, height, pair_bands = pair.width, pair.height, pair.bands
    timing["total"] = time.perf_counter() - start
    report(progress, 1.0, f"{len(polygons)} change polygons")
    result = DetectResult(
        vector_path=vector_target,
        probability_path=prob_target,
        polygon_count=len(polygons),
        threshold=float(threshold),
        stretch=stretch,
        timing_s={k: round(v, 3) for k, v in timing.items()},
        width=width,
        height=height,
        tiles=stats.tiles,
        tiles_computed=stats.tiles_computed,
        device=str(torch_device),
        model_kind=str((model_info or {}).get("model_kind", "custom")),
        bands=tuple(pair_bands),
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


def _output_metadata(
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


def _write_polygons(
    polygons: Sequence[Any],
    temp: Path,
    target: Path,
    crs_wkt: str,
    metadata: dict[str, Any],
) -> None:
    """Write the polygons to ``temp`` (layer named after ``target``) plus GeoPackage metadata."""
    with _quiet("kdmsi.vector"):  # it would log the temporary name
        write_vector(polygons, temp, crs_wkt, overwrite=True, layer=target.stem)
    if vector_driver(target) == "GPKG":
        from osgeo import ogr

        source = ogr.Open(str(temp), 1)
        source.GetLayer(0).SetMetadata(_metadata_strings(metadata))
        source = None


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
    return {
        f"kdmsi_{k}": v if isinstance(v, str) else json.dumps(v, sort_keys=True)
        for k, v in metadata.items()
    }


# ------------------------------------------------------------------------------- tile grid


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


__all__ = [
    "DEFAULT_THRESHOLD",
    "DetectOutputError",
    "DetectResult",
    "Predict",
    "TilePreparer",
    "TileReader",
    "check_outputs",
    "detect_changes",
    "detect_with_predictor",
    "forward_batch",
    "make_tile_grid",
    "model_predictor",
    "predict_probability_raster",
    "resolve_bands",
]
