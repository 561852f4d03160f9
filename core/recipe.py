"""The default training recipe, importable without torch (CLI defaults, the QGIS dialog).

Every number here was measured on the real pairs of ``bench/real_pairs.py`` on 2 CPU cores;
the README's "Training recipe" section gives the figures behind each choice. `KDConfig` and
`CDConfig` (`kdmsi.training`) take their defaults from here, so the CLI, the plugin and the
library train the same way.
"""

from __future__ import annotations

WEIGHTS = "imagenet"
"""Trunk weights: ImageNet (`kdmsi.models.pretrained`); ``none`` for random initialisation."""
OPTIMIZER = "adamw"
"""AdamW: SGD at the paper's rates left a pretrained teacher's loss at chance in CPU budgets."""
KD_EPOCHS = 12
KD_LR = 1e-4
CD_EPOCHS = 6
"""The detector fits its pseudo labels within a few epochs (training loss 0.29 after 2, 0.06
after 6, 0.04 after 10 on a LEVIR region); 6 keeps `kdmsi train` on 100 tagged 256 px tiles
under 10 minutes on 2 cores (10 epochs took 653 s)."""
CD_LR = 1e-4
HEAD_LR_MULT = 10.0
"""New layers (CAM head, ASPP and decoder) learn this many times faster than the trunk."""
BATCH_SIZE = 8
CAM_HEAD = "pyramid"
"""The CAM head over four trunk stages (`kdmsi.models.SiameseCAMNet`); ``single`` is the
paper's head over the last stage."""
FREEZE_BN = True
"""Batch norms keep their ImageNet statistics (batches of a few tiles of one region are too
small and too alike to re-estimate them)."""
FEATURE_VOTE = 0.5
"""Weight of the pretrained features' vote in the pseudo labels of `kdmsi train`
(`kdmsi.inference.feature_vote`; 0: the student's MSI alone, as in the paper)."""
DEFAULT_BANDS = (
    "red, green, blue where the rasters say which bands they are (colour interpretation or "
    "band descriptions), else the first three data bands"
)
"""The bands read from a raster pair when none are given (`kdmsi.geo.bands.default_bands`);
a model reads the bands it was trained on."""
TAG_FIELD = "changed"
"""The tile layer's tag field: 1 changed, 0 not changed, NULL untagged (`kdmsi tile-grid`,
the plugin's tagging tools and `kdmsi train` all read this name)."""

GRID_TILE_SIZES = (256, 128, 64)
MIN_GRID_TILES = 64
"""`kdmsi tile-grid` without --tile-size takes the largest of `GRID_TILE_SIZES` that cuts the
raster into at least `MIN_GRID_TILES` tiles (the smallest when none does): a 1024 px region
gets 64 tiles of 128 px instead of 16 of 256. Issue 26, on regions no default was chosen on:
16 tags of 256 px gave a pooled change IoU of 0.200 (below naive differencing's oracle,
0.216), 64 tags of 128 px 0.284 (naive 0.175); the real-pair benchmark's tuning side was
always tagged on the grid this rule gives."""
DETECTOR_HEAD_CHANNELS = 128
DETECTOR_SEPARABLE = False


def grid_tile_count(width: int, height: int, size: int) -> int:
    """How many tiles of ``size`` px (the last ones cut at the edge) cover the raster."""
    return -(-width // size) * -(-height // size)


def grid_tile_size(width: int, height: int) -> int:
    """The default tag-grid tile side in pixels for a ``width`` x ``height`` raster."""
    for size in GRID_TILE_SIZES:
        if grid_tile_count(width, height, size) >= MIN_GRID_TILES:
            return size
    return GRID_TILE_SIZES[-1]


__all__ = [
    "BATCH_SIZE",
    "CAM_HEAD",
    "CD_EPOCHS",
    "CD_LR",
    "DETECTOR_HEAD_CHANNELS",
    "DETECTOR_SEPARABLE",
    "FEATURE_VOTE",
    "FREEZE_BN",
    "GRID_TILE_SIZES",
    "HEAD_LR_MULT",
    "KD_EPOCHS",
    "KD_LR",
    "MIN_GRID_TILES",
    "OPTIMIZER",
    "WEIGHTS",
    "grid_tile_count",
    "grid_tile_size",
]
