"""Model files for the detect path: `load_runner(model_path, runtime, device)` is the one place
where a model file meets a runtime, and returns a `LoadedModel` whose ``run_batch`` is the
`BatchRunner` of the tile loop.

`load_checkpoint_model` loads a ``.kdmsi`` file with torch and, when asked (or when
``runtime="auto"`` finds it faster, `choose_runtime`), exports it to ONNX run by ONNX Runtime,
keeping the export and the choice for later runs (`kdmsi.runtime.onnx_cache`);
`load_onnx_model` runs an exported ``.onnx`` file without importing torch. Torch is imported
lazily, inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..data.normalisation import Normalisation
from ..types import PathLike
from .batch_runners import (
    BatchRunner,
    model_predictor,
    onnx_batch_runner,
    torch_batch_runner,
)
from .onnx_model import (
    RUNTIMES,
    OnnxModelError,
    OnnxPredictor,
    RuntimeUnavailable,
    check_tile_size,
    is_onnx_path,
    onnxruntime_available,
)

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5
AUTO_PROBE_MIN_TILES = 256
"""``runtime="auto"`` on a CPU times both runtimes only for grids of at least this many tiles
(export + probe cost about ten batches); smaller grids run with torch."""


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
    resources: Optional[contextlib.ExitStack] = None
    """What must live as long as the model (a temporary ONNX export), when `load_runner` was
    given no ``stack``."""


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
    from ..models.batchnorm_fold import for_inference
    from ..models.checkpoint import load_checkpoint

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
    from .onnx_model import ONNX_TOLERANCE

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


def load_runner(
    model_path: PathLike,
    runtime: str = "auto",
    device: str = "auto",
    *,
    tile_size: Optional[int] = None,
    batch_size: int = 4,
    precision: str = "fp32",
    scales: Optional[Sequence[float]] = None,
    flip: bool = True,
    count_tiles: Optional[Callable[[int], int]] = None,
    stack: Optional[contextlib.ExitStack] = None,
) -> LoadedModel:
    """A model file ready for the tile loop: the one choice of runtime in kdmsi.

    An ``.onnx`` file runs in ONNX Runtime without torch (`load_onnx_model`); a ``.kdmsi``
    file runs with torch, or as its ONNX export when ``runtime`` is ``onnx`` or when ``auto``
    finds the export faster on this CPU (`load_checkpoint_model`, `choose_runtime`).

    Args:
        model_path: ``.kdmsi`` (detector or KD) or ``.onnx`` model file.
        runtime: ``auto``, ``torch`` or ``onnx``.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps`` (ONNX models: CPU only).
        tile_size: tile edge to run with (default: the model's).
        batch_size: tiles per batch (an ONNX model keeps its own).
        precision: ``fp32``; ``bf16``/``fp16`` run torch under autocast (CUDA only).
        scales, flip: MSI settings of a ``kd`` model.
        count_tiles: tiles of the grid to run for a tile size; ``auto`` times both runtimes
            only for grids of `AUTO_PROBE_MIN_TILES` tiles and more (default: never).
        stack: lifetime of a temporary ONNX export (default: as long as the returned model).

    Returns:
        `LoadedModel`; its ``run_batch(pre, post)`` maps normalised float32 [n, C, T, T]
        pairs to probability float32 [n, T, T].

    Raises:
        ValueError (unknown runtime, mixed precision with ONNX), CheckpointError,
        OnnxModelError, RuntimeUnavailable.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if is_onnx_path(model_path):
        if precision != "fp32":
            raise ValueError(f"--precision {precision} needs a .kdmsi model, run with torch")
        return load_onnx_model(model_path, runtime, device, tile_size)
    resources = contextlib.ExitStack() if stack is None else None
    model = load_checkpoint_model(
        model_path,
        runtime,
        device,
        tile_size,
        batch_size,
        scales,
        flip,
        count_tiles if count_tiles is not None else (lambda tile: 0),
        stack if stack is not None else resources,
        precision,
    )
    model.resources = resources
    return model


def stored_threshold(meta: dict):
    """The threshold a detector file records, read as `kdmsi detect` reads it
    (`model_threshold`), as a `kdmsi.inference.thresholds.ThresholdChoice` naming how it was
    chosen (calibrated at training, `kdmsi.training.calibration`); argmax (0.5) without one."""
    from ..inference.thresholds import ThresholdChoice

    if meta.get("threshold") is None:
        return ThresholdChoice(DEFAULT_THRESHOLD, "argmax")
    training = meta.get("training") or {}
    calibration = (training.get("detector") or {}).get("threshold") or training.get("threshold")
    method = (calibration or {}).get("method")
    return ThresholdChoice(
        model_threshold(meta["threshold"]), f"stored: {method}" if method else "stored"
    )
