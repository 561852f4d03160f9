"""What every trunk returns and shares: `TrunkFeatures`, `BackboneError`, stem adaptation."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
