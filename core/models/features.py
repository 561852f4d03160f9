"""The trunk contract (`Trunk`) and what every trunk returns and shares: `TrunkFeatures`,
`BackboneError`, stem adaptation, running a trunk part by part."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class BackboneError(ValueError):
    """A backbone name or weight file that cannot be used."""


@dataclass(frozen=True)
class TrunkFeatures:
    """Features of one date: `low` at stride 4, `high` at stride 16."""

    low: torch.Tensor
    high: torch.Tensor


def adapt_stem_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """First-conv filters [O, 3, k, k] for ``in_channels`` bands: the RGB filters averaged and
    repeated, scaled so that a band-wise constant input gives the same response."""
    mean = weight.detach().mean(dim=1, keepdim=True)
    return mean.repeat(1, in_channels, 1, 1) * 3.0 / in_channels


def adapt_stem_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A copy of the first conv ``conv`` for ``in_channels`` bands (`adapt_stem_weight`)."""
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


@dataclass
class PyramidState:
    """A trunk run part by part (`run_parts`): ``x`` the output of the last part run (both
    dates stacked), ``taps`` the pyramid levels met so far, ``next_part`` the first part not
    run yet, ``size`` the input's (H, W)."""

    x: torch.Tensor
    taps: list[torch.Tensor]
    next_part: int
    size: tuple[int, int]


def start_state(x: torch.Tensor) -> PyramidState:
    """The state of a trunk before its first part, for input x [B, C, H, W]."""
    return PyramidState(x, [], 0, (int(x.shape[-2]), int(x.shape[-1])))


def run_parts(trunk, state: PyramidState, stop: int | None = None) -> PyramidState:
    """Run ``trunk.stages()[state.next_part:stop]`` (to the end with None), collecting the
    outputs of the parts listed in ``trunk.pyramid_taps``."""
    parts = trunk.stages()
    stop = len(parts) if stop is None else stop
    x, taps = state.x, list(state.taps)
    for i in range(state.next_part, stop):
        x = parts[i](x)
        if i in trunk.pyramid_taps:
            taps.append(x)
    return PyramidState(x, taps, stop, state.size)


class Trunk(nn.Module):
    """What the networks ask of a trunk (`kdmsi.models.cam_net`, `kdmsi.models.deeplab`,
    `kdmsi.training.common`), shared by both dates of a Siamese network, output stride 16.

    A trunk module of `kdmsi.models.trunks` subclasses this and sets, besides its layers:

    Attributes:
        in_channels: bands per date.
        low_channels: channels of ``forward(x).low`` (stride 4), the decoder's skip.
        high_channels: channels of ``forward(x).high`` (stride 16).
        early_parts: how many of `stages()` reach output stride 8: frozen by default in training.
        pyramid_taps: indices in `stages()` whose outputs form `pyramid` (strides 4, 8, 16, 16);
            empty for a detector-only trunk (`kdmsi.trunk_registry.TrunkEntry.detector_only`).
        pyramid_channels: channels of those outputs.
    """

    in_channels: int
    low_channels: int
    high_channels: int
    early_parts: int
    pyramid_taps: tuple[int, ...] = ()
    pyramid_channels: tuple[int, ...] = ()

    def forward(self, x: torch.Tensor) -> TrunkFeatures:
        """x: [B, C, H, W] -> low [B, low_channels, H/4, W/4], high [B, high_channels, H/16,
        W/16] (sizes rounded up)."""
        raise NotImplementedError

    def stages(self) -> list[nn.Module]:
        """The trunk's parts in input order, for freezing or running a prefix (`run_parts`)."""
        raise NotImplementedError

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: [B, C, H, W] -> the outputs of the parts `pyramid_taps`, in order."""
        return run_parts(self, start_state(x)).taps
