"""The texts of the dialog's training tab about time: the expected training time, computed
before the run, and the detector backbones' speed (reference figures, or measured here).

No widget here (the dialog only shows the text): the tagged tiles are counted in the layer, their
side in pixels comes from their extent and the before raster's pixel size, and
`kdmsi.runtime.speed.expected_training_seconds` turns that into seconds on 2 CPU cores.
"""

from __future__ import annotations

import statistics
from typing import Dict, Optional, Sequence


def tagged_tiles(layer) -> tuple[int, list[float]]:
    """(number of features tagged 0 or 1, their extents' longer sides in layer units)."""
    from kdmsi.recipe import TAG_FIELD  # torch-free, bundled

    if layer is None or layer.fields().indexOf(TAG_FIELD) < 0:
        return 0, []
    count, sides = 0, []
    for feature in layer.getFeatures():
        value = feature[TAG_FIELD]
        if value is None or str(value).strip() not in ("0", "1"):
            continue  # NULL (QVariant) and anything else: not tagged
        count += 1
        box = feature.geometry().boundingBox()
        sides.append(max(box.width(), box.height()))
    return count, sides


def tile_pixels(sides: list[float], pixel_size: Optional[float], fallback: int) -> int:
    """The tagged tiles' side in raster pixels (median), or ``fallback`` when unknown."""
    if not sides or not pixel_size or pixel_size <= 0:
        return fallback
    return max(32, int(round(statistics.median(sides) / pixel_size)))


def training_time_text(
    layer,
    pixel_size: Optional[float],
    fallback_tile: int,
    kd_epochs: int,
    cd_epochs: int,
    backbone: str,
    detector_backbone: str,
) -> str:
    """ "Expected training time: ..." for the tagged tiles of ``layer`` (a tile layer whose
    CRS units are those of ``pixel_size``, the before raster's), or what is missing."""
    try:
        from kdmsi.runtime.speed import expected_training_seconds
    except ImportError:  # kdmsi missing: the dialog says what to install elsewhere
        return "Expected training time: unknown until kdmsi is installed"
    count, sides = tagged_tiles(layer)
    if count == 0:
        return "Expected training time: tag some tiles first (field 'changed' = 1 or 0)"
    tile = tile_pixels(sides, pixel_size, fallback_tile)
    seconds = expected_training_seconds(
        count, tile, kd_epochs, cd_epochs, backbone, detector_backbone
    )
    if seconds is None:
        return (
            f"Expected training time: not measured for {backbone} / {detector_backbone} "
            f"({count} tagged tiles of {tile} px)"
        )
    minutes = max(1, round(seconds / 60))
    return (
        f"Expected training time: about {minutes} min for {count} tagged tiles of {tile} px "
        "on 2 CPU cores (a GPU is many times faster)"
    )


def reference_speed_text(backbones: Sequence[str]) -> str:
    """The speed label before anything was measured here: the reference figures of 2 CPU
    cores (`kdmsi.runtime.speed.REFERENCE_SECONDS_PER_TILE`) of ``backbones``, so the choice of
    backbone is informed."""
    try:
        from kdmsi.runtime.speed import REFERENCE_SECONDS_PER_TILE
    except ImportError:  # kdmsi missing: the dialog says what to install elsewhere
        return "Expected speed on this machine: not measured yet"
    reference = REFERENCE_SECONDS_PER_TILE
    parts = [
        f"{name} {reference[(name, 'torch')]:.2f} s ({reference[(name, 'onnx')]:.2f} s ONNX)"
        for name in backbones
        if {(name, "torch"), (name, "onnx")} <= set(reference)
    ]
    return (
        "Not measured here yet. Per tile pair on 2 CPU cores: "
        + ", ".join(parts)
        + ". A GPU is tens of times faster."
    )


def measured_speed_text(speeds: Dict[str, tuple], chosen: str) -> str:
    """The speed label once `kdmsi_qgis.tasks.SpeedProbe` measured here: seconds per tile of
    each backbone (``speeds``: name -> (per tile, whole pair)) and the expected detection time
    of the pair with the ``chosen`` backbone."""
    parts = [f"{name} {tile:.2f} s" for name, (tile, _) in speeds.items()]
    text = "Per tile pair here: " + ", ".join(parts) + "."
    pair_seconds = speeds.get(chosen, (None, None))[1]
    if pair_seconds is not None:
        text += f" Detecting the chosen pair with {chosen}: about {pair_seconds / 60:.1f} min."
    return text
