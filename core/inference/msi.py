"""Multiscale inference for a logit-map network: MSI (the paper's) and the MI baseline.

`model(pre, post)` must return a logit map [B, 1, h, w] at any input size, as `SiameseCAMNet`
does. Both functions run in no-grad mode and leave the model's train/eval state to the caller.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from ..losses.kd import cam
from ..options import check_device

DEFAULT_SCALES = (0.5, 1.0, 1.5, 2.0)
LogitModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of [B, C, h, w] to [B, C, *size] (align_corners=False, no antialias)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """round(H * s) x round(W * s), at least 1 x 1 (H, W as ints, also while tracing)."""
    return max(1, round(int(height) * scale)), max(1, round(int(width) * scale))


def _per_scale_logits(
    model: LogitModel,
    pre: torch.Tensor,
    post: torch.Tensor,
    scales: Sequence[float],
    flip: bool,
) -> Iterator[torch.Tensor]:
    """Yield, per scale, the logit maps [k*B, 1, H, W] (k = 2 with flip) at input size.

    The plain and flipped pairs of one scale run as one batch; flipped maps are flipped back.
    """
    batch, height, width = pre.shape[0], pre.shape[-2], pre.shape[-1]
    for scale in scales:
        size = scaled_size(height, width, scale)
        pre_s, post_s = resize(pre, size), resize(post, size)
        if flip:
            pre_s = torch.cat([pre_s, pre_s.flip(-1)], dim=0)
            post_s = torch.cat([post_s, post_s.flip(-1)], dim=0)
        g = model(pre_s, post_s)
        if flip:
            g = torch.cat([g[:batch], g[batch:].flip(-1)], dim=0)
        yield g


@torch.no_grad()
def multiscale_sigmoid_inference(
    model: LogitModel,
    pre: torch.Tensor,
    post: torch.Tensor,
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = True,
) -> torch.Tensor:
    """MSI: the average over scales (and flips) of sigmoid(G), each resized to the input size.

    pre, post: [B, C, H, W] -> change probability [B, 1, H, W] in [0, 1]. The sigmoid is taken
    on each map at its own resolution, then the map is resized bilinearly to H x W.
    """
    batch, height, width = pre.shape[0], pre.shape[-2], pre.shape[-1]
    total = pre.new_zeros(batch, 1, height, width)
    count = 0
    for g in _per_scale_logits(model, pre, post, scales, flip):
        maps = resize(torch.sigmoid(g), (height, width))
        total += maps.view(-1, batch, 1, height, width).sum(dim=0)
        count += maps.shape[0] // batch
    return total / count


@torch.no_grad()
def multiscale_inference(
    model: LogitModel,
    pre: torch.Tensor,
    post: torch.Tensor,
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = True,
) -> torch.Tensor:
    """MI baseline: raw logit maps resized to H x W and summed over scales/flips, then `cam`.

    pre, post: [B, C, H, W] -> normalised map [B, 1, H, W] in [0, 1).
    """
    batch, height, width = pre.shape[0], pre.shape[-2], pre.shape[-1]
    total = pre.new_zeros(batch, 1, height, width)
    for g in _per_scale_logits(model, pre, post, scales, flip):
        total += resize(g, (height, width)).view(-1, batch, 1, height, width).sum(dim=0)
    return cam(total)


@torch.no_grad()
def multiscale_maps(
    model: LogitModel,
    pre: torch.Tensor,
    post: torch.Tensor,
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MSI and the MI baseline from one set of forward passes (as the two functions above).

    pre, post: [B, C, H, W] -> (MSI probability, MI map), each [B, 1, H, W].
    """
    batch, height, width = pre.shape[0], pre.shape[-2], pre.shape[-1]
    msi = pre.new_zeros(batch, 1, height, width)
    mi = pre.new_zeros(batch, 1, height, width)
    count = 0
    for g in _per_scale_logits(model, pre, post, scales, flip):
        msi += resize(torch.sigmoid(g), (height, width)).view(-1, batch, 1, height, width).sum(0)
        mi += resize(g, (height, width)).view(-1, batch, 1, height, width).sum(dim=0)
        count += g.shape[0] // batch
    return msi / count, cam(mi)


@torch.no_grad()
def single_scale_probability(
    model: LogitModel, pre: torch.Tensor, post: torch.Tensor
) -> torch.Tensor:
    """The student alone: sigmoid(G) resized to the input size, [B, 1, H, W]."""
    return resize(torch.sigmoid(model(pre, post)), tuple(pre.shape[-2:]))


@torch.no_grad()
def teacher_cam(model: LogitModel, pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
    """The teacher's CAM resized to the input size, [B, 1, H, W] in [0, 1).

    Unlike during training, nothing here zeroes unchanged tiles: at inference the image label
    is unknown, so the CAM is shown as the teacher computes it.
    """
    return resize(cam(model(pre, post)), tuple(pre.shape[-2:]))


def pick_device(requested: str = "auto") -> torch.device:
    """The device to run on: CUDA, then Apple MPS, then CPU for ``auto``; else as requested."""
    requested = check_device(requested)
    if requested != "auto":
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"--device {requested} was asked for, but this PyTorch build sees no CUDA GPU: "
                "use --device cpu (or auto)"
            )
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            raise ValueError(
                f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                f"numbered from 0: choose one of them, or --device auto"
            )
        mps = getattr(torch.backends, "mps", None)
        if device.type == "mps" and not (mps is not None and mps.is_available()):
            raise ValueError(
                "--device mps was asked for, but this machine has no Apple GPU: use --device "
                "cpu (or auto)"
            )
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
