"""Batch runners: the one interface of the tile loop (normalised numpy pairs in, probability
out), with torch (autocast for bf16/fp16 on CUDA) or with ONNX Runtime. Torch is imported
lazily."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np

from ..choices import PRECISIONS
from .onnx_model import (
    OnnxModelError,
    OnnxPredictor,
)

if TYPE_CHECKING:
    import torch

Predict = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]
"""``predict(pre, post)``: normalised float32 [B, C, T, T] pairs -> probability [B, 1, T, T]."""
BatchRunner = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``run(pre, post)``: normalised float32 [n, C, T, T] numpy pairs -> probability float32
[n, T, T] in [0, 1] (`torch_batch_runner`, `onnx_batch_runner`)."""


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
