"""Tiles an analyst tagged changed (1) / not changed (0): the tagged windows of a raster pair, and
the dataset of their aligned, stretched pixels."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..geo.align import AlignedPair
from ..geo.stretch import BandStretch
from ..geo.tile_layer import Cell
from ..geo.tiling import Window
from ..recipe import TAG_FIELD
from ..types import PathLike
from .pairs import IGNORE_INDEX, Normalisation, paired_augment
from .tile_prep import TilePreparer

log = logging.getLogger(__name__)


class TagError(ValueError):
    """A tile layer that cannot be used for training; the message says how to fix it."""


def read_tagged_windows(
    tiles_path: PathLike, pair: AlignedPair, tile_size: Optional[int] = None
) -> tuple[list[tuple[Window, int]], int]:
    """(window on the aligned grid, tag) for every feature whose `changed` is 0 or 1, and the
    window size used.

    Each feature's extent is transformed into the raster CRS; a square window centred on it is
    taken, shifted to lie inside the grid. Its size is ``tile_size`` or, when None, that of the
    tagged tiles themselves (the median side of their extents in pixels): a window larger
    than the tile an analyst looked at would take pixels whose change nobody tagged into a
    tile tagged unchanged. Features outside the grid are skipped with a warning; tags other
    than 0, 1 or NULL are an error.
    """
    tagged = _tagged_extents(tiles_path, pair)
    if tile_size is None:
        sides = [max(x1 - x0, y1 - y0) for (x0, y0, x1, y1), _ in tagged]
        tile_size = max(MIN_TILE_SIZE, int(round(float(np.median(sides))))) if sides else 256
    out: list[tuple[Window, int]] = []
    skipped = 0
    for (x0, y0, x1, y1), tag in tagged:
        window = _centred_window((x0 + x1) / 2, (y0 + y1) / 2, tile_size, pair.width, pair.height)
        if window is None:
            skipped += 1
            continue
        out.append((window, tag))
    if skipped:
        log.warning(
            "%d tagged tiles lie outside the two rasters' overlap and were skipped", skipped
        )
    return out, tile_size


MIN_TILE_SIZE = 32


def _tagged_extents(
    tiles_path: PathLike, pair: AlignedPair
) -> list[tuple[tuple[float, float, float, float], int]]:
    """((x0, y0, x1, y1) in pixels of the aligned grid, tag) of every tagged feature."""
    from osgeo import osr

    source = _open_tile_layer(tiles_path)
    layer = source.GetLayer(0)
    defn = layer.GetLayerDefn()
    if defn.GetFieldIndex(TAG_FIELD) < 0:
        raise TagError(
            f"{tiles_path} has no field '{TAG_FIELD}'; make a grid with `kdmsi tile-grid` "
            "(or add an integer field 'changed') and tag tiles 1 (changed) / 0 (not changed)"
        )
    layer_srs = layer.GetSpatialRef()
    # a GeoPackage layer made without a CRS reports "Undefined geographic/cartesian SRS"
    if layer_srs is None or (layer_srs.GetName() or "").startswith("Undefined"):
        raise TagError(f"{tiles_path} has no CRS; assign the rasters' CRS to the tile layer")
    target = osr.SpatialReference()
    target.ImportFromWkt(pair.crs_wkt)
    for srs in (layer_srs, target):
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    transform = osr.CoordinateTransformation(layer_srs, target)
    gt = pair.geotransform
    out = []
    for feature in layer:
        value = _tag(tiles_path, feature)
        if value is None:
            continue
        geom = feature.GetGeometryRef()
        if geom is None:
            continue
        geom = geom.Clone()
        geom.Transform(transform)
        min_x, max_x, min_y, max_y = geom.GetEnvelope()
        xs = sorted(((min_x - gt[0]) / gt[1], (max_x - gt[0]) / gt[1]))
        ys = sorted(((min_y - gt[3]) / gt[5], (max_y - gt[3]) / gt[5]))
        out.append(((xs[0], ys[0], xs[1], ys[1]), value))
    return out


def _open_tile_layer(path: PathLike, noun: str = "tile layer"):
    """The OGR data source of a tile layer (its first layer is the tiles).

    Raises:
        TagError: missing, unreadable (not a vector file) or without a layer.
    """
    from osgeo import ogr

    if not Path(path).exists():
        raise TagError(f"cannot open {noun} {path}: the file does not exist")
    try:
        source = ogr.Open(str(path))
    except RuntimeError as exc:
        raise TagError(f"cannot open {noun} {path}: {exc}") from None
    if source is None:
        raise TagError(f"cannot open {noun} {path}: not a vector file OGR can read")
    if source.GetLayerCount() == 0:
        raise TagError(f"{path} holds no vector layer")
    return source


def _tag(path: PathLike, feature) -> Optional[int]:
    """A feature's tag: 1, 0 or None (untagged); TagError for any other value."""
    value = feature.GetField(TAG_FIELD)
    if value is None:
        return None
    if str(value).strip() not in ("0", "1"):
        raise TagError(
            f"{path}: feature {feature.GetFID()} has {TAG_FIELD}={value!r}; use 1, 0 "
            "or leave it empty"
        )
    return int(str(value).strip())


