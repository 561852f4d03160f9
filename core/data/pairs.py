"""Change-detection datasets in the common `A/`, `B/`, optional `label/` folder layout.

Images of any size are cut into tiles (the last row/column shifted back to stay inside the
image; images smaller than a tile are zero-padded, and the padding is ignored in the masks).
Image-level labels come from a CSV ``name,changed`` or, failing that, from the masks (a tile
is changed when it holds any changed pixel).
"""

from __future__ import annotations

import copy
import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from ..types import PathLike
from .normalisation import IMAGENET_MEAN, IMAGENET_STD, Normalisation  # noqa: F401 (re-export)

IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


class DatasetError(ValueError):
    """A dataset folder or label file that cannot be used; the message says how to fix it."""


def read_image(path: PathLike, window: Optional[tuple[int, int, int, int]] = None) -> np.ndarray:
    """Read an image (any GDAL format) as [C, H, W]; `window` is (x, y, w, h) in pixels."""
    from osgeo import gdal

    gdal.UseExceptions()
    try:
        ds = gdal.Open(str(path))
    except RuntimeError as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from None
    arr = ds.ReadAsArray(*window) if window else ds.ReadAsArray()
    if arr is None:
        raise DatasetError(f"cannot read pixels of {path}")
    return arr[None] if arr.ndim == 2 else arr


def image_size(path: PathLike) -> tuple[int, int]:
    """(height, width) of an image file."""
    from osgeo import gdal

    gdal.UseExceptions()
    try:
        ds = gdal.Open(str(path))
    except RuntimeError as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from None
    return ds.RasterYSize, ds.RasterXSize


