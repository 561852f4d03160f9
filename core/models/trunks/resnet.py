"""ResNet-18/34/50 trunks (torchvision), output stride 16: the KD networks and the detector.

The last stage runs with stride 1 (dilation 2 in its 3x3 convolutions), so a 256x256 input
gives 16x16 features. torchvision only dilates Bottleneck blocks, so BasicBlock trunks
(resnet18/34) are converted here by hand.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torchvision import models as tvm

from ..features import Trunk, TrunkFeatures, adapt_stem_conv
from ..pretrained import load_torchvision_weights

RESNETS = {
    # builder, weights enum, high channels, low channels
    "resnet18": (tvm.resnet18, tvm.ResNet18_Weights, 512, 64),
    "resnet34": (tvm.resnet34, tvm.ResNet34_Weights, 512, 64),
    "resnet50": (tvm.resnet50, tvm.ResNet50_Weights, 2048, 256),
}


class ResNetTrunk(Trunk):
    """A torchvision ResNet without its classifier, output stride 16.

    Args:
        name: one of `RESNETS`.
        weights: see `kdmsi.models.pretrained`: ``imagenet`` (torchvision's, downloaded into
            torch's cache on first use), ``none``/None (random init), a torchvision weights name
            or the path of a local ``.pth`` file holding a torchvision ResNet state dict.
        in_channels: bands per date. With pretrained weights and a band count other than 3, the
            stem's RGB filters are averaged and repeated.
    """

    pyramid_taps = (1, 2, 3, 4)  # layer1..layer4: strides 4, 8, 16, 16
    early_parts = 3  # stem, layer1, layer2 (output stride 8)

    def __init__(self, name: str = "resnet50", weights: Optional[str] = None, in_channels: int = 3):
        super().__init__()
        builder, enum, self.high_channels, self.low_channels = RESNETS[name]
        if name == "resnet50":
            net = builder(weights=None, replace_stride_with_dilation=[False, False, True])
        else:
            net = builder(weights=None)
            _dilate_basic_last_stage(net.layer4)
        load_torchvision_weights(name, net, enum, weights)
        if in_channels != 3:
            net.conv1 = adapt_stem_conv(net.conv1, in_channels)
        self.in_channels = in_channels
        self.pyramid_channels = tuple(self.high_channels // 8 * 2**i for i in range(4))
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )

    def forward(self, x: torch.Tensor) -> TrunkFeatures:
        """x: [B, C, H, W] -> low [B, C_low, H/4, W/4] and high [B, C_high, H/16, W/16]."""
        low = self.layer1(self.stem(x))
        high = self.layer4(self.layer3(self.layer2(low)))
        return TrunkFeatures(low=low, high=high)

    def stages(self) -> list[nn.Module]:
        """stem, layer1..layer4."""
        return [self.stem, self.layer1, self.layer2, self.layer3, self.layer4]


def build(name: str, weights: Optional[str] = None, in_channels: int = 3) -> ResNetTrunk:
    return ResNetTrunk(name, weights=weights, in_channels=in_channels)


def _dilate_basic_last_stage(layer: nn.Sequential) -> None:
    """Turn a BasicBlock stage of stride 2 into stride 1 with dilation 2 (output stride 16)."""
    first = layer[0]
    first.conv1.stride = (1, 1)
    if first.downsample is not None:
        first.downsample[0].stride = (1, 1)
    for i, block in enumerate(layer):
        convs = [block.conv2] if i == 0 else [block.conv1, block.conv2]
        for conv in convs:
            conv.dilation, conv.padding = (2, 2), (2, 2)
