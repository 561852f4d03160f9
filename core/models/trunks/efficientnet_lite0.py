"""EfficientNet-Lite0 (width 1.0, depth 1.0): the default trunk, ImageNet weights offline.

About a tenth of resnet50's FLOPs; 16 blocks; pyramid channels 24, 40, 112, 1280.
"""

from __future__ import annotations

from typing import Optional

from .efficientnet_lite import EfficientNetLiteTrunk, LiteScaling

SCALING = LiteScaling(width=1.0, depth=1.0)


def build(name: str, weights: Optional[str] = None, in_channels: int = 3) -> EfficientNetLiteTrunk:
    return EfficientNetLiteTrunk(name, SCALING, weights=weights, in_channels=in_channels)
