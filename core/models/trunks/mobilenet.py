"""MobileNetV3-Large (torchvision), detector only: ``dilated=True``, whose last stage keeps
output stride 16. ``low`` is the first stride-4 stage (24 channels), ``high`` the final
960-channel 1x1 conv. About a sixth of resnet18's trunk FLOPs; it has no feature pyramid, so
the KD networks do not take it."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torchvision import models as tvm

from ..features import Trunk, TrunkFeatures, adapt_stem_conv
from ..pretrained import load_torchvision_weights

# builder, weights enum, high channels, low channels, index of the first block after low
MOBILENETS = {
    "mobilenet_v3_large": (tvm.mobilenet_v3_large, tvm.MobileNet_V3_Large_Weights, 960, 24, 4),
}


class MobileNetTrunk(Trunk):
    """torchvision's MobileNetV3-Large features, dilated to output stride 16.

    Args: as `kdmsi.models.trunks.resnet.ResNetTrunk` (``weights`` a local file holding a
    torchvision MobileNetV3-Large). Channels: low 24 (stride 4), high 960 (stride 16).
    """

    early_parts = 7  # the stem and inverted residuals up to output stride 8

    def __init__(
        self, name: str = "mobilenet_v3_large", weights: Optional[str] = None, in_channels: int = 3
    ):
        super().__init__()
        builder, enum, self.high_channels, self.low_channels, split = MOBILENETS[name]
        net = builder(weights=None, dilated=True)
        load_torchvision_weights(name, net, enum, weights)
        features = net.features
        if in_channels != 3:
            features[0][0] = adapt_stem_conv(features[0][0], in_channels)
        self.in_channels = in_channels
        self.low = features[:split]
        self.high = features[split:]

    def forward(self, x: torch.Tensor) -> TrunkFeatures:
        """x: [B, C, H, W] -> low [B, 24, H/4, W/4] and high [B, 960, H/16, W/16]."""
        low = self.low(x)
        return TrunkFeatures(low=low, high=self.high(low))

    def stages(self) -> list[nn.Module]:
        """torchvision's ``features``, block by block."""
        return [*self.low, *self.high]


def build(name: str, weights: Optional[str] = None, in_channels: int = 3) -> MobileNetTrunk:
    return MobileNetTrunk(name, weights=weights, in_channels=in_channels)
