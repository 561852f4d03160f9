"""Models for the detect path: a model file -> a `BatchRunner` with torch or ONNX Runtime.

`load_checkpoint_model` loads a ``.kdmsi`` file with torch and, when asked (or when
``runtime="auto"`` finds it faster, `choose_runtime`), exports it to ONNX run by ONNX Runtime,
keeping the export and the choice for later runs (`kdmsi.runtime.onnx_cache`); `load_onnx_model`
runs
an exported ``.onnx`` file without importing torch. Torch is imported lazily, inside the
functions that need it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

import numpy as np

from ..choices import PRECISIONS
from ..data.normalisation import Normalisation
from .onnx_runner import (
    OnnxModelError,
    OnnxPredictor,
    RuntimeUnavailable,
    check_tile_size,
    onnxruntime_available,
)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
Predict = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]
"""``predict(pre, post)``: normalised float32 [B, C, T, T] pairs -> probability [B, 1, T, T]."""
BatchRunner = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``run(pre, post)``: normalised float32 [n, C, T, T] numpy pairs -> probability float32
[n, T, T] in [0, 1] (`torch_batch_runner`, `onnx_batch_runner`)."""

DEFAULT_THRESHOLD = 0.5
AUTO_PROBE_MIN_TILES = 256
"""``runtime="auto"`` on a CPU times both runtimes only for grids of at least this many tiles
(export + probe cost about ten batches); smaller grids run with torch."""


