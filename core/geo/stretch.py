"""Per-band linear stretch of raster values to the networks' input range [0, 255]."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
from osgeo import gdal

from .align import AlignedPair, warp_onto
from .raster import RasterInputError, gdal_exceptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BandStretch:
    """Per-band linear stretch to the network's input range [0, 255].

    ``apply`` maps ``low`` -> 0 and ``high`` -> 255 and clips. 8-bit rasters use low=0,
    high=255 (values unchanged); 16-bit and float rasters use percentiles of a sample.
    """

    low: tuple[float, ...]
    high: tuple[float, ...]
    method: str = "uint8"
    percentiles: tuple[float, float] = (0.0, 100.0)

    @classmethod
    def identity(cls, band_count: int) -> BandStretch:
        """The 8-bit stretch: values used as they are."""
        return cls((0.0,) * band_count, (255.0,) * band_count, "uint8", (0.0, 100.0))

    @property
    def band_count(self) -> int:
        return len(self.low)

    def apply(self, arr: np.ndarray) -> np.ndarray:
        """``arr`` [C, h, w] (any numeric dtype) -> float32 [C, h, w] in [0, 255].

        NaN (float nodata) becomes 0; mask such pixels with the validity mask anyway.
        """
        if arr.ndim != 3 or arr.shape[0] != self.band_count:
            raise ValueError(
                f"expected [{self.band_count}, h, w] for this stretch, got {list(arr.shape)}"
            )
        out = arr.astype(np.float32)  # a copy
        if self.method != "uint8":
            low = np.asarray(self.low, dtype=np.float32)[:, None, None]
            span = np.asarray(self.high, dtype=np.float32)[:, None, None] - low
            scale = np.float32(255.0) / np.maximum(span, np.float32(1e-12))
            out -= low
            out *= scale
        np.nan_to_num(out, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
        np.clip(out, 0.0, 255.0, out=out)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly description (for output metadata)."""
        return {
            "method": self.method,
            "low": [float(v) for v in self.low],
            "high": [float(v) for v in self.high],
            "percentiles": [float(v) for v in self.percentiles],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BandStretch:
        return cls(
            tuple(float(v) for v in d["low"]),
            tuple(float(v) for v in d["high"]),
            str(d.get("method", "percentile")),
            tuple(float(v) for v in d.get("percentiles", (0.0, 100.0))),  # type: ignore[arg-type]
        )


def sample_shape(width: int, height: int, max_samples: int) -> tuple[int, int]:
    """(w, h) of a decimated read of about ``max_samples`` pixels at most (never larger)."""
    scale = min(1.0, math.sqrt(max_samples / float(width * height)))
    return max(1, min(width, round(width * scale))), max(1, min(height, round(height * scale)))


def compute_stretch(
    dataset: gdal.Dataset,
    bands: Optional[Sequence[int]] = None,
    low_pct: float = 2.0,
    high_pct: float = 98.0,
    max_samples: int = 1_000_000,
    alpha_band: Optional[int] = None,
    name: Optional[str] = None,
) -> BandStretch:
    """Per-band stretch of ``dataset``: identity for 8-bit, percentiles otherwise.

    Percentiles come from one decimated read (nearest neighbour, ~``max_samples`` pixels per
    band, using overviews when the file has them), so memory stays bounded whatever the raster
    size. Masked/nodata pixels (GDAL mask band, and ``alpha_band`` == 0 when given) and NaNs
    are left out.

    Args:
        dataset: the raster (e.g. `AlignedPair.before`, or the after raster).
        bands: 1-based bands; default all bands.
        low_pct, high_pct: percentiles mapped to 0 and 255.
        max_samples: pixels per band read for the statistics.
        alpha_band: 1-based band whose zeros also mark invalid pixels.
        name: the raster's file, for messages (default: the dataset's description).

    Raises:
        RasterInputError: a band has no valid pixel.
    """
    if not 0.0 <= low_pct < high_pct <= 100.0:
        raise ValueError(f"need 0 <= low_pct < high_pct <= 100, got {low_pct}, {high_pct}")
    bands = list(bands) if bands is not None else list(range(1, dataset.RasterCount + 1))
    with gdal_exceptions():
        types = {dataset.GetRasterBand(b).DataType for b in bands}
        if types == {gdal.GDT_Byte}:
            return BandStretch.identity(len(bands))
        bw, bh = sample_shape(dataset.RasterXSize, dataset.RasterYSize, max_samples)

        def sample(band: gdal.Band) -> np.ndarray:
            return band.ReadAsArray(
                0,
                0,
                dataset.RasterXSize,
                dataset.RasterYSize,
                buf_xsize=bw,
                buf_ysize=bh,
                resample_alg=gdal.GRIORA_NearestNeighbour,
            )

        alpha_ok = sample(dataset.GetRasterBand(alpha_band)) > 0 if alpha_band else True
        lows, highs = [], []
        for b in bands:
            band = dataset.GetRasterBand(b)
            values = sample(band).astype(np.float64)
            ok = np.isfinite(values) & alpha_ok
            if band.GetMaskFlags() != gdal.GMF_ALL_VALID:
                ok &= sample(band.GetMaskBand()) > 0
            values = values[ok]
            if values.size == 0:
                raise RasterInputError(
                    f"band {b} of {name or dataset.GetDescription() or 'the raster'} has no "
                    "valid pixel in the analysed area (all nodata, masked or NaN): check its "
                    "nodata value and mask, or choose another area with --bounds"
                )
            low, high = np.percentile(values, [low_pct, high_pct])
            if high <= low:
                high = low + 1.0
            lows.append(float(low))
            highs.append(float(high))
    log.debug("stretch %s..%s from a %d x %d sample", lows, highs, bw, bh)
    return BandStretch(tuple(lows), tuple(highs), "percentile", (float(low_pct), float(high_pct)))


def pair_stretches(
    pair: AlignedPair, low_pct: float = 2.0, high_pct: float = 98.0, max_samples: int = 1_000_000
) -> tuple[BandStretch, BandStretch]:
    """(before, after) stretches computed over the shared footprint only.

    The after sample is a nearest-neighbour warp of the after raster onto a decimated version
    of the shared grid, so the statistics cover the same area as the before ones without
    bilinear-warping the whole raster.
    """
    c = pair.band_count
    before = compute_stretch(
        pair.before, None, low_pct, high_pct, max_samples, name=pair.before_path or None
    )
    with gdal_exceptions():
        if {pair.after_source.GetRasterBand(b).DataType for b in range(1, c + 1)} == {
            gdal.GDT_Byte
        }:
            return before, BandStretch.identity(c)
        bw, bh = sample_shape(pair.width, pair.height, max_samples)
        gt = pair.geotransform
        small_gt = (gt[0], gt[1] * pair.width / bw, 0.0, gt[3], 0.0, gt[5] * pair.height / bh)
        small = warp_onto(
            pair.after_source, small_gt, bw, bh, pair.crs_wkt, pair.after_nodata, "near"
        )
    after = compute_stretch(
        small, list(range(1, c + 1)), low_pct, high_pct, max_samples, c + 1, pair.after_path or None
    )
    return before, after
