"""Training loops: the joint KD teacher/student loop, the detector loop, quality-robust HiCD."""

from .cd import CDConfig, CDResult, train_detector
from .hicd import HiCDConfig, HiCDResult, train_hicd
from .kd import KDConfig, KDResult, train_kd

__all__ = [
    "CDConfig",
    "CDResult",
    "HiCDConfig",
    "HiCDResult",
    "KDConfig",
    "KDResult",
    "train_detector",
    "train_hicd",
    "train_kd",
]
