"""SiameseCAMNet: the KD-MSI teacher and student network."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..choices import BACKBONES, CAM_HEADS, FUSIONS
from ..trunk_registry import TRUNKS
from .features import BackboneError, PyramidState, run_parts, start_state
from .trunks import build_trunk


def fuse(pre: torch.Tensor, post: torch.Tensor, fusion: str) -> torch.Tensor:
    """Fuse two dates' features [B, C, h, w] into [B, C, h, w] ([B, 2C, h, w] for concat)."""
    if fusion == "abs":
        return (post - pre).abs()
    if fusion == "diff":
        return post - pre
    if fusion == "concat":
        return torch.cat([pre, post], dim=1)
    raise ValueError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")


PYRAMID_STRIDE = 8  # output stride of the pyramid head's logit map


class SiameseCAMNet(nn.Module):
    """Siamese trunk (one for both dates) -> fusion -> 1x1 conv (no bias) -> logit map G.

    Global average pooling of G gives the image-level change logit (teacher); sigmoid(G) is the
    student's change probability; ReLU(G) normalised per image is the teacher's CAM.

    Heads: ``single`` (the paper's) applies the 1x1 conv to the fused last trunk features
    (stride 16). ``pyramid`` fuses the features of four trunk stages (`trunk.pyramid`: strides
    4, 8, 16, 16), projects each to one channel with its own 1x1 conv, resizes them to stride 8
    and sums them: one 1x1 conv over the concatenated fused pyramid, computed level by level.
    Finer maps for small changes (measured in the README's recipe table).

    Args:
        backbone: one of `kdmsi.choices.BACKBONES`.
        fusion: ``abs`` |f(post) - f(pre)|, ``diff`` f(post) - f(pre), or ``concat``.
        in_channels: bands per date.
        weights: trunk weights (`kdmsi.models.pretrained`); None starts from random init.
        head: ``single`` or ``pyramid`` (`CAM_HEADS`).
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        fusion: str = "abs",
        in_channels: int = 3,
        weights: Optional[str] = None,
        head: str = "single",
    ):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
        if head not in CAM_HEADS:
            raise ValueError(f"unknown CAM head {head!r}; choose one of {', '.join(CAM_HEADS)}")
        self.backbone_name, self.fusion, self.in_channels = backbone, fusion, in_channels
        self.head_kind = head
        if backbone not in BACKBONES:
            what = "is a detector backbone only:" if backbone in TRUNKS else "is unknown;"
            raise BackboneError(
                f"backbone {backbone!r} {what} the KD teacher/student take one of "
                f"{', '.join(BACKBONES)}"
            )
        self.trunk = build_trunk(backbone, weights=weights, in_channels=in_channels)
        widths = self.trunk.pyramid_channels if head == "pyramid" else (self.trunk.high_channels,)
        widths = tuple(c * (2 if fusion == "concat" else 1) for c in widths)
        convs = [nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in widths]
        # The new head starts at zero (G = 0, sigmoid(G) = 0.5) and sees the fused features
        # scaled by 1/sqrt(C): a reparametrisation of the same 1x1 conv that keeps G's scale and
        # SGD's step on G independent of the trunk width (512 to 4096 channels). Without it, a
        # sum over hundreds of |f(post) - f(pre)| channels saturates the sigmoid within a step
        # and the student's MSE through it has no gradient left (measured: collapse to 0).
        for conv in convs:
            nn.init.zeros_(conv.weight)
        self.head = convs[0] if head == "single" else nn.ModuleList(convs)
        self.feature_scale = sum(widths) ** -0.5

    def forward(self, pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
        """pre, post: [B, C, H, W] -> logit map G: [B, 1, H/16, W/16] (``single``) or
        [B, 1, H/8, W/8] (``pyramid``), sizes rounded up."""
        return self.forward_from(self.start(pre, post))

    def start(self, pre: torch.Tensor, post: torch.Tensor, parts: int = 0) -> PyramidState:
        """Both dates through the first ``parts`` parts of the trunk (`trunk.stages()`).

        The KD loop runs the frozen prefix, which teacher and student share, once for both
        networks (`forward_from`)."""
        return run_parts(self.trunk, start_state(torch.cat([pre, post], dim=0)), parts)

    def forward_from(self, state: PyramidState) -> torch.Tensor:
        """The logit map G of `forward`, from a trunk run up to ``state.next_part``."""
        state = run_parts(self.trunk, state)
        if self.head_kind == "single":
            f_pre, f_post = state.x.chunk(2, dim=0)
            return self.head(fuse(f_pre, f_post, self.fusion) * self.feature_scale)
        height, width = state.size
        size = (-(-height // PYRAMID_STRIDE), -(-width // PYRAMID_STRIDE))
        g = None
        for level, conv in zip(state.taps, self.head):
            f_pre, f_post = level.chunk(2, dim=0)
            part = conv(fuse(f_pre, f_post, self.fusion) * self.feature_scale)
            part = F.interpolate(part, size=size, mode="bilinear", align_corners=False)
            g = part if g is None else g + part
        return g

    def param_groups(self, lr: float, head_lr_mult: float = 10.0) -> list[dict]:
        """Optimiser parameter groups: the trunk at `lr`, the new 1x1 head at `head_lr_mult * lr`
        (frozen parameters, ``requires_grad`` False, are left out)."""
        trunk = [p for p in self.trunk.parameters() if p.requires_grad]
        return [
            {"params": trunk, "lr": lr, "base_lr": lr},
            {
                "params": list(self.head.parameters()),
                "lr": lr * head_lr_mult,
                "base_lr": lr * head_lr_mult,
            },
        ]

    def config(self) -> dict:
        """Constructor arguments, for checkpoints (``head`` only when not the paper's)."""
        config = {
            "backbone": self.backbone_name,
            "fusion": self.fusion,
            "in_channels": self.in_channels,
        }
        if self.head_kind != "single":
            config["head"] = self.head_kind
        return config
