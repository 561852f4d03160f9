"""The ONNX exports that ``kdmsi detect --runtime auto`` makes, kept between runs.

On a CPU, ``--runtime auto`` exports a ``.kdmsi`` model to ONNX, checks it against torch and
times both runtimes. That costs tens of seconds and, for the exporter, the run's peak memory
(resnet50: ~1.4 GiB). The export and the choice are kept here, keyed by the model file's
content and everything the choice depends on, so later runs with the same model go straight
to the chosen runtime; when that is ONNX Runtime, torch is not even imported (resnet50 peaks
at ~650 MiB instead). No torch import in this module.

Location: ``$KDMSI_CACHE_DIR`` (set it empty to keep nothing), else
``$XDG_CACHE_HOME/kdmsi/onnx``, else ``~/.cache/kdmsi/onnx``. The `MAX_ENTRIES` most recently
used exports are kept; deleting the folder is always safe.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Optional, Sequence

from .. import __version__
from ..types import PathLike

log = logging.getLogger(__name__)


MAX_ENTRIES = 3
"""Exports kept (a resnet50 detector's is ~160 MB); the least recently used go first."""
CHOICES = ("torch", "onnx")
_MODEL = "model.onnx"
_RECORD = "choice.json"


@dataclass
class CachedExport:
    """One cache entry: the ONNX file and, once timed, the runtime ``auto`` chose."""

    onnx_path: Path
    choice: Optional[str]
    seconds_per_tile: dict[str, float]


def cache_dir() -> Optional[Path]:
    """The cache folder (see the module docstring); None when ``KDMSI_CACHE_DIR`` is empty."""
    configured = os.environ.get("KDMSI_CACHE_DIR")
    if configured is not None:
        return Path(configured).expanduser() if configured.strip() else None
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kdmsi" / "onnx"


def accelerator_possible() -> bool:
    """False when torch could certainly not find a GPU here (no CUDA or ROCm driver library,
    not a Mac), so ``--device auto`` means the CPU without importing torch to ask."""
    if sys.platform == "darwin":
        return True  # Apple's MPS: only torch can tell
    names = ("nvcuda",) if sys.platform == "win32" else ("cuda", "amdhip64")
    return any(ctypes.util.find_library(name) for name in names)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "-"


def export_key(
    model_path: PathLike,
    tile_size: Optional[int],
    batch_size: int,
    scales: Optional[Sequence[float]],
    flip: bool,
) -> str:
    """Hex digest of the model file's bytes and of what the export and the runtime choice
    depend on: export arguments, library versions, the CPU (core count and architecture)."""
    digest = hashlib.sha256()
    with open(model_path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    facts = {
        "tile_size": tile_size,
        "batch_size": int(batch_size),
        "scales": None if scales is None else [float(s) for s in scales],
        "flip": bool(flip),
        "kdmsi": __version__,
        "torch": _version("torch"),
        "onnxruntime": _version("onnxruntime"),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }
    digest.update(json.dumps(facts, sort_keys=True).encode())
    return digest.hexdigest()[:32]


def lookup(key: str) -> Optional[CachedExport]:
    """The entry of ``key``, marked as just used; None when there is none (or no cache)."""
    root = cache_dir()
    if root is None:
        return None
    entry = root / key
    onnx_path, record_path = entry / _MODEL, entry / _RECORD
    if not onnx_path.is_file():
        return None
    record: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        record = json.loads(record_path.read_text())
    choice = record.get("choice") if record.get("choice") in CHOICES else None
    seconds = record.get("seconds_per_tile")
    with contextlib.suppress(OSError):
        os.utime(entry)  # least recently used goes first
    return CachedExport(onnx_path, choice, seconds if isinstance(seconds, dict) else {})


def store(
    key: str,
    onnx_path: PathLike,
    choice: Optional[str] = None,
    seconds_per_tile: Optional[dict[str, float]] = None,
) -> Optional[Path]:
    """Keep a copy of ``onnx_path`` (and the choice, when timed) under ``key``; drop the least
    recently used entries beyond `MAX_ENTRIES`. Returns the entry's folder, or None when there
    is no cache or it cannot be written (logged: the run goes on without it)."""
    root = cache_dir()
    if root is None:
        return None
    entry = root / key
    record = {
        "choice": choice if choice in CHOICES else None,
        "seconds_per_tile": seconds_per_tile or {},
        "kdmsi": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    try:
        root.mkdir(parents=True, exist_ok=True)
        if (entry / _MODEL).is_file():  # only the choice is new
            _write_record(entry, record)
        else:
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
            try:
                shutil.copyfile(onnx_path, staging / _MODEL)
                _write_record(staging, record)
                os.replace(staging, entry)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
    except OSError as exc:
        log.warning(
            "could not keep the ONNX export in %s (%s); the next run exports again", root, exc
        )
        return None
    _prune(root)
    return entry


def discard(key: str) -> None:
    """Remove the entry of ``key`` (e.g. a damaged file), if any."""
    root = cache_dir()
    if root is not None:
        shutil.rmtree(root / key, ignore_errors=True)


def _write_record(folder: Path, record: dict[str, Any]) -> None:
    temp = folder / f".{_RECORD}.tmp"
    temp.write_text(json.dumps(record, indent=1, sort_keys=True))
    os.replace(temp, folder / _RECORD)


def _prune(root: Path) -> None:
    for staging in root.glob(".staging-*"):  # left by a run that was killed while copying
        with contextlib.suppress(OSError):
            if time.time() - staging.stat().st_mtime > 3600:
                shutil.rmtree(staging, ignore_errors=True)
    entries = sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in entries[MAX_ENTRIES:]:
        shutil.rmtree(old, ignore_errors=True)


__all__ = [
    "MAX_ENTRIES",
    "CachedExport",
    "accelerator_possible",
    "cache_dir",
    "discard",
    "export_key",
    "lookup",
    "store",
]
