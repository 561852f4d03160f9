"""Export a kdmsi model file to ONNX for `kdmsi.runtime.onnx_model.OnnxPredictor` (needs torch
and onnx).

The graph computes exactly what the torch detect path's ``predict`` does: the detector's
softmax change probability, or a KD student's multiscale sigmoid inference (scales and flip
fixed at export). Shapes are concrete, for one tile size and batch: inputs ``pre``, ``post``
float32 [B, C, T, T], output ``probability`` float32 [B, 1, T, T]. The run's facts go into
the ONNX ``metadata_props`` (JSON strings): ``kdmsi_format``, ``kdmsi_format_version``,
``kind``, ``backbone``, ``model`` (the network's config), ``tile_size``, ``batch_size``,
``overlap_px``, ``bands``, ``normalisation``, ``threshold``, ``class_names``, ``inputs``,
``output``, ``scales``/``flip`` (KD), ``library_version``, ``source`` (the checkpoint name),
``training_selection``.

torch's TorchScript-based exporter is used (``dynamo=False``): the dynamo exporter needs the
onnxscript package, which is not a dependency.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from .. import __version__
from ..geo.atomic import atomic_output, check_output_target
from ..geo.tiling import default_overlap
from ..inference.msi import DEFAULT_SCALES
from ..models.checkpoint import DETECTOR_CLASSES, load_checkpoint
from ..types import PathLike
from .onnx_model import (
    ONNX_FORMAT,
    ONNX_FORMAT_VERSION,
    ONNX_INPUTS,
    ONNX_OUTPUT,
    ONNX_TOLERANCE,
    OnnxPredictor,
    onnxruntime_available,
)

log = logging.getLogger(__name__)


DEFAULT_ONNX_BATCH = 4
"""Tiles per forward pass of an exported model (`kdmsi detect`'s default batch)."""
ONNX_OPSET = 17
KD_CLASSES = ("change probability (MSI)",)


class ExportError(ValueError):
    """The model cannot be exported as asked; the message says why."""


class ProbabilityModule(torch.nn.Module):
    """A kdmsi network as ``forward(pre, post) -> change probability [B, 1, T, T]``.

    kind ``detector``: softmax change probability of `SiameseDeepLabV3Plus`; ``kd``: the
    student's multiscale sigmoid inference over ``scales`` (and horizontal flips).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        kind: str,
        scales: Sequence[float] = DEFAULT_SCALES,
        flip: bool = True,
    ):
        super().__init__()
        if kind not in ("detector", "kd"):
            raise ExportError(f"unknown model kind {kind!r}; expected 'detector' or 'kd'")
        self.model, self.kind = model, kind
        self.scales, self.flip = tuple(float(s) for s in scales), bool(flip)

    def forward(self, pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
        """pre, post: [B, C, T, T] -> probability [B, 1, T, T]."""
        if self.kind == "detector":
            return self.model.change_probability(pre, post)
        from ..inference.msi import multiscale_sigmoid_inference

        return multiscale_sigmoid_inference(
            self.model, pre, post, scales=self.scales, flip=self.flip
        )


def _threshold(meta: dict[str, Any]) -> Optional[float]:
    value = meta.get("threshold")
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict) and isinstance(value.get("threshold"), (int, float)):
        return float(value["threshold"])
    return None


def onnx_metadata(
    meta: dict[str, Any],
    *,
    tile_size: int,
    batch_size: int,
    overlap_px: int,
    scales: Sequence[float],
    flip: bool,
    source: str,
) -> dict[str, str]:
    """The ``metadata_props`` of an export (every value a JSON string)."""
    kind = meta["kind"]
    items: dict[str, Any] = {
        "kdmsi_format": ONNX_FORMAT,
        "kdmsi_format_version": ONNX_FORMAT_VERSION,
        "kind": kind,
        "backbone": meta["model"].get("backbone", ""),
        "model": meta["model"],
        "tile_size": int(tile_size),
        "batch_size": int(batch_size),
        "overlap_px": int(overlap_px),
        "bands": [int(b) for b in meta["bands"]],
        "normalisation": meta["normalisation"],
        "threshold": _threshold(meta),
        "class_names": list(
            meta.get("class_names") or (DETECTOR_CLASSES if kind == "detector" else KD_CLASSES)
        ),
        "inputs": {name: "float32 [B, C, T, T], normalised" for name in ONNX_INPUTS},
        "output": {ONNX_OUTPUT: "float32 [B, 1, T, T], change probability in [0, 1]"},
        "library_version": __version__,
        "source": source,
        "training_selection": (meta.get("training") or {}).get("selection"),
    }
    if kind == "kd":
        items.update(scales=[float(s) for s in scales], flip=bool(flip))
    return {key: json.dumps(value, sort_keys=True) for key, value in items.items()}


def export_onnx(
    model_path: PathLike,
    out_path: PathLike,
    *,
    tile_size: Optional[int] = None,
    batch_size: int = DEFAULT_ONNX_BATCH,
    overlap_px: Optional[int] = None,
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = True,
    opset: int = ONNX_OPSET,
    verify: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write ``model_path`` (a ``.kdmsi`` file) as an ONNX model with kdmsi metadata.

    Args:
        model_path: a detector or KD checkpoint (KD: its student with MSI).
        out_path: the ``.onnx`` file to write (atomically).
        tile_size: T of the fixed input shape (default: the checkpoint's training tile size).
        batch_size: B of the fixed input shape (detect pads its last, short batch).
        overlap_px: tile overlap recorded as detect's default for this model (default:
            64 px, at most a quarter of the tile).
        scales, flip: MSI of a KD model (fixed in the graph).
        opset: ONNX opset.
        verify: when onnxruntime is installed, run one random batch through both runtimes
            and refuse the export if they differ by more than `ONNX_TOLERANCE`.
        overwrite: replace an existing ``out_path``.

    Raises:
        CheckpointError, ExportError, FileExistsError, OutputNotWritableError,
        RuntimeUnavailable (the onnx package is missing).
    """
    target = Path(out_path)
    if target.suffix.lower() != ".onnx":
        raise ExportError(f"the ONNX output {target} must have the .onnx extension")
    check_output_target(target, overwrite)
    _require_onnx()
    model, meta = load_checkpoint(model_path, role="student", device="cpu")
    return export_loaded(
        model,
        meta,
        target,
        source=Path(model_path).name,
        tile_size=tile_size,
        batch_size=batch_size,
        overlap_px=overlap_px,
        scales=scales,
        flip=flip,
        opset=opset,
        verify=verify,
        overwrite=overwrite,
    )


def export_loaded(
    model: torch.nn.Module,
    meta: dict[str, Any],
    out_path: PathLike,
    *,
    source: str,
    tile_size: Optional[int] = None,
    batch_size: int = DEFAULT_ONNX_BATCH,
    overlap_px: Optional[int] = None,
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = True,
    opset: int = ONNX_OPSET,
    verify: bool = True,
    overwrite: bool = False,
) -> Path:
    """`export_onnx` of a network already loaded on the CPU (``model``, ``meta`` as
    `kdmsi.models.checkpoint.load_checkpoint` returns them; ``source``: the checkpoint's name), as
    `kdmsi detect --runtime auto` does without loading the weights twice.
    """
    onnx = _require_onnx()
    target = Path(out_path)
    tile = int(tile_size or meta["tile_size"])
    overlap_px = default_overlap(tile) if overlap_px is None else int(overlap_px)
    if tile < 16 or batch_size < 1 or not 0 <= overlap_px < tile:
        raise ExportError(
            f"need tile size >= 16, batch size >= 1 and 0 <= overlap < tile size; got {tile}, "
            f"{batch_size}, {overlap_px}"
        )
    module = ProbabilityModule(model, meta["kind"], scales, flip).eval()
    channels = len(meta["bands"])
    example = _random_pair(batch_size, channels, tile, seed=0)
    props = onnx_metadata(
        meta,
        tile_size=tile,
        batch_size=batch_size,
        overlap_px=overlap_px,
        scales=scales,
        flip=flip,
        source=source,
    )
    with atomic_output(target, overwrite) as temp:
        _trace_to_onnx(module, example, temp, opset)
        description = onnx.ModelProto(
            producer_name="kdmsi",
            producer_version=__version__,
            doc_string=f"kdmsi {meta['kind']} ({json.loads(props['backbone'])}) change probability",
        )
        for key, value in props.items():
            description.metadata_props.add(key=key, value=value)
        # A protobuf message followed by another is read as the two merged (singular fields
        # from the second, repeated ones appended): appending these fields sets them without
        # loading and re-serialising the weights, which would hold them twice more.
        with open(temp, "ab") as fh:
            fh.write(description.SerializeToString())
        if verify and onnxruntime_available():
            difference = max_difference(module, temp, seed=1)
            log.info("ONNX Runtime vs torch on a random batch: max |diff| %.2e", difference)
            if not difference <= ONNX_TOLERANCE:
                raise ExportError(
                    f"the exported graph differs from torch by {difference:.2e} (more than "
                    f"{ONNX_TOLERANCE:g}); use --runtime torch for this model"
                )
    log.info(
        "exported %s to %s: [%d, %d, %d, %d] -> [%d, 1, %d, %d], opset %d",
        source,
        target,
        batch_size,
        channels,
        tile,
        tile,
        batch_size,
        tile,
        tile,
        opset,
    )
    return target


def _require_onnx() -> Any:
    from .onnx_model import RuntimeUnavailable

    try:
        import onnx
    except ImportError as exc:
        raise RuntimeUnavailable(
            f"exporting to ONNX needs the onnx package ({exc}): install it with "
            "`python -m pip install onnx==1.23.2`"
        ) from None
    return onnx


def _random_pair(batch: int, channels: int, tile: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Two float32 [batch, channels, tile, tile] tensors of normalised-looking values."""
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, channels, tile, tile, generator=generator) for _ in range(2))


def _trace_to_onnx(
    module: torch.nn.Module, example: tuple[torch.Tensor, ...], path: Path, opset: int
) -> None:
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        # the TorchScript exporter is deprecated in favour of dynamo (needs onnxscript)
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example,
            str(path),
            dynamo=False,
            input_names=list(ONNX_INPUTS),
            output_names=[ONNX_OUTPUT],
            opset_version=opset,
            do_constant_folding=True,
        )


def max_difference(
    module: torch.nn.Module, onnx_model: Union[PathLike, OnnxPredictor], seed: int = 1
) -> float:
    """Max |p_onnx - p_torch| over one random batch of the ONNX model's input shape
    (``onnx_model``: an ``.onnx`` file or a loaded `OnnxPredictor`)."""
    if isinstance(onnx_model, OnnxPredictor):
        predictor = onnx_model
    else:
        predictor = OnnxPredictor(onnx_model)
    info = predictor.info
    pre, post = _random_pair(info.batch_size, info.channels, info.tile_size, seed)
    with torch.no_grad():
        expected = module(pre, post).numpy()
    got = predictor(pre.numpy(), post.numpy())
    return float(np.max(np.abs(got - expected)))


__all__ = [
    "DEFAULT_ONNX_BATCH",
    "ExportError",
    "ProbabilityModule",
    "export_loaded",
    "export_onnx",
    "max_difference",
    "onnx_metadata",
]
