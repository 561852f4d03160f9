"""EfficientNet-Lite2 (width 1.1, depth 1.2): a wider, deeper Lite, ImageNet weights offline.

21 blocks against Lite0's 16; pyramid channels 24, 48, 120, 1280 (stem and head as Lite0's).
"""

from __future__ import annotations

from typing import Optional

from .efficientnet_lite import EfficientNetLiteTrunk, LiteScaling

SCALING = LiteScaling(width=1.1, depth=1.2)


def build(name: str, weights: Optional[str] = None, in_channels: int = 3) -> EfficientNetLiteTrunk:
    return EfficientNetLiteTrunk(name, SCALING, weights=weights, in_channels=in_channels)
