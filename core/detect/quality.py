"""Detection-time check: do the two rasters differ in quality while the model is not robust to it?

A detector trained on equal-quality pairs degrades when one date is much coarser (or blurred)
than the other; `kdmsi train-hicd` (or the tag training's "the two images differ in quality"
option) trains a quality-robust one. `quality_warning` gives the message to show, or None.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from ..geo.align import pixel_size_ratio
from ..types import PathLike

PIXEL_SIZE_RATIO_LIMIT = 2.0
"""Pixel sizes differing by more than this factor call for a quality-robust model."""


def quality_warning(
    before: PathLike,
    after: PathLike,
    model: Union[PathLike, dict[str, Any]],
    limit: float = PIXEL_SIZE_RATIO_LIMIT,
) -> Optional[str]:
    """A warning when the rasters' pixel sizes differ by more than `limit` times and `model`
    (a checkpoint path or its metadata) is not quality-robust; None otherwise."""
    ratio = pixel_size_ratio(before, after)
    factor = max(ratio, 1.0 / ratio)
    if factor <= limit:
        return None
    # the checkpoint only now: reading it imports torch, which an ONNX run does without
    from ..models.checkpoint import is_quality_robust, read_checkpoint

    meta = model if isinstance(model, dict) else read_checkpoint(model)["metadata"]
    if is_quality_robust(meta):
        return None
    coarser = "after" if ratio > 1 else "before"
    return (
        f"the {coarser} raster's pixels are {factor:.1f} times larger than the other's, and the "
        "model was not trained for pairs of different quality: expect missed or false changes. "
        "Train a quality-robust model (`kdmsi train-hicd`, or tick 'the two images differ in "
        "quality' when training from tags) and select it"
    )
