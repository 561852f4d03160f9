"""One-file model checkpoints: weights + metadata, loaded without executing pickled code.

Layout (a `torch.save` dict, read back with ``weights_only=True``)::

    {"format": "kdmsi-checkpoint", "format_version": 1,
     "metadata": {...plain Python values...},
     "state_dict": {name: tensor}}                      # kind "detector"
     "state_dicts": {"teacher": {...}, "student": {...}}  # kind "kd"

Metadata keys: ``kind`` ("kd" | "detector"), ``model`` (constructor config), ``bands``,
``normalisation`` (mean/std applied after scaling to [0, 1]), ``tile_size``, ``threshold``,
``training`` (summary, including how the model was selected), ``library_version``; detectors
also carry ``quality_robust`` (bool) and, when known, ``method`` (e.g. ``hicd``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from .. import __version__
from ..data.normalisation import Normalisation
from ..geo.atomic import atomic_output
from ..types import PathLike
from . import MODEL_KINDS, build_model

FORMAT = "kdmsi-checkpoint"
FORMAT_VERSION = 1
DETECTOR_THRESHOLD = 0.5  # change-class probability; argmax of the two classes
DETECTOR_CLASSES = ("no change", "change")
REQUIRED_METADATA = ("kind", "model", "bands", "normalisation", "tile_size")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the problem and the fix."""


def save_checkpoint(
    path: PathLike,
    metadata: dict[str, Any],
    state_dict: Optional[dict[str, torch.Tensor]] = None,
    state_dicts: Optional[dict[str, dict[str, torch.Tensor]]] = None,
) -> Path:
    """Write weights and metadata to `path` atomically (temporary file, then rename)."""
    meta = {**metadata, "library_version": __version__}
    validate_metadata(meta, source=str(path))
    payload: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, "metadata": meta}
    if meta["kind"] == "kd":
        if not state_dicts or set(state_dicts) != {"teacher", "student"}:
            raise ValueError("a 'kd' checkpoint needs state_dicts with 'teacher' and 'student'")
        payload["state_dicts"] = {k: _cpu(v) for k, v in state_dicts.items()}
    else:
        if state_dict is None:
            raise ValueError("a 'detector' checkpoint needs a state_dict")
        payload["state_dict"] = _cpu(state_dict)
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise CheckpointError(f"cannot write {path}: folder {folder} does not exist")
    with atomic_output(path, overwrite=True) as tmp:  # callers refuse existing files up front
        torch.save(payload, tmp)
    return path


def save_detector(
    path: PathLike,
    model: torch.nn.Module,
    bands: list[int],
    normalisation: Normalisation,
    tile_size: int,
    training: Optional[dict[str, Any]] = None,
    threshold: float = DETECTOR_THRESHOLD,
    quality_robust: bool = False,
    method: Optional[str] = None,
) -> Path:
    """Save a `SiameseDeepLabV3Plus` with the metadata `kdmsi detect` needs.

    `quality_robust` marks a detector trained on quality-varied pairs (`kdmsi train-hicd`);
    `method` names how it was trained (e.g. ``hicd``); both are read by `is_quality_robust`.
    """
    meta = {
        "kind": "detector",
        "model": model.config(),
        "bands": list(bands),
        "normalisation": normalisation.to_dict(),
        "tile_size": int(tile_size),
        "threshold": threshold,
        "class_names": list(DETECTOR_CLASSES),
        "training": training or {},
        "quality_robust": bool(quality_robust),
    }
    if method is not None:
        meta["method"] = method
    return save_checkpoint(path, meta, state_dict=model.state_dict())


def save_kd(
    path: PathLike,
    result,
    bands: list[int],
    normalisation: Normalisation,
    tile_size: int,
    training: Optional[dict[str, Any]] = None,
) -> Path:
    """Save the teacher and student of a `KDResult` (kind ``kd``) with its training record
    (config, history, selection, thinned steps) plus the entries of ``training``."""

    meta = {
        "kind": "kd",
        "model": result.student.config(),
        "bands": list(bands),
        "normalisation": normalisation.to_dict(),
        "tile_size": int(tile_size),
        "threshold": None,
        "training": {
            "config": result.config,
            "history": result.history,
            "selection": result.selection,
            "steps": thin_steps(result.steps),
            **(training or {}),
        },
    }
    states = {"teacher": result.teacher.state_dict(), "student": result.student.state_dict()}
    return save_checkpoint(path, meta, state_dicts=states)


