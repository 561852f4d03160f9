"""Expected detect speed of a detector backbone on this machine (for choosing a backbone).

`measure_tile_speed` times a random-initialised detector (the weights do not change the cost)
on random tiles: seconds per tile pair of the model's forward, with torch or ONNX Runtime.
`expected_detect_seconds` turns that into a job estimate for a raster size, and
`REFERENCE_SECONDS_PER_TILE` holds figures measured on 2 CPU cores (README, "Detect speed
and memory") to show before anything was measured here.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from ..geo.tiling import tile_starts
from ..trunk_registry import DEFAULT_TRUNK, TRUNKS
from .batch_runners import BatchRunner

OUTSIDE_MODEL_S_PER_TILE = 0.006
"""Wall seconds per tile that `kdmsi detect` spends outside the model's forward (reads,
stitching, probability GeoTIFF, polygons). Measured on 2 quiet cores (`bench/detect_speed.py`,
README "Detect speed and memory"): the tile loop alone 0.9 to 1.7 ms; the whole run 3 to 4 ms
with resnet18 detectors, 4 to 7 ms with the stand-in model's dense synthetic changes (113,088
polygons on 16k^2). Polygons cost more where the change map is ragged (a random-init resnet50's
noise-like map: 12 to 24 ms)."""

REFERENCE_SECONDS_PER_TILE: dict[tuple[str, str], float] = {
    (name, runtime): seconds
    for name, entry in TRUNKS.items()
    for runtime, seconds in zip(("torch", "onnx"), entry.detect_seconds)
}
"""(backbone, runtime) -> seconds per 256 px tile pair of the detector's forward (batch 4,
random init, the head `kdmsi train` gives it: ASPP and decoder 128 channels wide; batch norms
folded and channels-last with torch), measured with `measure_tile_speed` (best of 3 batches)
on 2 otherwise idle CPU cores; from the registry (`kdmsi.trunk_registry.TRUNKS`). A GPU is
tens of times faster (README, "GPU")."""


REFERENCE_TRAIN_SECONDS: dict[str, dict[str, float]] = {
    name: {k: v for k, v in entry.train_seconds._asdict().items() if v is not None}
    for name, entry in TRUNKS.items()
}
"""backbone -> seconds per 256 px tile pair of the default training recipe (`kdmsi.recipe`) on
2 otherwise idle CPU cores: ``kd_step`` (teacher + student), ``msi`` (the pseudo labels' 4
scales x 2 flips) and ``cd_step`` (detector; the only figure of a detector-only trunk),
measured by ``bench/train_speed.py``; from the registry (`kdmsi.trunk_registry.TRUNKS`)."""
TRAIN_OVERHEAD_S_PER_TILE_EPOCH = 0.01
"""Reading and preparing a tagged tile (windowed read, stretch, augmentation), per epoch."""


def expected_training_seconds(
    tiles: int,
    tile_size: int = 256,
    kd_epochs: int = 12,
    cd_epochs: int = 6,
    backbone: str = DEFAULT_TRUNK,
    detector_backbone: str | None = None,
) -> float | None:
    """Expected wall seconds of `kdmsi train` on ``tiles`` tagged tiles of ``tile_size`` px
    on 2 CPU cores (a GPU is tens of times faster), from `REFERENCE_TRAIN_SECONDS`; None
    for a backbone without reference figures. Cost grows with the tiles' pixel count."""
    kd = REFERENCE_TRAIN_SECONDS.get(backbone)
    cd = REFERENCE_TRAIN_SECONDS.get(detector_backbone or backbone)
    if kd is None or cd is None:
        return None
    area = (tile_size / 256.0) ** 2
    per_epoch = TRAIN_OVERHEAD_S_PER_TILE_EPOCH
    return tiles * (
        kd_epochs * (kd["kd_step"] * area + per_epoch)
        + kd["msi"] * area
        + cd_epochs * (cd["cd_step"] * area + per_epoch)
    )


def training_stage_shares(
    kd_backbone: str, cd_backbone: str, kd_epochs: int, cd_epochs: int, end: float = 0.97
) -> tuple[float, float]:
    """Where the KD stage and the pseudo labels end on a training job's progress scale
    (the detector ends at ``end``), in proportion to their expected time, so that the time
    left shown by a progress bar holds over the whole run. Backbones without reference
    figures count as EfficientNet-Lite0."""
    default = REFERENCE_TRAIN_SECONDS[DEFAULT_TRUNK]
    kd = REFERENCE_TRAIN_SECONDS.get(kd_backbone, default)
    cd = REFERENCE_TRAIN_SECONDS.get(cd_backbone, default)
    parts = [kd["kd_step"] * kd_epochs, kd["msi"], cd["cd_step"] * cd_epochs]
    total = sum(parts)
    return end * parts[0] / total, end * (parts[0] + parts[1]) / total