def tile_origins(length: int, tile: int) -> list[int]:
    """Tile start offsets along one axis: non-overlapping, the last shifted back inside."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, tile))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


@dataclass(frozen=True)
class TileRef:
    """One tile of one image: `name` is the image's file stem, (y, x) the tile's top-left."""

    name: str
    y: int
    x: int
    height: int
    width: int

    @property
    def key(self) -> str:
        """A unique tile name: the image name, plus the offset when the image holds several."""
        return self.name if (self.y, self.x) == (0, 0) else f"{self.name}@{self.y}_{self.x}"


def find_pairs(root: PathLike) -> dict[str, tuple[Path, Path]]:
    """Image stem -> (A path, B path) for every image present in both `A/` and `B/`."""
    root = Path(root)
    a_dir, b_dir = root / "A", root / "B"
    if not a_dir.is_dir() or not b_dir.is_dir():
        raise DatasetError(
            f"{root} is not a change-detection dataset: it needs folders A/ (before) and B/ "
            "(after) holding images of the same names"
        )
    a = {p.stem: p for p in sorted(a_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    b = {p.stem: p for p in sorted(b_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if only_a or only_b:
        raise DatasetError(
            f"{root}: A/ and B/ must hold the same image names; only in A/: {only_a[:5]}, "
            f"only in B/: {only_b[:5]}"
        )
    if not a:
        raise DatasetError(f"{root}: A/ and B/ hold no images ({', '.join(IMAGE_SUFFIXES)})")
    return {k: (a[k], b[k]) for k in a}


def read_label_csv(path: PathLike) -> dict[str, int]:
    """`name,changed` rows (header required; changed in {0, 1}) -> {name: label}."""
    labels: dict[str, int] = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"name", "changed"} <= set(reader.fieldnames):
            raise DatasetError(f"{path}: expected a header 'name,changed'")
        for i, row in enumerate(reader, start=2):
            value = (row["changed"] or "").strip()
            if value not in ("0", "1"):
                raise DatasetError(f"{path}, line {i}: changed must be 0 or 1, not {value!r}")
            labels[Path(row["name"].strip()).stem] = int(value)
    return labels


def find_mask(label_dir: Path, name: str) -> Optional[Path]:
    for suffix in IMAGE_SUFFIXES:
        p = label_dir / f"{name}{suffix}"
        if p.is_file():
            return p
    return None


class PairDataset(Dataset):
    """Tiles of before/after image pairs with image-level labels and, when present, masks.

    Each item is a dict: ``pre``, ``post`` float32 [C, T, T] (normalised), ``mask`` int64
    [T, T] (0 / 1, `IGNORE_INDEX` where unknown or padded), ``valid`` bool [T, T] (image
    pixels, False on padding: an unknown pixel of a tile labelled changed is valid),
    ``label`` float32 scalar (1 = changed), ``has_mask`` bool, ``key`` str. With ``augment``,
    one random flip/rot90 is applied identically to both dates, the mask and ``valid``.

    Args:
        root: folder with `A/`, `B/` and optionally `label/` and `labels.csv`.
        tile_size: T.
        label_dir: masks folder (default `root/label` when it exists); 0/255 or 0/1 masks.
        labels_csv: image-level labels (default `root/labels.csv` when it exists); used for
            images without masks. Images larger than a tile need masks: a label of 1 does not
            say which of their tiles changed.
        names: restrict to these image names.
        bands: 1-based band indices to use (default: the first three, or all when fewer).
        normalisation: defaults to `Normalisation.default(len(bands))`.
        require_labels: raise when an image has neither a mask nor a CSV label.
    """

    @classmethod
    def for_model(cls, root: PathLike, meta: dict, **kwargs) -> PairDataset:
        """The tiles of ``root`` read as the model file whose metadata is ``meta`` was trained:
        its tile size, bands and normalisation (``kwargs``: the other arguments)."""
        return cls(
            root,
            tile_size=meta["tile_size"],
            bands=meta["bands"],
            normalisation=Normalisation.from_dict(meta["normalisation"]),
            **kwargs,
        )

    def __init__(
        self,
        root: PathLike,
        tile_size: int = 256,
        label_dir: Optional[PathLike] = None,
        labels_csv: Optional[PathLike] = None,
        names: Optional[Sequence[str]] = None,
        bands: Optional[Sequence[int]] = None,
        normalisation: Optional[Normalisation] = None,
        augment: bool = False,
        require_labels: bool = True,
        seed: int = 0,
    ):
        self.root = Path(root)
        self.tile_size = tile_size
        self.augment = augment
        self._rng = np.random.default_rng(seed)
        pairs = find_pairs(self.root)
        if names is not None:
            unknown = sorted(set(names) - set(pairs))
            if unknown:
                raise DatasetError(f"{root}: no image pair named {unknown[:5]}")
            pairs = {k: pairs[k] for k in names}
        self.pairs = pairs
        default_labels = self.root / "label"
        self.label_dir = (
            Path(label_dir) if label_dir else (default_labels if default_labels.is_dir() else None)
        )
        if label_dir and not self.label_dir.is_dir():
            raise DatasetError(f"label folder {label_dir} does not exist")
        csv_path = Path(labels_csv) if labels_csv else self.root / "labels.csv"
        if labels_csv and not csv_path.is_file():
            raise DatasetError(f"label file {labels_csv} does not exist")
        self.csv_labels = read_label_csv(csv_path) if csv_path.is_file() else {}
        first = next(iter(pairs.values()))[0]
        n_bands = read_image(first, (0, 0, 1, 1)).shape[0]
        self.bands = list(bands) if bands else list(range(1, min(3, n_bands) + 1))
        if max(self.bands) > n_bands or min(self.bands) < 1:
            raise DatasetError(f"{first} has {n_bands} bands; cannot use bands {self.bands}")
        self.normalisation = normalisation or Normalisation.default(len(self.bands))
        self.tiles: list[TileRef] = []
        self.masks: dict[str, Optional[Path]] = {}
        self.labels: list[Optional[int]] = []
        for name, (a_path, b_path) in pairs.items():
            self._index_image(name, a_path, b_path, require_labels)

    def _index_image(self, name: str, a_path: Path, b_path: Path, require_labels: bool) -> None:
        height, width = image_size(a_path)
        if image_size(b_path) != (height, width):
            raise DatasetError(
                f"{name}: before {a_path.name} is {width}x{height} but after {b_path.name} is "
                f"{image_size(b_path)[1]}x{image_size(b_path)[0]}; both dates must share one grid"
            )
        mask = find_mask(self.label_dir, name) if self.label_dir else None
        if mask is not None and image_size(mask) != (height, width):
            raise DatasetError(
                f"{name}: mask {mask} does not match the image size {width}x{height}"
            )
        self.masks[name] = mask
        t = self.tile_size
        for y in tile_origins(height, t):
            for x in tile_origins(width, t):
                ref = TileRef(name, y, x, min(t, height), min(t, width))
                if mask is not None:
                    label: Optional[int] = int(
                        bool(read_image(mask, (x, y, ref.width, ref.height)).any())
                    )
                elif name in self.csv_labels:
                    label = self.csv_labels[name]
                    if label == 1 and (height > t or width > t):
                        raise DatasetError(
                            f"{name} is {width}x{height}, larger than a {t}px tile, and labelled "
                            "changed without a mask: label its tiles instead (cut the image to "
                            f"{t}px tiles and list each in labels.csv)"
                        )
                elif require_labels:
                    raise DatasetError(
                        f"{name} has no mask in label/ and no row in labels.csv; add one of them"
                    )
                else:
                    label = None
                self.tiles.append(ref)
                self.labels.append(label)

    def __len__(self) -> int:
        return len(self.tiles)

    @property
    def has_masks(self) -> bool:
        """True when every image of the set has a pixel mask."""
        return all(m is not None for m in self.masks.values())

    def read_tile(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw tile of item `index`: pre, post [C, T, T] uint8 and mask uint8 [T, T] (0/1/255)."""
        ref = self.tiles[index]
        a_path, b_path = self.pairs[ref.name]
        window = (ref.x, ref.y, ref.width, ref.height)
        idx = [b - 1 for b in self.bands]
        pre = read_image(a_path, window)[idx]
        post = read_image(b_path, window)[idx]
        mask_path = self.masks[ref.name]
        if mask_path is not None:
            # 0/255 and 0/1 masks alike: any non-zero pixel is change.
            mask = (read_image(mask_path, window)[0] > 0).astype(np.uint8)
        elif self.labels[index] == 0:
            mask = np.zeros((ref.height, ref.width), np.uint8)
        else:
            mask = np.full((ref.height, ref.width), IGNORE_INDEX, np.uint8)
        t = self.tile_size
        return _pad(pre, t), _pad(post, t), _pad(mask, t, IGNORE_INDEX)

    def __getitem__(self, index: int) -> dict:
        pre, post, mask = self.read_tile(index)
        ref = self.tiles[index]
        valid = np.zeros(mask.shape, bool)
        valid[: ref.height, : ref.width] = True
        if self.augment:
            pre, post, mask, valid = paired_augment(pre, post, mask, self._rng, valid)
        label = self.labels[index]
        return {
            "pre": self.normalisation(pre),
            "post": self.normalisation(post),
            "mask": torch.from_numpy(mask.astype(np.int64)),
            "valid": torch.from_numpy(np.ascontiguousarray(valid)),
            "label": torch.tensor(float(label if label is not None else -1)),
            "has_mask": self.masks[self.tiles[index].name] is not None,
            "key": self.tiles[index].key,
        }


