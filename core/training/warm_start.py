"""Warm start: `kdmsi train` run again as tags are added starts from the models of the earlier
run instead of ImageNet, when the analyst asks (``--warm-start``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..models.checkpoint import CheckpointError, read_checkpoint
from ..types import PathLike


@dataclass(frozen=True)
class WarmStart:
    """Weights to start from: ``kd`` {"teacher", "student"} state dicts (from a KD model file,
    `kdmsi train --kd-model`), ``detector`` a state dict (from a detector, `kdmsi train --out`);
    either may be None. ``sources``: the files, for the training summary."""

    kd: Optional[dict[str, dict[str, torch.Tensor]]]
    detector: Optional[dict[str, torch.Tensor]]
    sources: tuple[str, ...]


def read_warm_start(
    paths: Sequence[PathLike], kd_model: dict, detector_model: dict, bands: int
) -> WarmStart:
    """The weights of the earlier run's model files, checked against the networks about to be
    trained (``kd_model`` and ``detector_model``: their ``config()``; ``bands`` per date).

    Raises:
        CheckpointError: unreadable, two files of one kind, or a model of another architecture
            or band count (one line naming both and the fix).
    """
    kd, detector = None, None
    for path in paths:
        payload = read_checkpoint(path)
        meta = payload["metadata"]
        expected = kd_model if meta["kind"] == "kd" else detector_model
        if len(meta["bands"]) != bands or meta["model"] != expected:
            raise CheckpointError(
                f"--warm-start {path} is a {meta['kind']} model {_describe(meta['model'])} on "
                f"{len(meta['bands'])} band(s); this run trains {_describe(expected)} on {bands}: "
                "give the same --backbone, --fusion, --cam-head and bands as that run, or drop "
                "--warm-start"
            )
        if meta["kind"] == "kd":
            if kd is not None:
                raise CheckpointError("--warm-start names two KD model files; give one")
            kd = {role: payload["state_dicts"][role] for role in ("teacher", "student")}
        else:
            if detector is not None:
                raise CheckpointError("--warm-start names two detector model files; give one")
            detector = payload["state_dict"]
    return WarmStart(kd, detector, tuple(str(Path(p).resolve()) for p in paths))


def planned_configs(kd_config, cd_config, bands: int) -> tuple[dict, dict]:
    """The ``config()`` of the KD networks and the detector a run will build (built on the
    meta device: no memory, no weights read)."""
    from ..models import SiameseCAMNet, SiameseDeepLabV3Plus

    with torch.device("meta"):
        kd = SiameseCAMNet(kd_config.backbone, kd_config.fusion, bands, None, kd_config.head)
        cd = SiameseDeepLabV3Plus(
            cd_config.backbone,
            bands,
            None,
            head_channels=cd_config.head_channels,
            separable=cd_config.separable,
        )
    return kd.config(), cd.config()


def _describe(config: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(config.items()) if k in _SHOWN) or str(config)


_SHOWN = ("backbone", "fusion", "head", "head_channels", "separable")
