"""Names of the networks' options, importable without torch (CLI choices, the QGIS dialog).

`kdmsi.models` uses these same tuples, so they are the one list of what exists.
"""

from __future__ import annotations

EFFICIENTNET_BACKBONES = ("efficientnet_lite0",)
RESNET_BACKBONES = ("resnet18", "resnet34", "resnet50")
MOBILENET_BACKBONES = ("mobilenet_v3_large",)

BACKBONES = (*EFFICIENTNET_BACKBONES, *RESNET_BACKBONES)
"""Backbones of every network: the KD teacher/student and the detector."""
DEFAULT_BACKBONE = "efficientnet_lite0"
"""ImageNet-pretrained with weights that install offline (`kdmsi.models.pretrained`), about a
tenth of resnet50's FLOPs."""
DETECTOR_BACKBONES = (*BACKBONES, *MOBILENET_BACKBONES)
"""Backbones of the detector: the ResNets (resnet50 most accurate) and MobileNetV3-Large (the
smallest file, 11.7 M parameters against resnet18's 16.6 M; on 2 CPU cores about as fast as
resnet18, since the DeepLabV3+ head then dominates:
`kdmsi.runtime.speed.REFERENCE_SECONDS_PER_TILE`)."""
FUSIONS = ("abs", "diff", "concat")
"""How the KD networks fuse the two dates' features."""
CAM_HEADS = ("single", "pyramid")
"""The KD networks' head: the paper's over the last stage, or over four stages."""
OPTIMIZERS = ("adamw", "sgd")
"""Optimisers of the training loops (`kdmsi.training.common.make_optimizer`)."""
PRECISIONS = ("fp32", "bf16", "fp16")
"""Precisions of the torch detect path (`kdmsi.runtime.runners.forward_batch`)."""

__all__ = [
    "BACKBONES",
    "CAM_HEADS",
    "DEFAULT_BACKBONE",
    "DETECTOR_BACKBONES",
    "EFFICIENTNET_BACKBONES",
    "FUSIONS",
    "MOBILENET_BACKBONES",
    "OPTIMIZERS",
    "PRECISIONS",
    "RESNET_BACKBONES",
]
