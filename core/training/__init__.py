"""Training loops: the joint KD teacher/student loop and the detector loop."""

from .cd import CDConfig, CDResult, train_detector
from .kd import KDConfig, KDResult, train_kd

__all__ = ["CDConfig", "CDResult", "KDConfig", "KDResult", "train_detector", "train_kd"]
