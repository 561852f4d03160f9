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
Runtime (`kdmsi.runtime.onnx_runner.OnnxPredictor`), through exactly the same code
(`detect_with_runner`).
`detect_changes` picks the runtime (``runtime=auto|torch|onnx``, see `choose_runtime`); with
an ``.onnx`` model file torch is never imported.

Memory is bounded by tile rows, never by the raster: the reader cycles through three
preallocated batches (one in the model, one queued, one being built), the accumulator holds
``(tile_size + stride) x width`` float32 twice, the probability writer one block row;
polygonizing streams strips and polygons from disk (see `kdmsi.geo.vector`). GDAL's own block
cache (``GDAL_CACHEMAX``, bounded by `kdmsi detect`, see `limit_gdal_cache`) comes on top.

Nodata or masked pixels of either date are never change: they are set to the normalised mean
(0) in both dates before the model sees them, they get zero blending weight, so they come out
as nodata in the probability raster, and `polygonize_changes` never marks nodata as change.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np

from .. import __version__
from ..data.normalisation import Normalisation
from ..geo.atomic import atomic_output, check_output_target
from ..geo.metadata import metadata_strings
from ..geo.raster import (
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
from ..geo.tiling import (
    MAX_OVERLAP,
    StitchAccumulator,
    Window,
    blend_window,
    crop_tile,
    default_overlap,
    pad_tile,
    tile_grid,
)
from ..geo.vector import vector_driver, write_change_polygons
from ..progress import CancelCheck, ProgressCallback, check_cancel, report, sub_progress
from ..runtime.load import (
    AUTO_PROBE_MIN_TILES,
    DEFAULT_THRESHOLD,
    BatchRunner,
    Predict,
    choose_runtime,
    forward_batch,
    load_checkpoint_model,
    load_onnx_model,
    model_predictor,
    model_threshold,
    onnx_batch_runner,
    torch_batch_runner,
)
from ..runtime.onnx_runner import RUNTIMES, is_onnx_path, keep_triton_out

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

PROBABILITY_SUFFIXES = (".tif", ".tiff")
PREFETCH_BATCHES = 1  # batches queued ahead of the model (one more is being built)
DEFAULT_OVERLAP = MAX_OVERLAP  # detect's overlap for 256 px tiles and larger
DETECT_GDAL_CACHE_MB = 32
"""GDAL block cache for detect (`tune_process_for_detect`), MB. GDAL's default (5 % of the RAM)
grows to gigabytes on big rasters. A tile row re-reads blocks of the previous one (overlap),
so a smaller cache costs decompression, which runs in the reader thread beside the model:
measured on a full 8k^2 pair (3 bands, both dates, numpy stand-in model), 64 -> 16 MB took
the peak RSS from 247 to 163 MiB, the reader's CPU time from 1.5-1.8 to 1.7-1.9 s for 1,849
tiles (about 1 ms per tile, against 200-900 ms of a model's forward). 32 MB holds one row of
256 px blocks of both 3-band dates at 16k px width."""
_SCAN_PER_BATCH = 16  # hand over a (possibly short) batch after this many tiles per slot

# Share of the whole job's progress per stage.
_ALIGN_END, _TILES_END, _OVERVIEWS_END = 0.03, 0.85, 0.88


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

    @property
    def pixels_per_second(self) -> float:
        """End-to-end throughput: analysed pixels / total seconds."""
        return self.width * self.height / max(self.timing_s.get("total", 0.0), 1e-9)


def tune_process_for_detect(gdal_cache_mb: int = DETECT_GDAL_CACHE_MB) -> None:
    """Process-wide settings that keep detect lean; `kdmsi detect` calls it first thing.

    * GDAL's block cache bounded to ``gdal_cache_mb`` (unless GDAL_CACHEMAX is set or the
      cache is already smaller): three tile rows of blocks of both dates at 16k px width;
      GDAL's default, 5 % of the RAM, grows to gigabytes on big rasters.
    * `release_freed_memory`: freed large arrays go back to the system.
    * ``OMP_WAIT_POLICY=PASSIVE`` unless set, when torch is not imported yet: torch's
      OpenMP threads then sleep between operations instead of spinning, which starved the
      tile reader and other programs (measured on a busy 2-core machine: a resnet18
      forward 1.15 -> 0.61 s per tile). ONNX Runtime gets the same by session option.
    * `kdmsi.runtime.onnx_runner.keep_triton_out`, when torch is not imported yet: ~70 MB less RSS.

    A host application (QGIS) may keep its own settings and skip this.
    """
    from osgeo import gdal

    if "GDAL_CACHEMAX" not in os.environ:
        gdal.SetCacheMax(min(gdal.GetCacheMax(), gdal_cache_mb << 20))
    release_freed_memory()
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        keep_triton_out()


limit_gdal_cache = tune_process_for_detect  # the name an earlier kdmsi used


def release_freed_memory(threshold_bytes: int = 256 << 10) -> bool:
    """Have glibc's malloc serve blocks of ``threshold_bytes`` and more with mmap, returned to
    the system when freed. By default glibc raises that threshold (up to 32 MiB) after the
    first large free, after which tile-sized arrays recycle heap memory that fragments and
    stays resident (measured: 40 MiB less peak RSS). No-op (False) where there is no glibc
    or MALLOC_MMAP_THRESHOLD_ is set."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or not name.startswith("libc.so"):
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold_bytes)))
    except (OSError, AttributeError):
        return False


_M_MMAP_THRESHOLD = -3  # glibc malloc.h


# ------------------------------------------------------------------------- input checking


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
        pre, post: normalised float32 [n, C, T, T], C-contiguous views of the reader's
            preallocated buffers (None when the batch is empty); valid until the next batch
            after this one is taken.
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

    ``prepare_into(window, pre_out, post_out)`` writes both dates, float32 [C, T, T], into the
    given arrays (a slot of a batch) and returns valid bool [h, w], or None (nothing written)
    when no pixel is valid. Values: the band stretch to [0, 255] and the checkpoint's
    normalisation fused into one ``a * x + b`` per band, computed in float32 straight from the
    raster's dtype (uint8 is never copied to a float64 or an intermediate float32 array);
    invalid pixels are 0 in both dates; a window smaller than a tile is padded (reflect).
    ``__call__(window)`` -> (pre, post, valid) does the same into new arrays.
    """

    pair: AlignedPair
    stretches: tuple[BandStretch, BandStretch]
    normalisation: Normalisation

    @functools.cached_property
    def _scale_offset(self) -> tuple[np.ndarray, np.ndarray]:
        scale, offset = self.normalisation.scale_offset()
        return scale[:, None, None], offset[:, None, None]

    def __call__(self, window: Window) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        rows, cols = window.tile_shape
        shape = (self.pair.band_count, rows, cols)
        pre, post = np.empty(shape, np.float32), np.empty(shape, np.float32)
        valid = self.prepare_into(window, pre, post)
        return None if valid is None else (pre, post, valid)

    def prepare_into(
        self, window: Window, pre_out: np.ndarray, post_out: np.ndarray
    ) -> Optional[np.ndarray]:
        """Read ``window`` into ``pre_out``/``post_out`` float32 [C, T, T]; valid or None."""
        try:
            pre, post, valid = self.pair.read_window(window.x, window.y, window.w, window.h)
        except RuntimeError as exc:
            raise RasterInputError(
                f"cannot read pixels x={window.x} y={window.y} ({window.w} x {window.h}) of "
                f"{self.pair.before_path} / {self.pair.after_path}: {exc}"
            ) from exc
        if not valid.any():
            return None
        all_valid = bool(valid.all())
        for stretch, pixels, out in (
            (self.stretches[0], pre, pre_out),
            (self.stretches[1], post, post_out),
        ):
            self._network_input_into(stretch, pixels, valid, all_valid, window, out)
        return valid

    def _network_input_into(
        self,
        stretch: BandStretch,
        pixels: np.ndarray,
        valid: np.ndarray,
        all_valid: bool,
        window: Window,
        out: np.ndarray,
    ) -> None:
        """[C, h, w] raster values -> ``out`` [C, T, T] = (stretched / 255 - mean) / std."""
        scale, offset = self._scale_offset
        target = out[:, : window.h, : window.w]
        if stretch.method == "uint8" and pixels.dtype == np.uint8:
            np.multiply(pixels, scale, out=target)  # uint8 -> float32 in one pass
        else:
            np.multiply(stretch.apply(pixels), scale, out=target)
        target += offset
        if not all_valid:
            target[:, ~valid] = 0.0
        if window.pad_x or window.pad_y:
            out[...] = pad_tile(target, window)


class TileReader:
    """Prepares batches in a background thread, one batch ahead of the model.

    Iterate over it inside a ``with`` block; leaving the block (normally, on an error, or on a
    cancel) stops and joins the thread. An error in the thread is re-raised by the iteration.
    GDAL datasets of the pair are only touched by the reader thread while it runs.

    Batches are filled in place in ``prefetch + 2`` preallocated float32 [batch, C, T, T]
    buffer pairs used in turn (one in the model, ``prefetch`` queued, one being built), so a
    batch's arrays stay untouched until the consumer has asked for the batch after the next.
    `cpu_s` is the reader thread's CPU time once it has finished, `wait_s` the time the
    consumer waited for batches.
    """

    _END = object()

    def __init__(
        self,
        prepare_into: Callable[[Window, np.ndarray, np.ndarray], Optional[np.ndarray]],
        windows: Sequence[Window],
        batch_size: int,
        channels: int,
        tile_size: int,
        prefetch: int = PREFETCH_BATCHES,
    ):
        self._prepare_into = prepare_into
        self._windows = list(windows)
        self._batch_size = batch_size
        prefetch = max(1, prefetch)
        shape = (batch_size, channels, tile_size, tile_size)
        self._buffers = [
            (np.empty(shape, np.float32), np.empty(shape, np.float32)) for _ in range(prefetch + 2)
        ]
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kdmsi-tile-reader", daemon=True)
        self.cpu_s = 0.0
        self.wait_s = 0.0

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
            start = time.perf_counter()
            item = self._queue.get()
            self.wait_s += time.perf_counter() - start
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
        start = time.thread_time()
        try:
            for batch in self._batches():
                if not self._put(batch):
                    return
            self._put(self._END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread
            self._put(exc)
        finally:
            self.cpu_s = time.thread_time() - start

    def _batches(self) -> Iterator[_Batch]:
        count = 0  # batches handed out so far: picks the buffer pair
        pre, post = self._buffers[0]
        windows: list[Window] = []
        valids: list[np.ndarray] = []
        scanned_since = 0
        for index, window in enumerate(self._windows):
            if self._stop.is_set():
                return
            n = len(windows)
            valid = self._prepare_into(window, pre[n], post[n])
            scanned_since += 1
            if valid is not None:
                windows.append(window)
                valids.append(valid)
            if len(windows) == self._batch_size or scanned_since >= _SCAN_PER_BATCH * max(
                1, self._batch_size
            ):
                yield _batch(pre, post, windows, valids, index + 1)
                count += 1
                pre, post = self._buffers[count % len(self._buffers)]
                windows, valids, scanned_since = [], [], 0
        if windows or scanned_since:
            yield _batch(pre, post, windows, valids, len(self._windows))


def _batch(
    pre: np.ndarray,
    post: np.ndarray,
    windows: list[Window],
    valids: list[np.ndarray],
    scanned: int,
) -> _Batch:
    n = len(windows)
    if n == 0:
        return _Batch([], None, None, [], scanned)
    return _Batch(windows, pre[:n], post[:n], valids, scanned)


# -------------------------------------------------------------------------------- tile loop


@dataclass
class TileLoopStats:
    """Counts and times of one tile loop.

    Attributes:
        tiles, tiles_computed: tiles in the grid / tiles run through the model.
        predict_s: wall seconds inside ``run_batch`` (the model's forward).
        reader_cpu_s: CPU seconds of the background reader thread (reads, stretch,
            normalisation), which overlap the model.
        reader_wait_s: seconds the tile loop waited for the reader.
    """

    tiles: int = 0
    tiles_computed: int = 0
    predict_s: float = 0.0
    reader_cpu_s: float = 0.0
    reader_wait_s: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


def predict_probability_raster(
    pair: AlignedPair,
    run_batch: BatchRunner,
    prob_path: PathLike,
    prepare: TilePreparer,
    *,
    tile_size: int,
    overlap_px: int,
    batch_size: int,
    metadata: Optional[dict[str, Any]] = None,
    scratch: bool = False,
    progress: Optional[ProgressCallback] = None,
    cancelled: Optional[CancelCheck] = None,
) -> TileLoopStats:
    """Write the stitched change probability of ``pair`` to a new GeoTIFF at ``prob_path``.

    Tiles of ``tile_size`` overlapping by ``overlap_px`` are prepared by
    ``prepare.prepare_into`` in a background thread, run through ``run_batch`` in batches of
    ``batch_size``, weighted by `blend_window` x the valid mask and accumulated; finished
    full-width row strips are written as soon as no later tile touches them. Pixels no valid
    tile covers are nodata. ``cancelled()`` is checked between batches. ``scratch``: the
    GeoTIFF is a temporary file (cheaper compression, see `create_probability_raster`).

    Raises:
        Cancelled: ``cancelled()`` returned True.
    """
    windows = tile_grid(pair.width, pair.height, tile_size, overlap_px)
    weight = blend_window(tile_size, overlap_px)
    stitch = StitchAccumulator(pair.width, pair.height, tile_size, overlap_px)
    stats = TileLoopStats(tiles=len(windows))
    writer = create_probability_raster(
        prob_path,
        pair.width,
        pair.height,
        pair.geotransform,
        pair.crs_wkt,
        metadata,
        scratch=scratch,
    )
    reader = TileReader(prepare.prepare_into, windows, batch_size, pair.band_count, tile_size)
    try:
        with reader:
            for batch in reader:
                check_cancel(cancelled)
                if batch.windows:
                    start = time.perf_counter()
                    probs = run_batch(batch.pre, batch.post)
                    stats.predict_s += time.perf_counter() - start
                    stats.tiles_computed += len(batch.windows)
                    for window, prob, valid in zip(batch.windows, probs, batch.valid):
                        _write_strips(writer, stitch.pop_finished(window.y, copy=False))
                        tile_weight = crop_tile(weight, window)
                        if not valid.all():
                            tile_weight = tile_weight * valid
                        stitch.add(window, crop_tile(prob, window), tile_weight)
                report(
                    progress, batch.scanned / len(windows), f"tile {batch.scanned}/{len(windows)}"
                )
        _write_strips(writer, stitch.pop_finished(pair.height, copy=False))
    except BaseException:
        writer.dataset = None  # close without flushing: the caller removes the file
        raise
    finally:
        stats.reader_cpu_s, stats.reader_wait_s = reader.cpu_s, reader.wait_s
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
    check_outputs(out_vector, out_probability, overwrite)
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    with contextlib.ExitStack() as stack:
        if is_onnx_path(model_path):
            if precision != "fp32":
                raise ValueError(f"--precision {precision} needs a .kdmsi model, run with torch")
            model = load_onnx_model(model_path, runtime, device, tile_size)
            if overlap_px is None:
                overlap_px = int(model.info.get("onnx_overlap_px", DEFAULT_OVERLAP))
        else:
            model = load_checkpoint_model(
                model_path,
                runtime,
                device,
                tile_size,
                batch_size,
                scales,
                flip,
                lambda tile: _grid_tiles(
                    before, after, bands, bounds, tile, _overlap(overlap_px, tile)
                ),
                stack,
                precision,
            )
            overlap_px = _overlap(overlap_px, model.tile_size)
        chosen = resolve_bands(before, after, model.bands, bands)
        if threshold is None:
            threshold = model_threshold(model.threshold)
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
        )


def _overlap(overlap_px: Optional[int], tile_size: int) -> int:
    return default_overlap(tile_size) if overlap_px is None else int(overlap_px)


def _grid_tiles(
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
    threshold: float = DEFAULT_THRESHOLD,
    min_area_m2: float = 0.0,
    simplify_m: float = 0.0,
    bounds: Optional[Sequence[float]] = None,
    overwrite: bool = False,
    progress: Optional[ProgressCallback] = None,
    cancelled: Optional[CancelCheck] = None,
    model_info: Optional[dict[str, Any]] = None,
) -> DetectResult:
    """The detect path with any torch ``predict`` callable.

    ``predict(pre, post)`` gets normalised float32 [B, C, T, T] tensors on ``device`` (a
    torch device, or a name for `kdmsi.inference.msi.pick_device`) and returns change
    probabilities [B, 1, T, T] in [0, 1]. Other arguments, the outputs and the errors are
    those of `detect_with_runner`.
    """
    from ..inference.msi import pick_device

    torch_device = pick_device(device) if isinstance(device, str) else device
    return detect_with_runner(
        before,
        after,
        torch_batch_runner(predict, torch_device),
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
) -> DetectResult:
    """The detect path with any `BatchRunner` (`detect_changes` passes a model's).

    ``run_batch(pre, post)`` gets normalised float32 [n, C, T, T] numpy arrays (n <=
    ``batch_size``) and returns change probabilities float32 [n, T, T] in [0, 1];
    ``normalisation`` is what the inputs are normalised with. ``bands`` default:
    `kdmsi.geo.raster.default_bands`. ``model_info`` is recorded in the outputs' metadata;
    ``device`` and ``runtime`` in the result. Other arguments, the outputs and the errors are
    those of `detect_changes`. Without ``out_probability`` the probability raster is a
    temporary file in the system's temporary folder (float32, compressed).
    """
    timing: dict[str, float] = {}
    start = time.perf_counter()
    vector_target, prob_target = check_outputs(out_vector, out_probability, overwrite)
    overlap_px = _overlap(overlap_px, tile_size)
    _check_numbers(tile_size, overlap_px, batch_size, threshold)
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
            _write_polygons,
            prob_temp,
            vector_temp,
            vector_target,
            metadata,
            threshold=threshold,
            min_area_m2=min_area_m2,
            simplify_m=simplify_m,
            strip_rows=_polygon_strip_rows(width),
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
    with _quiet("kdmsi.geo.vector"):  # it would log the temporary name
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

        source = ogr.Open(str(temp), 1)
        source.GetLayer(0).SetMetadata(_metadata_strings(metadata))
        source = None
    return count


def _polygon_strip_rows(width: int) -> int:
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
    "BatchRunner",
    "DEFAULT_THRESHOLD",
    "DetectOutputError",
    "DetectResult",
    "Predict",
    "TilePreparer",
    "TileReader",
    "AUTO_PROBE_MIN_TILES",
    "DETECT_GDAL_CACHE_MB",
    "check_outputs",
    "detect_changes",
    "detect_with_predictor",
    "detect_with_runner",
    "choose_runtime",
    "forward_batch",
    "release_freed_memory",
    "tune_process_for_detect",
    "onnx_batch_runner",
    "torch_batch_runner",
    "make_tile_grid",
    "model_predictor",
    "predict_probability_raster",
    "resolve_bands",
]