def model_predictor(
    model: torch.nn.Module,
    kind: str,
    scales: Optional[Sequence[float]] = None,
    flip: bool = True,
) -> Predict:
    """The `Predict` callable of a loaded network.

    Args:
        model: a network in eval mode on the device the batches will be on.
        kind: ``detector`` (softmax change probability of `SiameseDeepLabV3Plus`) or ``kd``
            (the KD student with multiscale sigmoid inference over ``scales`` and ``flip``;
            default scales `kdmsi.inference.msi.DEFAULT_SCALES`).
    """
    if kind == "detector":
        return model.change_probability
    if kind == "kd":
        from ..inference.msi import DEFAULT_SCALES, multiscale_sigmoid_inference

        scales = DEFAULT_SCALES if scales is None else scales
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"scales must be positive numbers, got {list(scales)}")
        return functools.partial(
            multiscale_sigmoid_inference, model, scales=tuple(float(s) for s in scales), flip=flip
        )
    raise ValueError(f"unknown model kind {kind!r}; expected 'detector' or 'kd'")


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of ``precision`` on ``device`` (None: full float32).

    Raises:
        ValueError: an unknown precision, or fp16 off a CUDA GPU (CPU kernels lack it).
    """
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"--precision fp16 needs a CUDA GPU, not {device}: use bf16 or fp32")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def forward_batch(
    predict: Predict,
    pre: np.ndarray,
    post: np.ndarray,
    device: torch.device,
    precision: str = "fp32",
) -> np.ndarray:
    """Run ``predict`` on one batch: float32 [B, C, T, T] pairs -> float32 [B, T, T] on the CPU.

    ``precision`` ``bf16`` / ``fp16`` runs the model under `torch.autocast` (mixed precision:
    convolutions in half width, reductions and the output in float32).

    Raises:
        ValueError: ``predict`` returned something other than [B, 1, T, T].
        MemoryError: the device ran out of memory (with a hint to lower the batch size).
    """
    import torch

    batch, _, height, width = pre.shape
    dtype = autocast_dtype(precision, device)
    try:
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=dtype, enabled=dtype is not None),
        ):
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


def torch_batch_runner(
    predict: Predict, device: torch.device, precision: str = "fp32"
) -> BatchRunner:
    """The `BatchRunner` of a torch `Predict` callable on ``device`` (see `forward_batch`)."""
    autocast_dtype(precision, device)  # refuse a bad precision before any tile is read
    return functools.partial(forward_batch, predict, device=device, precision=precision)


def onnx_batch_runner(predictor: OnnxPredictor) -> BatchRunner:
    """The `BatchRunner` of an exported model in ONNX Runtime (CPU)."""

    def run(pre: np.ndarray, post: np.ndarray) -> np.ndarray:
        prob = predictor(pre, post)
        if prob.shape != (pre.shape[0], 1, *pre.shape[2:]):
            raise OnnxModelError(
                f"{predictor.path} returned {list(prob.shape)} for {list(pre.shape)}; "
                "expected one probability channel at the input size"
            )
        return np.clip(prob[:, 0], 0.0, 1.0)

    return run


@dataclass
class LoadedModel:
    """A model ready for the tile loop, and what detect records about it.

    Attributes:
        run_batch: the model as a `BatchRunner`.
        kind: ``detector`` or ``kd``.
        bands, normalisation, threshold: as recorded in the model file.
        tile_size: the tile size to run with.
        batch_size: fixed by an ONNX model, else None (the caller's choice).
        runtime: ``torch`` or ``onnx``; device: where it runs (``cpu`` for ONNX Runtime).
        info: what the outputs' metadata records about the model.
    """

    run_batch: BatchRunner
    kind: str
    bands: list[int]
    normalisation: Normalisation
    threshold: Any
    tile_size: int
    batch_size: Optional[int]
    runtime: str
    device: str
    info: dict[str, Any]


def load_onnx_model(
    path: PathLike, runtime: str, device: str, tile_size: Optional[int]
) -> LoadedModel:
    """An exported ``.onnx`` model in ONNX Runtime (torch is not imported)."""
    if runtime == "torch":
        raise RuntimeUnavailable(
            f"{path} is an ONNX model: run it with --runtime onnx (or auto), or give the "
            ".kdmsi file it was exported from to use torch"
        )
    _check_onnx_device(device)
    predictor = OnnxPredictor(path)
    info = predictor.info
    tile = check_tile_size(info, tile_size, str(path))
    meta = info.metadata
    record = {
        "model_kind": info.kind,
        "model_config": meta.get("model"),
        "model_bands": list(info.bands),
        "runtime": "onnx",
        "onnx_batch_size": info.batch_size,
        "onnx_overlap_px": info.overlap_px,
    }
    if info.kind == "kd":
        record.update(scales=meta.get("scales"), flip=meta.get("flip"))
    return LoadedModel(
        run_batch=onnx_batch_runner(predictor),
        kind=info.kind,
        bands=list(info.bands),
        normalisation=info.normalisation,
        threshold=info.threshold,
        tile_size=tile,
        batch_size=info.batch_size,
        runtime="onnx",
        device="cpu",
        info=record,
    )


def _check_onnx_device(device: str) -> None:
    if device not in ("auto", "cpu"):
        raise RuntimeUnavailable(
            f"kdmsi runs ONNX models on the CPU only, not on --device {device}: use "
            "--runtime torch with the .kdmsi model file for a GPU"
        )


def load_checkpoint_model(
    path: PathLike,
    runtime: str,
    device: str,
    tile_size: Optional[int],
    batch_size: int,
    scales: Optional[Sequence[float]],
    flip: bool,
    count_tiles: Callable[[int], int],
    stack: contextlib.ExitStack,
    precision: str = "fp32",
) -> LoadedModel:
    """A ``.kdmsi`` model with torch, or exported to ONNX (see `choose_runtime`).

    ``precision`` other than ``fp32`` (mixed precision, see `forward_batch`) runs torch:
    ``auto`` then never exports, ``onnx`` is refused.

    On the CPU, ``runtime`` ``auto`` and ``onnx`` keep the export and the choice in
    `kdmsi.runtime.onnx_cache`: a later run with the same model file and settings loads the cached
    ONNX model without importing torch (or, if ``auto`` chose torch, skips export and timing).
    A fresh export goes to a temporary folder that lives as long as ``stack``.
    """
    from . import onnx_cache

    if precision != "fp32":
        if runtime == "onnx":
            raise ValueError(
                f"--precision {precision} runs with torch: use --runtime torch (or auto)"
            )
        runtime = "torch"
    if runtime == "onnx":
        _check_onnx_device(device)
    key: Optional[str] = None
    cached: Optional[onnx_cache.CachedExport] = None

    def kept_onnx_model() -> Optional[LoadedModel]:
        """Look up the kept export; the ONNX model when it is what this run should use."""
        nonlocal key, cached
        if runtime == "torch" or not onnxruntime_available():
            return None
        key = onnx_cache.export_key(path, tile_size, batch_size, scales, flip)
        cached = onnx_cache.lookup(key)
        if cached is None or (runtime == "auto" and cached.choice != "onnx"):
            return None
        log.info("runtime %s: the ONNX export of %s kept in %s", runtime, path, cached.onnx_path)
        try:
            return load_onnx_model(cached.onnx_path, "onnx", "cpu", tile_size)
        except OnnxModelError as exc:  # damaged on disk: export again
            log.warning("the kept ONNX export cannot be used (%s); exporting again", exc)
            onnx_cache.discard(key)
            cached = None
            return None

    # certainly the CPU: look before importing torch, which the kept ONNX model runs without
    if (
        runtime == "onnx"
        or device == "cpu"
        or (device == "auto" and not onnx_cache.accelerator_possible())
    ):
        kept = kept_onnx_model()
        if kept is not None:
            return kept

    from ..inference.msi import DEFAULT_SCALES, pick_device
    from ..models.checkpoint import load_checkpoint
    from ..models.fold import for_inference

    torch_device = pick_device("cpu" if runtime == "onnx" else device)
    if key is None and torch_device.type == "cpu":  # a GPU driver but no GPU torch can use
        kept = kept_onnx_model()
        if kept is not None:
            return kept
    model, meta = load_checkpoint(path, role="auto", device=torch_device)
    model = for_inference(model)
    kind = meta["kind"]
    scales = DEFAULT_SCALES if scales is None else tuple(float(s) for s in scales)
    tile = int(tile_size or meta["tile_size"])
    info: dict[str, Any] = {
        "model_kind": kind,
        "model_config": meta["model"],
        "model_bands": list(meta["bands"]),
    }
    if kind == "kd":
        info.update(scales=[float(s) for s in scales], flip=flip)
    predict = model_predictor(model, kind, scales, flip)
    run_torch = torch_batch_runner(predict, torch_device, precision)
    info["precision"] = precision
    loaded = LoadedModel(
        run_batch=run_torch,
        kind=kind,
        bands=list(meta["bands"]),
        normalisation=Normalisation.from_dict(meta["normalisation"]),
        threshold=meta.get("threshold"),
        tile_size=tile,
        batch_size=None,
        runtime="torch",
        device=str(torch_device),
        info={**info, "runtime": "torch"},
    )
    if runtime == "torch" or (runtime == "auto" and torch_device.type != "cpu"):
        return loaded
    if runtime == "auto":
        if cached is not None and cached.choice == "torch":
            log.info("runtime auto: torch, as timed on an earlier run with this model")
            return loaded
        if not onnxruntime_available():
            log.info("runtime auto: onnxruntime is not installed, running with torch")
            return loaded
        if cached is None:
            tiles = count_tiles(tile)
            if tiles < AUTO_PROBE_MIN_TILES:
                log.info("runtime auto: %d tiles (< %d), torch", tiles, AUTO_PROBE_MIN_TILES)
                return loaded
    from .onnx_export import ExportError, ProbabilityModule, export_loaded, max_difference
    from .onnx_runner import ONNX_TOLERANCE

    if cached is not None:
        onnx_path = cached.onnx_path  # exported by `--runtime onnx`, not timed yet
    else:
        # the loaded network: its weights are not read a second time. (Not folding constants
        # would lower the exporter's peak by ~150 MiB for a resnet50, but ONNX Runtime then
        # folds them itself and holds ~90 MiB more for the whole run, and every later run
        # with the kept export would too.)
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kdmsi-onnx-")))
        onnx_path = export_loaded(
            model,
            meta,
            folder / "model.onnx",
            source=Path(path).name,
            tile_size=tile,
            batch_size=batch_size,
            scales=scales,
            flip=flip,
            verify=False,
        )
    predictor = OnnxPredictor(onnx_path)  # checked here, and then used
    module = ProbabilityModule(model, kind, scales, flip).eval()
    difference = max_difference(module, predictor, seed=1)
    if not difference <= ONNX_TOLERANCE:
        message = (
            f"the ONNX export of {path} differs from torch by {difference:.2e} (more than "
            f"{ONNX_TOLERANCE:g})"
        )
        if runtime == "onnx":
            raise ExportError(f"{message}; use --runtime torch for this model")
        log.warning("runtime auto: %s, running with torch", message)
        return loaded
    run_onnx = onnx_batch_runner(predictor)
    if runtime == "auto":
        choice, seconds = choose_runtime(
            {"torch": run_torch, "onnx": run_onnx}, batch_size, len(meta["bands"]), tile
        )
        if key is not None:
            onnx_cache.store(key, onnx_path, choice, seconds)
        if choice == "torch":
            return loaded
    elif key is not None and cached is None:
        onnx_cache.store(key, onnx_path)
    loaded.run_batch, loaded.runtime, loaded.device = run_onnx, "onnx", "cpu"
    loaded.info = {**info, "runtime": "onnx", "onnx_batch_size": batch_size}
    del model, module, run_torch  # the ONNX session holds its own weights
    return loaded


def choose_runtime(
    runners: dict[str, BatchRunner], batch_size: int, channels: int, tile_size: int
) -> tuple[str, dict[str, float]]:
    """``runtime="auto"`` on a CPU: the fastest of ``runners`` on a random batch, and the
    seconds per tile pair of each.

    Each runner gets one warm-up batch and one timed batch of ``batch_size`` random
    [channels, tile_size, tile_size] pairs; the choice and both timings are logged. (``auto``
    picks torch without timing on a GPU, without onnxruntime, or for grids under
    `AUTO_PROBE_MIN_TILES` tiles, where the export and probe would cost more than they save.)
    """
    from .speed import time_batch_runner

    seconds = {
        name: time_batch_runner(run, batch_size, channels, tile_size, repeats=1, warmup=1)
        for name, run in runners.items()
    }
    choice = min(seconds, key=seconds.__getitem__)
    log.info(
        "runtime auto: %s (%s per tile pair)",
        choice,
        ", ".join(f"{name} {1000 * s:.0f} ms" for name, s in seconds.items()),
    )
    return choice, seconds


def model_threshold(value: Any) -> float:
    """The threshold a model records (a number or ``{"threshold": x}``), else the default."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict) and isinstance(value.get("threshold"), (int, float)):
        return float(value["threshold"])
    log.warning(
        "the model file records no threshold; using %.2f (set one with --threshold)",
        DEFAULT_THRESHOLD,
    )
    return DEFAULT_THRESHOLD


__all__ = [
    "AUTO_PROBE_MIN_TILES",
    "BatchRunner",
    "LoadedModel",
    "Predict",
    "choose_runtime",
    "PRECISIONS",
    "autocast_dtype",
    "forward_batch",
    "load_checkpoint_model",
    "load_onnx_model",
    "model_predictor",
    "model_threshold",
    "onnx_batch_runner",
    "torch_batch_runner",
]