def _pad(arr: np.ndarray, tile: int, value: int = 0) -> np.ndarray:
    """Zero-pad the last two axes of `arr` up to tile x tile (bottom/right)."""
    h, w = arr.shape[-2:]
    if h == tile and w == tile:
        return arr
    pad = [(0, 0)] * (arr.ndim - 2) + [(0, max(0, tile - h)), (0, max(0, tile - w))]
    return np.pad(arr, pad, constant_values=value)


def paired_augment(
    pre: np.ndarray,
    post: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    *extra: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """One random horizontal flip and rot90 (k in 0..3), the same for both dates, the mask and
    any ``extra`` [H, W] arrays.

    pre, post: [C, H, W]; mask: [H, W]. Returns contiguous copies (pre, post, mask, *extra).
    """
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))

    def apply(x: np.ndarray) -> np.ndarray:
        if flip:
            x = x[..., ::-1]
        return np.ascontiguousarray(np.rot90(x, k, axes=(-2, -1)))

    return (apply(pre), apply(post), apply(mask), *(apply(x) for x in extra))


def write_image(path: PathLike, image: np.ndarray) -> None:
    """Write a uint8 image [H, W] or [C, H, W] as PNG (by extension) or GeoTIFF."""
    from osgeo import gdal

    gdal.UseExceptions()
    arr = image[None] if image.ndim == 2 else image
    mem = gdal.GetDriverByName("MEM").Create(
        "", arr.shape[2], arr.shape[1], arr.shape[0], gdal.GDT_Byte
    )
    for i, band in enumerate(arr, start=1):
        mem.GetRasterBand(i).WriteArray(band)
    driver = "PNG" if str(path).lower().endswith(".png") else "GTiff"
    gdal.GetDriverByName(driver).CreateCopy(str(path), mem)
    aux = Path(f"{path}.aux.xml")
    if aux.exists():
        aux.unlink()


def subset(dataset: Dataset, indices: Sequence[int], augment: Optional[bool] = None) -> Subset:
    """A Subset; with `augment` set, over a shallow copy of the dataset with that flag."""
    if augment is not None and getattr(dataset, "augment", None) != augment:
        dataset = copy.copy(dataset)
        dataset.augment = augment
    return Subset(dataset, list(indices))
