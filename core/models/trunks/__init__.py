"""The trunks, one module each, found through the registry (`kdmsi.trunk_registry.TRUNKS`).

Each module has ``build(name, weights, in_channels) -> Trunk`` (`kdmsi.models.features.Trunk`);
`build_trunk` imports the module a registry entry names, so adding a trunk is that module and
one registry entry.
"""

from __future__ import annotations

import importlib
from typing import Optional

from ...choices import DETECTOR_BACKBONES
from ...trunk_registry import TRUNKS
from ..features import BackboneError, Trunk


def build_trunk(name: str, weights: Optional[str] = None, in_channels: int = 3) -> Trunk:
    """The trunk for backbone ``name`` (any of `DETECTOR_BACKBONES`) with ``weights`` (see
    `kdmsi.models.pretrained`; None or ``none``: random initialisation).

    Raises:
        BackboneError: unknown name or unusable weights.
    """
    entry = TRUNKS.get(name)
    if entry is None:
        raise BackboneError(
            f"unknown backbone {name!r}; choose one of {', '.join(DETECTOR_BACKBONES)}"
        )
    module = importlib.import_module(f"{__name__}.{entry.module}")
    return module.build(name, weights=weights, in_channels=in_channels)


__all__ = ["build_trunk"]
