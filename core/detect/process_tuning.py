"""Process-wide settings that keep `kdmsi detect` lean: GDAL's block cache, glibc's mmap
threshold, OpenMP's wait policy."""

from __future__ import annotations

import os
import sys

from ..runtime.onnx_model import keep_triton_out

DETECT_GDAL_CACHE_MB = 32
"""GDAL block cache for detect (`tune_process_for_detect`), MB. GDAL's default (5 % of the RAM)
grows to gigabytes on big rasters. A tile row re-reads blocks of the previous one (overlap),
so a smaller cache costs decompression, which runs in the reader thread beside the model:
measured on a full 8k^2 pair (3 bands, both dates, numpy stand-in model), 64 -> 16 MB took
the peak RSS from 247 to 163 MiB, the reader's CPU time from 1.5-1.8 to 1.7-1.9 s for 1,849
tiles (about 1 ms per tile, against 200-900 ms of a model's forward). 32 MB holds one row of
256 px blocks of both 3-band dates at 16k px width."""


def tune_process_for_detect(gdal_cache_mb: int = DETECT_GDAL_CACHE_MB) -> None:
    """Process-wide settings that keep detect lean; `kdmsi detect` calls it first thing.

    * GDAL's block cache bounded to ``gdal_cache_mb`` (unless GDAL_CACHEMAX is set or the
      cache is already smaller): three tile rows of blocks of both dates at 16k px width;
      GDAL's default, 5 % of the RAM, grows to gigabytes on big rasters.
    * `release_freed_memory`: freed large arrays go back to the system.
    * ``OMP_WAIT_POLICY=PASSIVE`` unless set, when torch is not imported yet: torch's
      OpenMP threads then sleep between operations instead of spinning, which starved the
      tile reader and other programs (measured on a busy 2-core machine: a resnet18
      forward 1.15 -> 0.61 s per tile). ONNX Runtime gets the same by session option.
    * `kdmsi.runtime.onnx_model.keep_triton_out`, when torch is not imported yet: ~70 MB less RSS.

    A host application (QGIS) may keep its own settings and skip this.
    """
    from osgeo import gdal

    if "GDAL_CACHEMAX" not in os.environ:
        gdal.SetCacheMax(min(gdal.GetCacheMax(), gdal_cache_mb << 20))
    release_freed_memory()
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        keep_triton_out()


def release_freed_memory(threshold_bytes: int = 256 << 10) -> bool:
    """Have glibc's malloc serve blocks of ``threshold_bytes`` and more with mmap, returned to
    the system when freed. By default glibc raises that threshold (up to 32 MiB) after the
    first large free, after which tile-sized arrays recycle heap memory that fragments and
    stays resident (measured: 40 MiB less peak RSS). No-op (False) where there is no glibc
    or MALLOC_MMAP_THRESHOLD_ is set."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or not name.startswith("libc.so"):
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold_bytes)))
    except (OSError, AttributeError):
        return False


_M_MMAP_THRESHOLD = -3  # glibc malloc.h
