"""SiameseCAMNet: the KD-MSI teacher and student network."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..choices import FUSIONS
from .backbones import ResNetTrunk


def fuse(pre: torch.Tensor, post: torch.Tensor, fusion: str) -> torch.Tensor:
    """Fuse two dates' features [B, C, h, w] into [B, C, h, w] ([B, 2C, h, w] for concat)."""
    if fusion == "abs":
        return (post - pre).abs()
    if fusion == "diff":
        return post - pre
    if fusion == "concat":
        return torch.cat([pre, post], dim=1)
    raise ValueError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")


class SiameseCAMNet(nn.Module):
    """Siamese ResNet (one trunk for both dates) -> fusion -> 1x1 conv (no bias) -> logit map G.

    Global average pooling of G gives the image-level change logit (teacher); sigmoid(G) is the
    student's change probability; ReLU(G) normalised per image is the teacher's CAM.

    Args:
        backbone: ``resnet18``, ``resnet34`` or ``resnet50``.
        fusion: ``abs`` |f(post) - f(pre)|, ``diff`` f(post) - f(pre), or ``concat``.
        in_channels: bands per date.
        weights: backbone weights (see `ResNetTrunk`); None starts from random init.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        fusion: str = "abs",
        in_channels: int = 3,
        weights: Optional[str] = None,
    ):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
        self.backbone_name, self.fusion, self.in_channels = backbone, fusion, in_channels
        self.trunk = ResNetTrunk(backbone, weights=weights, in_channels=in_channels)
        channels = self.trunk.high_channels * (2 if fusion == "concat" else 1)
        self.head = nn.Conv2d(channels, 1, kernel_size=1, bias=False)
        # The new head starts at zero (G = 0, sigmoid(G) = 0.5) and sees the fused features
        # scaled by 1/sqrt(C): a reparametrisation of the same 1x1 conv that keeps G's scale and
        # SGD's step on G independent of the trunk width (512 to 4096 channels). Without it, a
        # sum over hundreds of |f(post) - f(pre)| channels saturates the sigmoid within a step
        # and the student's MSE through it has no gradient left (measured: collapse to 0).
        nn.init.zeros_(self.head.weight)
        self.feature_scale = channels**-0.5

    def forward(self, pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
        """pre, post: [B, C, H, W] -> logit map G: [B, 1, H/16, W/16] (sizes rounded up)."""
        both = self.trunk(torch.cat([pre, post], dim=0)).high
        f_pre, f_post = both.chunk(2, dim=0)
        return self.head(fuse(f_pre, f_post, self.fusion) * self.feature_scale)

    def param_groups(self, lr: float, head_lr_mult: float = 10.0) -> list[dict]:
        """SGD parameter groups: the trunk at `lr`, the new 1x1 head at `head_lr_mult * lr`."""
        return [
            {"params": list(self.trunk.parameters()), "lr": lr, "base_lr": lr},
            {
                "params": list(self.head.parameters()),
                "lr": lr * head_lr_mult,
                "base_lr": lr * head_lr_mult,
            },
        ]

    def config(self) -> dict:
        """Constructor arguments, for checkpoints."""
        return {
            "backbone": self.backbone_name,
            "fusion": self.fusion,
            "in_channels": self.in_channels,
        }
