"""One tile of an aligned pair as the network's input: stretch and normalisation fused into one
`a * x + b` per band, written straight into preallocated float32 batches (never float64);
invalid pixels set to the normalised mean. Shared by detect and by training from tags."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..geo.align import AlignedPair
from ..geo.raster import RasterInputError
from ..geo.stretch import BandStretch
from ..geo.tiling import (
    Window,
    pad_tile,
)
from .normalisation import Normalisation


@dataclass(frozen=True)
class TilePreparer:
    """Reads one window of the pair and turns it into network input.

    ``prepare_into(window, pre_out, post_out)`` writes both dates, float32 [C, T, T], into the
    given arrays (a slot of a batch) and returns valid bool [h, w], or None (nothing written)
    when no pixel is valid. Values: the band stretch to [0, 255] and the checkpoint's
    normalisation fused into one ``a * x + b`` per band, computed in float32 straight from the
    raster's dtype (uint8 is never copied to a float64 or an intermediate float32 array);
    invalid pixels are 0 in both dates; a window smaller than a tile is padded (reflect).
    ``__call__(window)`` -> (pre, post, valid) does the same into new arrays.
    """

    pair: AlignedPair
    stretches: tuple[BandStretch, BandStretch]
    normalisation: Normalisation

    @functools.cached_property
    def _scale_offset(self) -> tuple[np.ndarray, np.ndarray]:
        scale, offset = self.normalisation.scale_offset()
        return scale[:, None, None], offset[:, None, None]

    def __call__(self, window: Window) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        rows, cols = window.tile_shape
        shape = (self.pair.band_count, rows, cols)
        pre, post = np.empty(shape, np.float32), np.empty(shape, np.float32)
        valid = self.prepare_into(window, pre, post)
        return None if valid is None else (pre, post, valid)

    def prepare_into(
        self, window: Window, pre_out: np.ndarray, post_out: np.ndarray
    ) -> Optional[np.ndarray]:
        """Read ``window`` into ``pre_out``/``post_out`` float32 [C, T, T]; valid or None."""
        try:
            pre, post, valid = self.pair.read_window(window.x, window.y, window.w, window.h)
        except RuntimeError as exc:
            raise RasterInputError(
                f"cannot read pixels x={window.x} y={window.y} ({window.w} x {window.h}) of "
                f"{self.pair.before_path} / {self.pair.after_path}: {exc}"
            ) from exc
        if not valid.any():
            return None
        all_valid = bool(valid.all())
        for stretch, pixels, out in (
            (self.stretches[0], pre, pre_out),
            (self.stretches[1], post, post_out),
        ):
            self._network_input_into(stretch, pixels, valid, all_valid, window, out)
        return valid

    def _network_input_into(
        self,
        stretch: BandStretch,
        pixels: np.ndarray,
        valid: np.ndarray,
        all_valid: bool,
        window: Window,
        out: np.ndarray,
    ) -> None:
        """[C, h, w] raster values -> ``out`` [C, T, T] = (stretched / 255 - mean) / std."""
        scale, offset = self._scale_offset
        target = out[:, : window.h, : window.w]
        if stretch.method == "uint8" and pixels.dtype == np.uint8:
            np.multiply(pixels, scale, out=target)  # uint8 -> float32 in one pass
        else:
            np.multiply(stretch.apply(pixels), scale, out=target)
        target += offset
        if not all_valid:
            target[:, ~valid] = 0.0
        if window.pad_x or window.pad_y:
            out[...] = pad_tile(target, window)
