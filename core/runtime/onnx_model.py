"""ONNX Runtime inference of exported kdmsi models, without importing torch.

An ONNX file written by `kdmsi.runtime.onnx_export.export_onnx` computes the change probability of a
fixed-size batch: inputs ``pre`` and ``post`` float32 [B, C, T, T] (normalised as its metadata
says), output ``probability`` float32 [B, 1, T, T]. Its ``metadata_props`` carry what the
detect path needs (tile size, batch, overlap, bands, normalisation, threshold, class names,
backbone), read here by `read_onnx_info`.

onnxruntime is optional: `require_onnxruntime` raises `RuntimeUnavailable` with the pip command
when it is missing. Importing this module never imports torch or onnxruntime.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..data.normalisation import Normalisation
from ..geo.metadata import decode_metadata
from ..types import PathLike

log = logging.getLogger(__name__)


RUNTIMES = ("auto", "torch", "onnx")
"""``--runtime`` choices: ``auto`` (ONNX Runtime when installed and faster), ``torch``, ``onnx``."""

ONNX_FORMAT = "kdmsi-onnx"
ONNX_FORMAT_VERSION = 1
ONNX_SUFFIX = ".onnx"
ONNX_INPUTS = ("pre", "post")
ONNX_OUTPUT = "probability"
ONNX_TOLERANCE = 1e-4
"""Largest |p_onnx - p_torch| accepted between the two runtimes on the same tiles (tested)."""
ONNXRUNTIME_PIN = "onnxruntime==1.32.0"


class RuntimeUnavailable(ValueError):
    """A runtime that was asked for cannot be used here; the message says how to get it."""


class OnnxModelError(ValueError):
    """An ONNX file that is not a usable kdmsi model, or does not fit the run asked for."""


def keep_triton_out() -> None:
    """Make `import triton` fail in this process before torch is first imported.

    PyPI's torch wheels ship triton, and importing torchvision pulls in `torch._dynamo`, which
    loads `triton/_C/libtriton.so` with its own statically linked LLVM. kdmsi never compiles
    kernels (no torch.compile), and torch checks for triton with ``try: import triton``, so
    telling it triton is absent costs nothing and:

    * keeps QGIS alive: seen in the QGIS 3.22 desktop (gdb backtrace), QGIS had already loaded
      Mesa's libLLVM for OpenGL, and libtriton's LLVM static initialisers crashed it (SIGSEGV);
    * saves ~70 MB of resident memory in `kdmsi detect` (measured: torch + torchvision
      imports 678 -> 604 MB RSS).

    Does nothing if triton is already imported (by another plugin) or torch was imported
    without this.
    """
    if "triton" not in sys.modules and "torch._dynamo" not in sys.modules:
        sys.modules["triton"] = None  # type: ignore[assignment]  # import -> ImportError


def onnxruntime_available() -> bool:
    """True when ``import onnxruntime`` works."""
    try:
        require_onnxruntime()
    except RuntimeUnavailable:
        return False
    return True


def require_onnxruntime() -> Any:
    """The ``onnxruntime`` module.

    Raises:
        RuntimeUnavailable: it is not installed (the message gives the pip command).
    """
    try:
        import onnxruntime
    except ImportError as exc:
        raise RuntimeUnavailable(
            f"the ONNX runtime is not installed ({exc}): install it with "
            f"`python -m pip install {ONNXRUNTIME_PIN}` or use --runtime torch"
        ) from None
    return onnxruntime


def is_onnx_path(path: PathLike) -> bool:
    """True for a ``.onnx`` file name (the model is then run by ONNX Runtime only)."""
    return Path(path).suffix.lower() == ONNX_SUFFIX


@dataclass(frozen=True)
class OnnxModelInfo:
    """What an exported kdmsi ONNX model declares in its metadata.

    Attributes:
        tile_size: T of the fixed input shape [B, C, T, T].
        batch_size: B of the fixed input shape (short batches are padded).
        channels: C, bands per date.
        overlap_px: tile overlap the model was exported for (a default for detect).
        bands: 1-based bands the model was trained on.
        normalisation: input normalisation.
        threshold: change threshold recorded at training (None when not recorded).
        class_names: names of the classes (``["no change", "change"]`` for a detector).
        kind: ``detector`` or ``kd``.
        backbone: the trunk's name.
        metadata: every metadata item, JSON values decoded.
    """

    tile_size: int
    batch_size: int
    channels: int
    overlap_px: int
    bands: tuple[int, ...]
    normalisation: Normalisation
    threshold: Optional[float]
    class_names: tuple[str, ...]
    kind: str
    backbone: str
    metadata: dict[str, Any]


def info_from_metadata(items: dict[str, str], source: str = "ONNX model") -> OnnxModelInfo:
    """`OnnxModelInfo` from an ONNX file's ``metadata_props`` (string values).

    Raises:
        OnnxModelError: not a kdmsi export, a newer format, or a missing item.
    """
    meta = decode_metadata(items)
    if meta.get("kdmsi_format") != ONNX_FORMAT:
        raise OnnxModelError(
            f"{source} was not exported by kdmsi (no '{ONNX_FORMAT}' metadata): export one "
            "with `kdmsi export-onnx model.kdmsi model.onnx`"
        )
    version = meta.get("kdmsi_format_version")
    if not isinstance(version, int) or version > ONNX_FORMAT_VERSION:
        raise OnnxModelError(f"{source} uses kdmsi ONNX format {version!r}; upgrade kdmsi")
    try:
        threshold = meta.get("threshold")
        return OnnxModelInfo(
            tile_size=int(meta["tile_size"]),
            batch_size=int(meta["batch_size"]),
            channels=len(meta["bands"]),
            overlap_px=int(meta["overlap_px"]),
            bands=tuple(int(b) for b in meta["bands"]),
            normalisation=Normalisation.from_dict(meta["normalisation"]),
            threshold=None if threshold is None else float(threshold),
            class_names=tuple(str(c) for c in meta.get("class_names") or ()),
            kind=str(meta["kind"]),
            backbone=str(meta.get("backbone", "")),
            metadata=meta,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise OnnxModelError(f"{source}: incomplete kdmsi metadata ({exc!r})") from None


class OnnxPredictor:
    """An exported kdmsi model in an ONNX Runtime session (CPU).

    ``predictor(pre, post)``: float32 [n, C, T, T] pairs with n <= ``batch_size`` -> change
    probability float32 [n, 1, T, T]; a short batch is padded with zeros to the model's fixed
    batch and the padding's output dropped.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (default: ``OMP_NUM_THREADS`` when set, as torch reads it:
            Dask's workers and torchrun's processes get 1; else ONNX Runtime's, one per
            physical core).

    Raises:
        RuntimeUnavailable: onnxruntime is not installed.
        OnnxModelError: the file is unreadable or not a kdmsi export.
    """

    def __init__(self, path: PathLike, threads: Optional[int] = None):
        ort = require_onnxruntime()
        self.path = Path(path)
        if not self.path.is_file():
            raise OnnxModelError(f"ONNX model {self.path} does not exist")
        options = ort.SessionOptions()
        threads = threads or _omp_threads()
        if threads:
            options.intra_op_num_threads = int(threads)
        options.log_severity_level = 3  # errors only
        # idle threads sleep instead of spinning: spinning starved the tile reader and the
        # stitching between batches on 2 cores (tile loop outside the model 8 -> 4 ms/tile)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception classes
            raise OnnxModelError(
                f"{self.path} is not a readable ONNX model ({type(exc).__name__}: {exc})"
            ) from None
        self.info = info_from_metadata(
            self._session.get_modelmeta().custom_metadata_map, source=str(self.path)
        )
        self._check_signature()

    def _check_signature(self) -> None:
        info = self.info
        expected = [info.batch_size, info.channels, info.tile_size, info.tile_size]
        inputs = {i.name: i.shape for i in self._session.get_inputs()}
        for name in ONNX_INPUTS:
            if inputs.get(name) != expected:
                raise OnnxModelError(
                    f"{self.path}: input {name!r} has shape {inputs.get(name)}, but its metadata "
                    f"declares {expected}; re-export it with `kdmsi export-onnx`"
                )

    @property
    def batch_size(self) -> int:
        return self.info.batch_size

    @property
    def tile_size(self) -> int:
        return self.info.tile_size

    def __call__(self, pre: np.ndarray, post: np.ndarray) -> np.ndarray:
        """float32 [n, C, T, T] pairs (n <= batch_size) -> probability float32 [n, 1, T, T]."""
        info = self.info
        n = pre.shape[0]
        shape = (info.channels, info.tile_size, info.tile_size)
        if pre.shape[1:] != shape or post.shape != pre.shape or not 1 <= n <= info.batch_size:
            raise OnnxModelError(
                f"{self.path} takes up to {info.batch_size} pairs of {list(shape)}, got "
                f"{list(pre.shape)} and {list(post.shape)}"
            )
        if n < info.batch_size:
            pre, post = _pad_batch(pre, info.batch_size), _pad_batch(post, info.batch_size)
        feeds = {
            ONNX_INPUTS[0]: np.ascontiguousarray(pre, dtype=np.float32),
            ONNX_INPUTS[1]: np.ascontiguousarray(post, dtype=np.float32),
        }
        (prob,) = self._session.run([ONNX_OUTPUT], feeds)
        return prob[:n]


def _pad_batch(x: np.ndarray, batch: int) -> np.ndarray:
    out = np.zeros((batch, *x.shape[1:]), dtype=np.float32)
    out[: x.shape[0]] = x
    return out


def read_onnx_info(path: PathLike) -> OnnxModelInfo:
    """The kdmsi metadata of an exported ONNX model (opens an ONNX Runtime session).

    Raises:
        RuntimeUnavailable, OnnxModelError: see `OnnxPredictor`.
    """
    return OnnxPredictor(path, threads=1).info


def check_tile_size(info: OnnxModelInfo, tile_size: Optional[int], source: str) -> int:
    """The tile size to run an ONNX model with: its own; a different request is an error.

    Raises:
        OnnxModelError: ``tile_size`` is given and differs from the exported one.
    """
    if tile_size is not None and int(tile_size) != info.tile_size:
        raise OnnxModelError(
            f"{source} was exported for {info.tile_size} px tiles, not {tile_size}: drop "
            f"--tile-size, or export again with `kdmsi export-onnx --tile-size {tile_size}`"
        )
    return info.tile_size


def _omp_threads() -> Optional[int]:
    """``OMP_NUM_THREADS`` as a positive number, else None."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


__all__ = [
    "ONNXRUNTIME_PIN",
    "ONNX_FORMAT",
    "ONNX_INPUTS",
    "ONNX_OUTPUT",
    "ONNX_TOLERANCE",
    "RUNTIMES",
    "OnnxModelError",
    "OnnxModelInfo",
    "OnnxPredictor",
    "RuntimeUnavailable",
    "check_tile_size",
    "info_from_metadata",
    "is_onnx_path",
    "onnxruntime_available",
    "read_onnx_info",
    "require_onnxruntime",
]
