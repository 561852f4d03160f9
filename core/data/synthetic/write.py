"""Writing scenes to disk: ``write_scene`` writes before/after/truth as tiled, DEFLATE-compressed
GeoTIFFs (moved into place only once all three are complete), and ``write_tile_dataset`` cuts
scenes into tiles in the usual change-detection layout (``A/``, ``B/``, ``label/`` and
``labels.csv``). GDAL is imported on first use, so generating scenes needs no GDAL.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ...types import PathLike
from .scene import Scene, make_scene

log = logging.getLogger(__name__)


def _gdal():
    """The GDAL module, imported on first use."""
    from osgeo import gdal

    return gdal


def _gdal_type(array: np.ndarray) -> int:
    """GDAL data type code for a uint8 or uint16 array."""
    gdal = _gdal()
    types = {np.dtype(np.uint8): gdal.GDT_Byte, np.dtype(np.uint16): gdal.GDT_UInt16}
    if array.dtype not in types:
        raise ValueError(f"unsupported dtype {array.dtype}; expected uint8 or uint16")
    return types[array.dtype]


def _write_geotiff(
    path: Path,
    array: np.ndarray,
    geotransform: Optional[Sequence[float]],
    crs_wkt: Optional[str],
    nodata: Optional[int] = None,
) -> None:
    """Write [C, H, W] (or [H, W]) uint8/uint16 as a tiled, DEFLATE-compressed GeoTIFF."""
    gdal = _gdal()
    array = array[None] if array.ndim == 2 else array
    count, height, width = array.shape
    options = ["TILED=YES", "COMPRESS=DEFLATE", "PREDICTOR=2", "BLOCKXSIZE=256", "BLOCKYSIZE=256"]
    options.append(
        "PHOTOMETRIC=RGB" if count == 3 and array.dtype == np.uint8 else "PHOTOMETRIC=MINISBLACK"
    )
    ds = gdal.GetDriverByName("GTiff").Create(
        str(path), width, height, count, _gdal_type(array), options=options
    )
    if ds is None:
        raise OSError(f"GDAL could not create {path}: {gdal.GetLastErrorMsg()}")
    if geotransform is not None:
        ds.SetGeoTransform(tuple(geotransform))
    if crs_wkt:
        ds.SetProjection(crs_wkt)
    for i in range(count):
        band = ds.GetRasterBand(i + 1)
        if nodata is not None:
            band.SetNoDataValue(float(nodata))
        if band.WriteArray(array[i]) != 0:
            raise OSError(f"GDAL could not write band {i + 1} of {path}: {gdal.GetLastErrorMsg()}")
    ds.FlushCache()
    ds = None


def _avoid_nodata(array: np.ndarray, nodata: Optional[int]) -> np.ndarray:
    """Nudge valid pixels that equal ``nodata`` by one step so none reads as missing."""
    if nodata is None:
        return array
    info = np.iinfo(array.dtype)
    if not info.min <= nodata <= info.max:
        raise ValueError(f"nodata {nodata} outside the {array.dtype} range")
    step = 1 if nodata < info.max else -1
    return np.where(array == nodata, array + step, array).astype(array.dtype)


def _remove_quietly(path: Path) -> None:
    """Delete ``path`` and a GDAL side-car next to it, ignoring missing files."""
    for candidate in (path, path.with_name(path.name + ".aux.xml")):
        try:
            candidate.unlink()
        except FileNotFoundError:
            pass


def write_scene(scene: Scene, folder: PathLike, nodata: Optional[int] = None) -> dict[str, Path]:
    """Write ``before.tif``, ``after.tif`` and ``truth.tif`` (uint8 0/255) into ``folder``.

    The GeoTIFFs are tiled and DEFLATE-compressed and carry the scene's geotransform and CRS.
    Each file is written under a temporary name and moved into place only once all three are
    complete, so a failure leaves no half-written output. With ``nodata`` set, before/after
    bands declare it and valid pixels equal to it are nudged by one grey level.

    Returns:
        {"before": Path, "after": Path, "truth": Path}.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rasters = {
        "before": (_avoid_nodata(scene.pre, nodata), nodata),
        "after": (_avoid_nodata(scene.post, nodata), nodata),
        "truth": (scene.change.astype(np.uint8) * np.uint8(255), None),
    }
    final = {name: folder / f"{name}.tif" for name in rasters}
    temp = {name: folder / f".{name}.{os.getpid()}.tmp.tif" for name in rasters}
    try:
        for name, (array, nd) in rasters.items():
            _write_geotiff(temp[name], array, scene.geotransform, scene.crs_wkt, nd)
        for name in rasters:
            os.replace(temp[name], final[name])
    finally:
        for path in temp.values():
            _remove_quietly(path)
    return final