def time_batch_runner(
    run_batch: BatchRunner,
    batch_size: int,
    channels: int,
    tile_size: int,
    repeats: int = 2,
    warmup: int = 1,
    seed: int = 0,
) -> float:
    """Seconds per tile pair of ``run_batch`` on random float32 [batch, C, T, T] pairs.

    ``warmup`` untimed batches first (kernel selection, memory arenas), then the fastest of
    ``repeats`` timed batches (the least disturbed by other processes), divided by the batch.
    """
    rng = np.random.default_rng(seed)
    shape = (batch_size, channels, tile_size, tile_size)
    pre = rng.standard_normal(shape, dtype=np.float32)
    post = rng.standard_normal(shape, dtype=np.float32)
    for _ in range(max(0, warmup)):
        run_batch(pre, post)
    best = float("inf")
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        run_batch(pre, post)
        best = min(best, time.perf_counter() - start)
    return best / batch_size


def measure_tile_speed(
    backbone: str,
    device: str = "cpu",
    tile_size: int = 256,
    runtime: str = "torch",
    batch_size: int = 4,
    in_channels: int = 3,
    repeats: int = 2,
    precision: str = "fp32",
) -> float:
    """Seconds per tile pair of a ``backbone`` detector's forward here (a short timed probe).

    Builds a random-initialised `SiameseDeepLabV3Plus` (no download, no weights file), then
    times one warm-up and ``repeats`` batches of ``batch_size`` random tiles (the fastest
    batch counts). A probe takes a few seconds (resnet50 on 2 CPU cores: about 15 s with
    torch; ``onnx`` adds an export of 5 to 20 s).

    Args:
        backbone: one of `kdmsi.models.DETECTOR_BACKBONES`.
        device: ``cpu``, ``cuda``, ``mps`` or ``auto`` (torch; ONNX Runtime runs on the CPU).
        tile_size: tile edge in pixels.
        runtime: ``torch`` or ``onnx`` (needs onnxruntime and onnx).
        batch_size, in_channels: batch and bands per date of the probe.
        repeats: timed batches.
        precision: ``fp32``, or ``bf16`` / ``fp16`` autocast (torch; see `forward_batch`).

    Raises:
        BackboneError: unknown backbone. RuntimeUnavailable: ``onnx`` without onnxruntime.
        ValueError: unknown runtime.
    """
    import torch

    from .. import recipe
    from ..inference.msi import pick_device
    from ..models import SiameseDeepLabV3Plus
    from ..models.batchnorm_fold import for_inference
    from .batch_runners import model_predictor, onnx_batch_runner, torch_batch_runner

    if runtime not in ("torch", "onnx"):
        raise ValueError(f"runtime must be 'torch' or 'onnx', got {runtime!r}")
    torch.manual_seed(0)
    net = SiameseDeepLabV3Plus(
        backbone,
        in_channels=in_channels,
        head_channels=recipe.DETECTOR_HEAD_CHANNELS,
        separable=recipe.DETECTOR_SEPARABLE,
    ).eval()
    if runtime == "torch":
        torch_device = pick_device(device)
        predict = model_predictor(for_inference(net.to(torch_device)), "detector")
        run = torch_batch_runner(predict, torch_device, precision)
        return time_batch_runner(run, batch_size, in_channels, tile_size, repeats)
    from ..data.normalisation import Normalisation
    from ..models.checkpoint import save_detector
    from .onnx_export import export_onnx
    from .onnx_model import OnnxPredictor, require_onnxruntime

    require_onnxruntime()
    with tempfile.TemporaryDirectory(prefix="kdmsi-speed-") as folder:
        checkpoint = save_detector(
            Path(folder) / "probe.kdmsi",
            net,
            list(range(1, in_channels + 1)),
            Normalisation.default(in_channels),
            tile_size,
        )
        onnx_path = export_onnx(
            checkpoint, Path(folder) / "probe.onnx", batch_size=batch_size, verify=False
        )
        run = onnx_batch_runner(OnnxPredictor(onnx_path))
        return time_batch_runner(run, batch_size, in_channels, tile_size, repeats)


def expected_detect_seconds(
    width: int,
    height: int,
    seconds_per_tile: float,
    tile_size: int = 256,
    overlap_px: int = 64,
) -> float:
    """Expected wall seconds of `kdmsi detect` on a ``width`` x ``height`` px pair.

    Tiles of the grid x (``seconds_per_tile`` + `OUTSIDE_MODEL_S_PER_TILE`, which includes
    typical polygonizing); the overviews of a requested probability GeoTIFF are not included.
    """
    tiles = len(tile_starts(width, tile_size, overlap_px)) * len(
        tile_starts(height, tile_size, overlap_px)
    )
    return tiles * (seconds_per_tile + OUTSIDE_MODEL_S_PER_TILE)


__all__ = [
    "OUTSIDE_MODEL_S_PER_TILE",
    "REFERENCE_SECONDS_PER_TILE",
    "REFERENCE_TRAIN_SECONDS",
    "expected_detect_seconds",
    "expected_training_seconds",
    "training_stage_shares",
    "measure_tile_speed",
    "time_batch_runner",
]
