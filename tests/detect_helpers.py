"""Helpers of the detect tests: a georeferenced scene with a known square of change, an
"oracle" predict callable, and readers of the outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import fiona
import numpy as np
import torch
import torch.nn.functional as F
from osgeo import gdal, osr

from kdmsi.data.pairs import Normalisation
from kdmsi.detect.with_runner import DetectResult, detect_with_predictor

PIXEL = 10.0
GT = (500000.0, PIXEL, 0.0, 5000000.0, 0.0, -PIXEL)  # EPSG:32633
HEIGHT, WIDTH = 320, 384
SQUARE = (slice(100, 160), slice(200, 280))  # rows, cols of the change in `scene()`
TILE = ["--tile-size", "128", "--overlap", "32", "--batch-size", "4"]
NORM = Normalisation.default(3)


def wkt(epsg: int) -> str:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    return srs.ExportToWkt()


def write_raster(
    path: Path,
    data: np.ndarray,
    gt: tuple[float, ...] = GT,
    epsg: Optional[int] = 32633,
    nodata: Optional[float] = None,
) -> Path:
    """GeoTIFF from ``data`` [C, H, W] (uint8, uint16 or float32)."""
    dtype = {np.dtype(np.uint16): gdal.GDT_UInt16, np.dtype(np.float32): gdal.GDT_Float32}.get(
        data.dtype, gdal.GDT_Byte
    )
    c, h, w = data.shape
    ds = gdal.GetDriverByName("GTiff").Create(str(path), w, h, c, dtype)
    ds.SetGeoTransform(gt)
    if epsg is not None:
        ds.SetProjection(wkt(epsg))
    for i in range(c):
        band = ds.GetRasterBand(i + 1)
        band.WriteArray(data[i])
        if nodata is not None:
            band.SetNoDataValue(nodata)
    ds = None
    return path


def scene(height: int = HEIGHT, width: int = WIDTH, c: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (pre, post) [c, H, W]: a smooth texture (values 20..130); post has +120 in SQUARE."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    bands = [40 + 0.2 * x + 0.1 * y, 90 - 0.1 * y + 0.05 * x, 75 + 40 * np.sin(x / 17 + y / 23)]
    pre = np.stack(bands[:c]).round().clip(20, 130).astype(np.uint8)
    post = pre.copy()
    post[:, SQUARE[0], SQUARE[1]] += 120
    return pre, post


def oracle(pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
    """Pixelwise 'perfect detector': [B, C, T, T] -> sigmoid of the mean |post - pre|."""
    d = (post - pre).abs().mean(dim=1, keepdim=True)
    return torch.sigmoid(8.0 * (d - 0.8))


def blurred_oracle(pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
    """Like `oracle` but with a 9 x 9 context, so tile edges and the tile grid matter."""
    d = (post - pre).abs().mean(dim=1, keepdim=True)
    d = F.avg_pool2d(d, 9, stride=1, padding=4, count_include_pad=False)
    return torch.sigmoid(8.0 * (d - 0.8))


def read_band(path: Path) -> np.ndarray:
    ds = gdal.Open(str(path))
    return ds.GetRasterBand(1).ReadAsArray()


def features(path: Path) -> list:
    with fiona.open(str(path)) as src:
        return list(src)


def run_oracle(
    before: Path, after: Path, out: Path, predict=oracle, **kwargs
) -> tuple[DetectResult, np.ndarray]:
    """detect_with_predictor with an oracle; returns the result and the probability array."""
    prob_path = out.with_suffix(".tif")
    kwargs = {"tile_size": 128, "overlap_px": 32, "batch_size": 4, **kwargs}
    result = detect_with_predictor(before, after, predict, NORM, out, prob_path, **kwargs)
    return result, read_band(prob_path)


def files_in(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}
