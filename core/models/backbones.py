"""Trunks with output stride 16, shared by both dates of a Siamese network.

ResNets (KD networks and detector): the last stage runs with stride 1 (dilation 2 in its 3x3
convolutions), so a 256x256 input gives 16x16 features. torchvision only dilates Bottleneck
blocks, so BasicBlock trunks (resnet18/34) are converted here by hand.

MobileNetV3-Large (detector only, `MobileNetTrunk`): torchvision's ``dilated=True`` variant,
whose last stage keeps stride 16; ``low`` is the first stride-4 stage (24 channels), ``high``
the final 960-channel 1x1 conv.

`build_trunk` picks the class by name; every trunk returns `TrunkFeatures` and exposes
``low_channels``, ``high_channels`` and ``in_channels``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torchvision import models as tvm

from ..choices import BACKBONES, DETECTOR_BACKBONES, MOBILENET_BACKBONES, RESNET_BACKBONES

RESNETS = {
    "resnet18": (tvm.resnet18, tvm.ResNet18_Weights, 512, 64),
    "resnet34": (tvm.resnet34, tvm.ResNet34_Weights, 512, 64),
    "resnet50": (tvm.resnet50, tvm.ResNet50_Weights, 2048, 256),
}
MOBILENETS = {
    # builder, weights enum, high channels, low channels, index of the first block after low
    "mobilenet_v3_large": (tvm.mobilenet_v3_large, tvm.MobileNet_V3_Large_Weights, 960, 24, 4),
}
assert (tuple(RESNETS), tuple(MOBILENETS)) == (RESNET_BACKBONES, MOBILENET_BACKBONES)


class BackboneError(ValueError):
    """A backbone name or weight file that cannot be used."""


@dataclass(frozen=True)
class TrunkFeatures:
    """Features of one date: `low` from layer1 (stride 4), `high` from layer4 (stride 16)."""

    low: torch.Tensor
    high: torch.Tensor


class ResNetTrunk(nn.Module):
    """A torchvision ResNet without its classifier, output stride 16.

    Args:
        name: one of `BACKBONES`.
        weights: None (random init), the name of torchvision ImageNet weights for this backbone
            (``"IMAGENET1K_V1"``, ``"IMAGENET1K_V2"`` or ``"DEFAULT"``; downloaded by torchvision
            into its cache on first use), or the path of a local ``.pth`` file holding a
            torchvision ResNet state dict.
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
        builder, _, self.high_channels, self.low_channels = RESNETS[name]
        if name == "resnet50":
            net = builder(weights=None, replace_stride_with_dilation=[False, False, True])
        else:
            net = builder(weights=None)
            _dilate_basic_last_stage(net.layer4)
        if weights is not None:
            net.load_state_dict(load_backbone_state(name, weights))
        if in_channels != 3:
            net.conv1 = _adapt_stem(net.conv1, in_channels)
        self.in_channels = in_channels
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


class MobileNetTrunk(nn.Module):
    """torchvision's MobileNetV3-Large features, dilated to output stride 16 (a light trunk).

    Args: as `ResNetTrunk` (``name`` one of `MOBILENETS`; ``weights`` a torchvision
    ``MobileNet_V3_Large_Weights`` name or a local ``.pth`` of a torchvision MobileNetV3-Large).
    Channels: low 24 (stride 4), high 960 (stride 16). About a sixth of resnet18's trunk FLOPs.
    """

    def __init__(
        self, name: str = "mobilenet_v3_large", weights: Optional[str] = None, in_channels: int = 3
    ):
        super().__init__()
        if name not in MOBILENETS:
            raise BackboneError(
                f"unknown backbone {name!r}; choose one of {', '.join(DETECTOR_BACKBONES)}"
            )
        builder, _, self.high_channels, self.low_channels, split = MOBILENETS[name]
        net = builder(weights=None, dilated=True)
        if weights is not None:
            net.load_state_dict(load_backbone_state(name, weights))
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


def build_trunk(name: str, weights: Optional[str] = None, in_channels: int = 3) -> nn.Module:
    """The trunk for backbone ``name`` (any of `DETECTOR_BACKBONES`).

    Raises:
        BackboneError: unknown name or unusable weights.
    """
    if name in MOBILENETS:
        return MobileNetTrunk(name, weights=weights, in_channels=in_channels)
    if name in RESNETS:
        return ResNetTrunk(name, weights=weights, in_channels=in_channels)
    raise BackboneError(f"unknown backbone {name!r}; choose one of {', '.join(DETECTOR_BACKBONES)}")


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
        mean = conv.weight.mean(dim=1, keepdim=True)
        new.weight.copy_(mean.repeat(1, in_channels, 1, 1) * 3.0 / in_channels)
    return new


def load_backbone_state(name: str, weights: str) -> dict:
    """The state dict for `weights`: a local file, or a torchvision weights enum member name."""
    if os.path.isfile(weights):
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same answer
            raise BackboneError(f"cannot read backbone weights {weights!r}: {exc}") from exc
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise BackboneError(f"{weights!r} does not hold a state dict")
        return {k.removeprefix("module."): v for k, v in state.items()}
    enum = (RESNETS.get(name) or MOBILENETS[name])[1]
    try:
        member = enum[weights] if weights != "DEFAULT" else enum.DEFAULT
    except KeyError:
        raise BackboneError(
            f"weights {weights!r} is neither a file nor one of "
            f"{', '.join(['DEFAULT', *enum.__members__])} for {name}"
        ) from None
    try:
        return member.get_state_dict(progress=False)
    except Exception as exc:  # noqa: BLE001 - offline machines fail here
        raise BackboneError(
            f"could not fetch torchvision weights {name}/{weights} ({exc}); on an offline machine "
            f"download {member.url} elsewhere and pass the local file instead"
        ) from exc
