"""Names of the networks' options, importable without torch (CLI choices, the QGIS dialog).

`kdmsi.models` uses these same tuples, so they are the one list of what exists; the backbones
derive from the registry of trunks (`kdmsi.trunk_registry`).
"""

from __future__ import annotations

from .trunk_registry import DEFAULT_TRUNK, TRUNKS

DETECTOR_BACKBONES = tuple(TRUNKS)
"""Backbones of the detector: every trunk of `kdmsi.trunk_registry.TRUNKS`, in its order (the
plugin's enum parameters index this tuple, so new trunks go at the end)."""
BACKBONES = tuple(name for name in DETECTOR_BACKBONES if not TRUNKS[name].detector_only)
"""Backbones of every network: the KD teacher/student and the detector."""
DEFAULT_BACKBONE = DEFAULT_TRUNK
"""ImageNet-pretrained with weights that install offline (`kdmsi.models.pretrained`), about a
tenth of resnet50's FLOPs."""
FUSIONS = ("abs", "diff", "concat")
"""How the KD networks fuse the two dates' features."""
CAM_HEADS = ("single", "pyramid")
"""The KD networks' head: the paper's over the last stage, or over four stages."""
OPTIMIZERS = ("adamw", "sgd")
"""Optimisers of the training loops (`kdmsi.training.common.make_optimizer`)."""
PRECISIONS = ("fp32", "bf16", "fp16")
"""Precisions of the torch detect path (`kdmsi.runtime.batch_runners.forward_batch`)."""

__all__ = [
    "BACKBONES",
    "CAM_HEADS",
    "DEFAULT_BACKBONE",
    "DETECTOR_BACKBONES",
    "FUSIONS",
    "OPTIMIZERS",
    "PRECISIONS",
]