def _write_tile_image(path: Path, array: np.ndarray) -> None:
    """Write uint8 [C, h, w] or [h, w] as PNG (1 or 3 bands) or GeoTIFF (any band count)."""
    gdal = _gdal()
    array = array[None] if array.ndim == 2 else array
    count, height, width = array.shape
    if path.suffix.lower() != ".png":
        _write_geotiff(path, array, None, None)
        return
    mem = gdal.GetDriverByName("MEM").Create("", width, height, count, gdal.GDT_Byte)
    for i in range(count):
        mem.GetRasterBand(i + 1).WriteArray(array[i])
    out = gdal.GetDriverByName("PNG").CreateCopy(str(path), mem, 0)
    if out is None:
        raise OSError(f"GDAL could not write {path}: {gdal.GetLastErrorMsg()}")
    out.FlushCache()
    out = None
    mem = None


def _scene_tiles(scene: Scene, tile_size: int):
    """Yield (name, pre [C, t, t], post [C, t, t], change bool [t, t]) per full tile."""
    height, width = scene.shape
    for row in range(height // tile_size):
        for col in range(width // tile_size):
            rs = slice(row * tile_size, (row + 1) * tile_size)
            cs = slice(col * tile_size, (col + 1) * tile_size)
            name = f"s{scene.seed}_{row:03d}_{col:03d}"
            yield name, scene.pre[:, rs, cs], scene.post[:, rs, cs], scene.change[rs, cs]


def write_tile_dataset(scenes: Sequence[Scene], folder: PathLike, tile_size: int = 256) -> Path:
    """Cut scenes into non-overlapping tiles in the usual change-detection dataset layout.

    Writes ``A/<name>``, ``B/<name>`` (PNG for 3-band scenes, GeoTIFF otherwise), single-band
    ``label/<name>.png`` (0/255) and ``labels.csv`` (``name,changed``; changed = 1 when the
    tile holds any changed pixel). Names are ``s{seed}_{row:03d}_{col:03d}``; partial tiles at
    the right and bottom edges are dropped. Scenes must be uint8 with distinct seeds.

    Returns:
        ``folder`` as a Path.
    """
    if tile_size < 1:
        raise ValueError(f"tile_size must be positive, got {tile_size}")
    seeds = [s.seed for s in scenes]
    if len(set(seeds)) != len(seeds):
        raise ValueError("scenes must have distinct seeds (tile names derive from the seed)")
    for scene in scenes:
        if scene.pre.dtype != np.uint8 or scene.post.dtype != np.uint8:
            raise ValueError("tile datasets are 8-bit: generate scenes with dtype='uint8'")
    folder = Path(folder)
    for sub in ("A", "B", "label"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, int]] = []
    for scene in scenes:
        ext = ".png" if scene.bands == 3 else ".tif"
        for name, pre, post, change in _scene_tiles(scene, tile_size):
            _write_tile_image(folder / "A" / f"{name}{ext}", pre)
            _write_tile_image(folder / "B" / f"{name}{ext}", post)
            _write_tile_image(folder / "label" / f"{name}.png", change.astype(np.uint8) * 255)
            rows.append((name, int(change.any())))
    _write_labels_csv(folder / "labels.csv", rows)
    return folder


def _write_labels_csv(path: Path, rows: Sequence[tuple[str, int]]) -> None:
    """Write ``name,changed`` rows atomically (temporary file, then ``os.replace``)."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["name", "changed"])
            writer.writerows(rows)
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()


def write_synthetic_dataset(
    folder: PathLike,
    scenes: int,
    size: int = 512,
    tile_size: int = 256,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """``scenes`` synthetic scenes of ``size`` px (seeds ``seed`` .. ``seed + scenes - 1``,
    `make_scene`) cut into a tile dataset in ``folder`` (`write_tile_dataset`).

    Raises:
        FileExistsError: ``folder`` holds files and ``overwrite`` is off.
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{folder} is not empty; choose another folder or pass --overwrite")
    drawn = [make_scene(size, size, seed=s) for s in range(seed, seed + scenes)]
    write_tile_dataset(drawn, folder, tile_size=tile_size)
    log.info("wrote %d scenes of %d px as %d px tiles to %s", scenes, size, tile_size, folder)
    return folder
