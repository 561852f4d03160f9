"""Trunks with output stride 16, shared by both dates of a Siamese network.

ResNets (KD networks and detector): the last stage runs with stride 1 (dilation 2 in its 3x3
convolutions), so a 256x256 input gives 16x16 features. torchvision only dilates Bottleneck
blocks, so BasicBlock trunks (resnet18/34) are converted here by hand.

EfficientNet-Lite0 (every network, the default; `kdmsi.models.efficientnet`): ImageNet weights
that install offline, about a tenth of resnet50's FLOPs.

MobileNetV3-Large (detector only, `MobileNetTrunk`): torchvision's ``dilated=True`` variant,
whose last stage keeps stride 16; ``low`` is the first stride-4 stage (24 channels), ``high``
the final 960-channel 1x1 conv.

`build_trunk` picks the class by name; every trunk returns `TrunkFeatures` and exposes
``low_channels``, ``high_channels`` and ``in_channels``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn
from torchvision import models as tvm

from ..choices import (
    BACKBONES,
    DETECTOR_BACKBONES,
    EFFICIENTNET_BACKBONES,
    MOBILENET_BACKBONES,
    RESNET_BACKBONES,
)
from .efficientnet import EfficientNetLiteTrunk
from .features import BackboneError, TrunkFeatures, adapt_stem_weight, run_parts, start_state
from .pretrained import (
    IMAGENET,
    check_state,
    normalise_weights,
    read_state_file,
    torchvision_state,
)

RESNETS = {
    "resnet18": (tvm.resnet18, tvm.ResNet18_Weights, 512, 64),
    "resnet34": (tvm.resnet34, tvm.ResNet34_Weights, 512, 64),
    "resnet50": (tvm.resnet50, tvm.ResNet50_Weights, 2048, 256),
}
MOBILENETS = {
    # builder, weights enum, high channels, low channels, index of the first block after low
    "mobilenet_v3_large": (tvm.mobilenet_v3_large, tvm.MobileNet_V3_Large_Weights, 960, 24, 4),
}
EFFICIENTNETS = {"efficientnet_lite0": EfficientNetLiteTrunk}
assert (tuple(RESNETS), tuple(MOBILENETS), tuple(EFFICIENTNETS)) == (
    RESNET_BACKBONES,
    MOBILENET_BACKBONES,
    EFFICIENTNET_BACKBONES,
)


def _torchvision_weights(name: str, net: nn.Module, enum, weights: Optional[str]) -> None:
    """Load ``weights`` (see `kdmsi.models.pretrained`) into the torchvision network ``net``."""
    weights = normalise_weights(weights)
    if weights is None:
        return
    if weights != IMAGENET and Path(weights).is_file():
        state = read_state_file(weights)
        check_state(name, net, state, weights)
    else:
        state = torchvision_state(name, enum, weights)
    net.load_state_dict(state)


class ResNetTrunk(nn.Module):
    """A torchvision ResNet without its classifier, output stride 16.

    Args:
        name: one of `RESNETS`.
        weights: see `kdmsi.models.pretrained`: ``imagenet`` (torchvision's, downloaded into
            torch's cache on first use), ``none``/None (random init), a torchvision weights name
            or the path of a local ``.pth`` file holding a torchvision ResNet state dict.
        in_channels: bands per date. With pretrained weights and a band count other than 3, the
            stem's RGB filters are averaged and repeated.
    """

    def __init__(self, name: str = "resnet50", weights: Optional[str] = None, in_channels: int = 3):
        super().__init__()
        if name in MOBILENETS:
            raise BackboneError(
                f"{name} is a detector backbone only: the KD teacher/student take one of "
                f"{', '.join(BACKBONES)}"
            )
        if name not in RESNETS:
            raise BackboneError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
        builder, enum, self.high_channels, self.low_channels = RESNETS[name]
        if name == "resnet50":
            net = builder(weights=None, replace_stride_with_dilation=[False, False, True])
        else:
            net = builder(weights=None)
            _dilate_basic_last_stage(net.layer4)
        _torchvision_weights(name, net, enum, weights)
        if in_channels != 3:
            net.conv1 = _adapt_stem(net.conv1, in_channels)
        self.in_channels = in_channels
        self.pyramid_channels = _resnet_widths(self.high_channels)
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

    pyramid_taps = (1, 2, 3, 4)  # parts of `stages()` whose outputs form `pyramid`
    early_parts = 3  # stem, layer1, layer2 (output stride 8): frozen by default in training

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: [B, C, H, W] -> layer1..layer4 outputs (strides 4, 8, 16, 16)."""
        return run_parts(self, start_state(x)).taps

    def stages(self) -> list[nn.Module]:
        """The trunk's parts in input order (stem, layer1..layer4), for freezing or running a
        prefix (`kdmsi.models.features.run_parts`)."""
        return [self.stem, self.layer1, self.layer2, self.layer3, self.layer4]


class MobileNetTrunk(nn.Module):
    """torchvision's MobileNetV3-Large features, dilated to output stride 16 (a light trunk).

    Args: as `ResNetTrunk` (``name`` one of `MOBILENETS`; ``weights`` as there, a local file
    holding a torchvision MobileNetV3-Large). Channels: low 24 (stride 4), high 960 (stride 16).
    About a sixth of resnet18's trunk FLOPs.
    """

    def __init__(
        self, name: str = "mobilenet_v3_large", weights: Optional[str] = None, in_channels: int = 3
    ):
        super().__init__()
        if name not in MOBILENETS:
            raise BackboneError(
                f"unknown backbone {name!r}; choose one of {', '.join(DETECTOR_BACKBONES)}"
            )
        builder, enum, self.high_channels, self.low_channels, split = MOBILENETS[name]
        net = builder(weights=None, dilated=True)
        _torchvision_weights(name, net, enum, weights)
        features = net.features
        if in_channels != 3:
            features[0][0] = _adapt_stem(features[0][0], in_channels)
        self.in_channels = in_channels
        self.low = features[:split]
        self.high = features[split:]

    def forward(self, x: torch.Tensor) -> TrunkFeatures:
        """x: [B, C, H, W] -> low [B, 24, H/4, W/4] and high [B, 960, H/16, W/16]."""
        low = self.low(x)
        return TrunkFeatures(low=low, high=self.high(low))

    early_parts = 7  # the stem and inverted residuals up to output stride 8

    def stages(self) -> list[nn.Module]:
        """The trunk's parts in input order (torchvision's ``features``), for freezing."""
        return [*self.low, *self.high]


def build_trunk(name: str, weights: Optional[str] = None, in_channels: int = 3) -> nn.Module:
    """The trunk for backbone ``name`` (any of `DETECTOR_BACKBONES`) with ``weights`` (see
    `kdmsi.models.pretrained`; None or ``none``: random initialisation).

    Raises:
        BackboneError: unknown name or unusable weights.
    """
    if name in EFFICIENTNETS:
        return EFFICIENTNETS[name](weights=weights, in_channels=in_channels)
    if name in MOBILENETS:
        return MobileNetTrunk(name, weights=weights, in_channels=in_channels)
    if name in RESNETS:
        return ResNetTrunk(name, weights=weights, in_channels=in_channels)
    raise BackboneError(f"unknown backbone {name!r}; choose one of {', '.join(DETECTOR_BACKBONES)}")


def _resnet_widths(high_channels: int) -> tuple[int, int, int, int]:
    """Output channels of layer1..layer4 of a ResNet whose layer4 gives ``high_channels``."""
    return tuple(high_channels // 8 * 2**i for i in range(4))


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


def _adapt_stem(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """The first conv for ``in_channels`` bands: RGB filters averaged and repeated."""
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        bias=False,
    )
    with torch.no_grad():
        new.weight.copy_(adapt_stem_weight(conv.weight, in_channels))
    return new