def is_quality_robust(model: Union[PathLike, dict[str, Any]]) -> bool:
    """True when a checkpoint (path, or its metadata dict) was trained to be quality-robust,
    i.e. for pairs whose two images differ in resolution, blur or noise (`kdmsi train-hicd`)."""
    meta = model if isinstance(model, dict) else read_checkpoint(model)["metadata"]
    return bool(meta.get("quality_robust", False))


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in state.items()}


def validate_metadata(meta: Any, source: str = "checkpoint") -> dict[str, Any]:
    """Check the metadata's keys and values; raise `CheckpointError` naming what is wrong."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"{source}: metadata is missing or not a mapping")
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if missing:
        raise CheckpointError(f"{source}: metadata lacks {', '.join(missing)}")
    if meta["kind"] not in MODEL_KINDS:
        raise CheckpointError(
            f"{source}: unknown model kind {meta['kind']!r} (expected {', '.join(MODEL_KINDS)})"
        )
    if not isinstance(meta["model"], dict):
        raise CheckpointError(f"{source}: metadata 'model' must be the network's config mapping")
    norm = meta["normalisation"]
    if not (isinstance(norm, dict) and {"mean", "std"} <= set(norm)):
        raise CheckpointError(f"{source}: metadata 'normalisation' needs 'mean' and 'std'")
    if len(norm["mean"]) != len(meta["bands"]) or len(norm["std"]) != len(meta["bands"]):
        raise CheckpointError(
            f"{source}: normalisation does not match the {len(meta['bands'])} bands"
        )
    return meta


def read_checkpoint(path: PathLike) -> dict[str, Any]:
    """Load and validate a checkpoint file's payload (no pickled code is ever executed)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, foreign pickle, not a zip: same answer
        raise CheckpointError(
            f"{path} is not a readable kdmsi model file (corrupt, truncated, or saved by another "
            f"program: {type(exc).__name__}); train one with `kdmsi train-kd`/`kdmsi train-cd` or "
            "re-download it"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a PyTorch file but not a kdmsi model (no '{FORMAT}' header); "
            "use a model trained with kdmsi"
        )
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} uses checkpoint format {version!r}, newer than this kdmsi "
            f"({__version__}) reads ({FORMAT_VERSION}); upgrade kdmsi"
        )
    validate_metadata(payload.get("metadata"), source=str(path))
    return payload


def load_checkpoint(path: PathLike, role: str = "auto", device: Union[str, torch.device] = "cpu"):
    """Build the network stored in `path` and load its weights; returns (model, metadata).

    role: for a 'kd' checkpoint, ``student`` (default for ``auto``) or ``teacher``; ignored for
    a detector. The model is returned in eval mode on `device`.
    """
    payload = read_checkpoint(path)
    meta = payload["metadata"]
    if meta["kind"] == "kd":
        role = "student" if role == "auto" else role
        states = payload.get("state_dicts")
        if not isinstance(states, dict) or role not in states:
            raise CheckpointError(f"{path}: the KD checkpoint has no {role!r} weights")
        state = states[role]
    else:
        state = payload.get("state_dict")
    try:
        model = _build_with_weights(meta["kind"], meta["model"], state)
    except (TypeError, ValueError, RuntimeError, KeyError, AttributeError) as exc:
        raise CheckpointError(
            f"{path}: weights do not fit a {meta['kind']} model {meta['model']} ({exc})"
        ) from None
    return model.to(device).eval(), meta


def _build_with_weights(kind: str, config: dict, state: Any) -> torch.nn.Module:
    """The network of `kind`/`config` holding the tensors of `state` themselves.

    Built on the meta device (no memory, no random init) and given the loaded tensors with
    ``assign=True``, so the weights are in memory once, not twice while a random-init copy is
    overwritten (measured: peak RSS after loading a resnet50 detector 903 -> 748 MiB). Falls
    back to the plain build + copy if some tensor of the network is not in `state`."""
    if not isinstance(state, dict):
        raise TypeError(f"weights are a {type(state).__name__}, not a state dict")
    with torch.device("meta"):
        model = build_model(kind, config)
    model.load_state_dict(state, assign=True)
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.is_meta for t in tensors):  # a non-persistent buffer: not in any state dict
        model = build_model(kind, config)
        model.load_state_dict(state)
    return model


def thin_steps(steps: Sequence[dict], limit: int = 500) -> list[dict]:
    """At most `limit` evenly spaced step records (the last one kept), for model metadata."""
    if len(steps) <= limit:
        return list(steps)
    picks = np.unique(np.linspace(0, len(steps) - 1, limit).round().astype(int))
    return [steps[i] for i in picks]
