"""Networks: the KD teacher/student (`SiameseCAMNet`) and the detector (`SiameseDeepLabV3Plus`)."""

from ..choices import BACKBONES, DETECTOR_BACKBONES
from .cam_net import FUSIONS, SiameseCAMNet, fuse
from .deeplab import DetectorFeatures, SiameseDeepLabV3Plus
from .features import BackboneError, Trunk
from .trunks import build_trunk

MODEL_KINDS = {"kd": SiameseCAMNet, "detector": SiameseDeepLabV3Plus}


def build_model(kind: str, config: dict):
    """A network of `kind` ('kd' teacher/student or 'detector') from its `config()` dict."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {', '.join(MODEL_KINDS)}")
    return MODEL_KINDS[kind](**config)


__all__ = [
    "BACKBONES",
    "DETECTOR_BACKBONES",
    "FUSIONS",
    "MODEL_KINDS",
    "BackboneError",
    "DetectorFeatures",
    "SiameseCAMNet",
    "SiameseDeepLabV3Plus",
    "Trunk",
    "build_model",
    "build_trunk",
    "fuse",
]
