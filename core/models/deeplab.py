"""SiameseDeepLabV3Plus: the deployed change detector, trained on MSI pseudo labels."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP

from .trunks import build_trunk

ASPP_RATES = (6, 12, 18)
NUM_CLASSES = 2


LOW_PROJ_CHANNELS = 48


def _conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)
    )


def _separable_bn_relu(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
    """Depthwise 3x3 (dilated) + pointwise 1x1, each with batch norm and ReLU: DeepLabV3+'s
    own choice for light encoders (about a ninth of a full 3x3 conv's multiply-adds)."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, padding=dilation, dilation=dilation, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        nn.ReLU(True),
        _conv_bn_relu(cin, cout, 1),
    )


@dataclass
class DetectorFeatures:
    """Intermediate tensors of one `SiameseDeepLabV3Plus` forward pass (for distillation).

    Shapes for input [B, C, H, W] at output stride 16 (any backbone; C_low / C_high are the
    trunk's ``low_channels`` / ``high_channels``: 64 / 512 for resnet18/34, 256 / 2048 for
    resnet50, 24 / 960 for mobilenet_v3_large):
        low_pre, low_post: [B, C_low, H/4, W/4] stride-4 encoder features of each date
            (ResNet layer1).
        high_pre, high_post: [B, C_high, H/16, W/16] last encoder features of each date
            (ResNet layer4).
        change: [B, W + 48, H/4, W/4] fused change features entering the decoder (ASPP output
            of ``head_channels`` W, 256 by default, and the 48-channel low-level difference).
        logits: [B, 2, H, W] class logits.
    """

    low_pre: torch.Tensor
    low_post: torch.Tensor
    high_pre: torch.Tensor
    high_post: torch.Tensor
    change: torch.Tensor
    logits: torch.Tensor


class SiameseDeepLabV3Plus(nn.Module):
    """DeepLabV3+ over the difference of two dates' features.

    One encoder (output stride 16) for both dates; ASPP (rates 6, 12, 18 + image pooling,
    256 channels) on f(pre) - f(post) of layer4; the decoder concatenates the upsampled ASPP
    output with a 48-channel projection of the layer1 difference, applies two 3x3 convs of 256
    and a 1x1 conv to 2 classes (0 = no change, 1 = change), upsampled bilinearly to the input.

    Args:
        backbone: one of `kdmsi.choices.DETECTOR_BACKBONES`.
        in_channels: bands per date.
        weights: trunk weights (`kdmsi.models.pretrained`); None: random init.
        head_channels: width of ASPP and decoder (256 in the paper).
        separable: depthwise-separable 3x3 convs in ASPP and decoder (DeepLabV3+'s light
            variant). With 128 channels this cuts the head from about 7.8 to 0.5 G
            multiply-adds per 256 px tile pair, which on a CPU is most of the training time
            of a light trunk (EfficientNet-Lite0's trunk: about 0.5 G for both dates).
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        in_channels: int = 3,
        weights: Optional[str] = None,
        head_channels: int = 256,
        separable: bool = False,
    ):
        super().__init__()
        self.backbone_name, self.in_channels = backbone, in_channels
        self.head_channels, self.separable = int(head_channels), bool(separable)
        self.trunk = build_trunk(backbone, weights=weights, in_channels=in_channels)
        width = self.head_channels
        self.aspp = ASPP(self.trunk.high_channels, list(ASPP_RATES), out_channels=width)
        if separable:
            for i, rate in enumerate(ASPP_RATES, start=1):
                self.aspp.convs[i] = _separable_bn_relu(self.trunk.high_channels, width, rate)
            block = _separable_bn_relu
        else:
            block = functools.partial(_conv_bn_relu, k=3)
        self.low_proj = _conv_bn_relu(self.trunk.low_channels, LOW_PROJ_CHANNELS, 1)
        self.decoder = nn.Sequential(block(width + LOW_PROJ_CHANNELS, width), block(width, width))
        self.classifier = nn.Conv2d(width, NUM_CLASSES, kernel_size=1)

    def forward(self, pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
        """pre, post: [B, C, H, W] -> class logits [B, 2, H, W].

        In training mode this is `forward_features` (one encoder pass over both dates, so
        batch norm sees both). In eval mode the same function runs leaner, for the tile loop:
        the dates go through the encoder one after the other (batch norm uses its running
        statistics, so the result is the same) and each feature map is dropped as soon as it
        is used; this halves the encoder's activation memory and about a third of the peak
        of a forward (resnet50, batch 4 on a CPU: 141 -> 87 MiB above the weights).
        """
        if self.training:
            return self.forward_features(pre, post).logits
        trunk = self.trunk(pre)
        low, high = trunk.low, trunk.high
        del trunk
        trunk = self.trunk(post)
        low = self.low_proj(low - trunk.low)
        high = high - trunk.high
        del trunk
        x = self.aspp(high)
        del high
        return self._classify(self._change_features(x, low), pre.shape[-2:])

    def forward_features(self, pre: torch.Tensor, post: torch.Tensor) -> DetectorFeatures:
        """pre, post: [B, C, H, W] -> `DetectorFeatures` (encoder, change features and logits)."""
        feats = self.trunk(torch.cat([pre, post], dim=0))
        low_pre, low_post = feats.low.chunk(2, dim=0)
        high_pre, high_post = feats.high.chunk(2, dim=0)
        x = self.aspp(high_pre - high_post)
        change = self._change_features(x, self.low_proj(low_pre - low_post))
        logits = self._classify(change, pre.shape[-2:])
        return DetectorFeatures(low_pre, low_post, high_pre, high_post, change, logits)

    def _change_features(self, x: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        """ASPP output x [B, 256, H/16, W/16] upsampled beside the projected low-level
        difference [B, 48, H/4, W/4] -> change features [B, W + 48, H/4, W/4]."""
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([x, low], dim=1)

    def _classify(self, change: torch.Tensor, size: torch.Size) -> torch.Tensor:
        """Change features [B, W + 48, H/4, W/4] -> class logits [B, 2, *size]."""
        x = self.classifier(self.decoder(change))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def change_probability(self, pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] pairs -> softmax probability of the change class, [B, 1, H, W]."""
        return self(pre, post).softmax(dim=1)[:, 1:2]

    def param_groups(self, lr: float, head_lr_mult: float = 10.0) -> list[dict]:
        """Optimiser parameter groups: the trunk at `lr`, the new decoder at `head_lr_mult * lr`
        (frozen trunk parameters are left out)."""
        trunk_ids = {id(p) for p in self.trunk.parameters()}
        trunk = [p for p in self.trunk.parameters() if p.requires_grad]
        head = [p for p in self.parameters() if id(p) not in trunk_ids]
        return [
            {"params": trunk, "lr": lr, "base_lr": lr},
            {"params": head, "lr": lr * head_lr_mult, "base_lr": lr * head_lr_mult},
        ]

    def config(self) -> dict:
        """Constructor arguments, for checkpoints (the head's only when not the paper's)."""
        config = {"backbone": self.backbone_name, "in_channels": self.in_channels}
        if (self.head_channels, self.separable) != (256, False):
            config.update(head_channels=self.head_channels, separable=self.separable)
        return config