def _centred_window(cx: float, cy: float, tile: int, width: int, height: int) -> Optional[Window]:
    if not (0 <= cx < width and 0 <= cy < height):
        return None
    w, h = min(tile, width), min(tile, height)
    x = int(min(max(round(cx - w / 2), 0), width - w))
    y = int(min(max(round(cy - h / 2), 0), height - h))
    return Window(x, y, w, h, pad_x=tile - w, pad_y=tile - h)


class RasterTileDataset(Dataset):
    """Tagged windows of an aligned raster pair, shaped like `kdmsi.data.pairs.PairDataset` items.

    Items: ``pre``/``post`` float32 [C, T, T] (prepared as for detection), ``mask``
    int64 [T, T] (0 where the tile is tagged unchanged, `IGNORE_INDEX` where unknown, nodata or
    padded; replaced by pseudo labels once `set_masks` is called), ``valid`` bool [T, T]
    (pixels with data in both dates: the pixels of a tile tagged changed whose change is
    unknown are valid), ``label``, ``key``.
    Windows are read on demand, so memory stays bounded by the batch.
    """

    def __init__(
        self,
        pair: AlignedPair,
        windows: Sequence[tuple[Window, int]],
        stretches: tuple[BandStretch, BandStretch],
        normalisation: Normalisation,
        tile_size: int,
        augment: bool = False,
        seed: int = 0,
    ):
        self.pair, self.windows = pair, [w for w, _ in windows]
        self.labels: list[Optional[int]] = [t for _, t in windows]
        self.stretches, self.normalisation = stretches, normalisation
        self.tile_size, self.augment = tile_size, augment
        self.bands = list(pair.bands)
        self.has_masks = False
        self.masks: Optional[list[np.ndarray]] = None
        self._rng = np.random.default_rng(seed)
        self._prepare = TilePreparer(pair, stretches, normalisation)

    def set_masks(self, masks: Sequence[np.ndarray]) -> None:
        """Use these uint8 [T, T] masks (e.g. pseudo labels) as the items' masks."""
        self.masks = list(masks)

    def __len__(self) -> int:
        return len(self.windows)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Network-ready pre, post float32 [C, T, T] and the valid mask bool [T, T].

        Prepared exactly as `kdmsi detect` prepares its tiles (`TilePreparer`: stretch,
        normalisation, nodata set to 0, reflect padding), so training sees what inference sees.
        """
        win = self.windows[index]
        prepared = self._prepare(win)
        t = self.tile_size
        if prepared is None:  # no valid pixel: nothing to learn from this tile's pixels
            empty = np.zeros((len(self.bands), t, t), np.float32)
            return empty, empty.copy(), np.zeros((t, t), bool)
        pre, post, valid = prepared
        return pre, post, np.pad(valid, ((0, win.pad_y), (0, win.pad_x)), constant_values=False)

    def __getitem__(self, index: int) -> dict:
        pre, post, valid = self.read(index)
        if self.masks is not None:
            mask = self.masks[index].copy()
        elif self.labels[index] == 0:
            mask = np.zeros(valid.shape, np.uint8)
        else:
            mask = np.full(valid.shape, IGNORE_INDEX, np.uint8)
        mask[~valid] = IGNORE_INDEX
        if self.augment:
            pre, post, mask, valid = paired_augment(pre, post, mask, self._rng, valid)
        return {
            "pre": torch.from_numpy(np.ascontiguousarray(pre)),
            "post": torch.from_numpy(np.ascontiguousarray(post)),
            "mask": torch.from_numpy(mask.astype(np.int64)),
            "valid": torch.from_numpy(np.ascontiguousarray(valid)),
            "label": torch.tensor(float(self.labels[index])),
            "has_mask": self.masks is not None,
            "key": f"{self.windows[index].x}_{self.windows[index].y}",
        }


def read_grid_tags(path: PathLike) -> dict[Cell, int]:
    """{(row, col): 0 or 1} of the tagged tiles of a `kdmsi.geo.tile_layer.make_tile_grid` layer.

    Raises:
        TagError: unreadable, or not a kdmsi tile grid (no ``row``, ``col``, ``changed``).
    """
    source = _open_tile_layer(path, "tile grid")
    layer = source.GetLayer(0)
    defn = layer.GetLayerDefn()
    if any(defn.GetFieldIndex(name) < 0 for name in ("row", "col", TAG_FIELD)):
        raise TagError(
            f"{path} has no row, col and changed fields: give a tile grid made by "
            "`kdmsi tile-grid` (or the plugin), or tag a new one"
        )
    tags: dict[Cell, int] = {}
    for feature in layer:
        tag = _tag(path, feature)
        if tag is not None:
            tags[(int(feature.GetField("row")), int(feature.GetField("col")))] = tag
    return tags
