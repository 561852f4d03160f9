"""Training a change detector from tiles an analyst tagged changed (1) / not changed (0).

raster pair + tile layer (`changed` in {0, 1, NULL}, any CRS) -> windows of the tagged tiles on
the aligned before grid -> KD joint training (teacher CAM, student) -> MSI pseudo labels (the
threshold chosen without pixel truth) -> Siamese DeepLabV3+ -> one checkpoint with metadata.
Untagged (NULL) tiles are ignored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from .atomic import check_folder_target, check_output_target
from .checkpoint import save_detector
from .data import IGNORE_INDEX, Normalisation, paired_augment
from .inference import DEFAULT_SCALES, pick_device
from .pipeline import TilePreparer
from .progress import CancelCheck, ProgressCallback, report, sub_progress
from .pseudo_labels import msi_pseudo_labels
from .raster import AlignedPair, BandStretch, align_pair, pair_stretches
from .report import require_report_dependencies
from .report_tiles import thin_steps
from .run_reports import tags_report
from .thresholds import ProbabilityHistograms
from .tiling import Window
from .training import CDConfig, HiCDConfig, KDConfig, train_detector, train_hicd, train_kd
from .training.kd import MIN_TILES_PER_CLASS

log = logging.getLogger(__name__)

TAG_FIELD = "changed"
PathLike = Union[str, Path]


class TagError(ValueError):
    """A tile layer that cannot be used for training; the message says how to fix it."""


def read_tagged_windows(
    tiles_path: PathLike, pair: AlignedPair, tile_size: int
) -> list[tuple[Window, int]]:
    """(window on the aligned grid, tag) for every feature whose `changed` is 0 or 1.

    Each feature's extent is transformed into the raster CRS; a `tile_size` window centred on
    it is taken, shifted to lie inside the grid. Features outside the grid are skipped with a
    warning; tags other than 0, 1 or NULL are an error.
    """
    from osgeo import ogr, osr

    if not Path(tiles_path).exists():
        raise TagError(f"cannot open tile layer {tiles_path}: the file does not exist")
    try:
        source = ogr.Open(str(tiles_path))
    except RuntimeError as exc:
        raise TagError(f"cannot open tile layer {tiles_path}: {exc}") from None
    if source is None:
        raise TagError(f"cannot open tile layer {tiles_path}: not a vector file OGR can read")
    if source.GetLayerCount() == 0:
        raise TagError(f"{tiles_path} holds no vector layer")
    layer = source.GetLayer(0)
    defn = layer.GetLayerDefn()
    if defn.GetFieldIndex(TAG_FIELD) < 0:
        raise TagError(
            f"{tiles_path} has no field '{TAG_FIELD}'; make a grid with `kdmsi tile-grid` "
            "(or add an integer field 'changed') and tag tiles 1 (changed) / 0 (not changed)"
        )
    layer_srs = layer.GetSpatialRef()
    if layer_srs is None:
        raise TagError(f"{tiles_path} has no CRS; assign the rasters' CRS to the tile layer")
    target = osr.SpatialReference()
    target.ImportFromWkt(pair.crs_wkt)
    for srs in (layer_srs, target):
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    transform = osr.CoordinateTransformation(layer_srs, target)
    gt = pair.geotransform
    out: list[tuple[Window, int]] = []
    skipped = 0
    for feature in layer:
        value = feature.GetField(TAG_FIELD)
        if value is None:
            continue
        if str(value).strip() not in ("0", "1"):
            raise TagError(
                f"{tiles_path}: feature {feature.GetFID()} has {TAG_FIELD}={value!r}; use 1, 0 "
                "or leave it empty"
            )
        geom = feature.GetGeometryRef()
        if geom is None:
            continue
        geom = geom.Clone()
        geom.Transform(transform)
        min_x, max_x, min_y, max_y = geom.GetEnvelope()
        cx = ((min_x + max_x) / 2 - gt[0]) / gt[1]
        cy = ((min_y + max_y) / 2 - gt[3]) / gt[5]
        window = _centred_window(cx, cy, tile_size, pair.width, pair.height)
        if window is None:
            skipped += 1
            continue
        out.append((window, int(str(value).strip())))
    if skipped:
        log.warning(
            "%d tagged tiles lie outside the two rasters' overlap and were skipped", skipped
        )
    return out


def _centred_window(cx: float, cy: float, tile: int, width: int, height: int) -> Optional[Window]:
    if not (0 <= cx < width and 0 <= cy < height):
        return None
    w, h = min(tile, width), min(tile, height)
    x = int(min(max(round(cx - w / 2), 0), width - w))
    y = int(min(max(round(cy - h / 2), 0), height - h))
    return Window(x, y, w, h, pad_x=tile - w, pad_y=tile - h)


class RasterTileDataset(Dataset):
    """Tagged windows of an aligned raster pair, shaped like `kdmsi.data.PairDataset` items.

    Items: ``pre``/``post`` float32 [C, T, T] (prepared as for detection), ``mask``
    int64 [T, T] (0 where the tile is tagged unchanged, `IGNORE_INDEX` where unknown, nodata or
    padded; replaced by pseudo labels once `set_masks` is called), ``label``, ``key``.
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
            pre, post, mask = paired_augment(pre, post, mask, self._rng)
        return {
            "pre": torch.from_numpy(np.ascontiguousarray(pre)),
            "post": torch.from_numpy(np.ascontiguousarray(post)),
            "mask": torch.from_numpy(mask.astype(np.int64)),
            "label": torch.tensor(float(self.labels[index])),
            "has_mask": self.masks is not None,
            "key": f"{self.windows[index].x}_{self.windows[index].y}",
        }


@dataclass
class TagTrainingConfig:
    """Everything `train_from_tags` needs beyond the inputs.

    quality_robust: "the two images differ in quality": after the detector is trained, a HiCD
    student (`kdmsi.training.train_hicd`, options in `hicd`) is trained with it as the teacher
    on the same tiles with degraded after images, and the student is saved instead, marked
    quality-robust (`kdmsi.checkpoint.is_quality_robust`).
    """

    tile_size: int = 256
    bands: Optional[list[int]] = None
    threshold: Union[str, float] = "auto"
    scales: tuple[float, ...] = DEFAULT_SCALES
    kd: KDConfig = field(default_factory=KDConfig)
    cd: CDConfig = field(default_factory=CDConfig)
    quality_robust: bool = False
    hicd: HiCDConfig = field(default_factory=HiCDConfig)


def train_from_tags(
    before: PathLike,
    after: PathLike,
    tiles: PathLike,
    out: PathLike,
    config: Optional[TagTrainingConfig] = None,
    overwrite: bool = False,
    progress: Optional[ProgressCallback] = None,
    cancelled: Optional[CancelCheck] = None,
    report_dir: Optional[PathLike] = None,
) -> dict:
    """Train KD teacher/student, make MSI pseudo labels, train the detector, save it to `out`.

    Returns the training summary stored in the checkpoint metadata. Nothing is written at
    `out` unless every stage succeeds. With `report_dir`, the training report (an HTML page
    with loss curves, the pseudo-label threshold and sample tiles, see `kdmsi.report`) is
    written to that folder after the model; `overwrite` also applies to it.
    """
    config = config or TagTrainingConfig()
    check_output_target(out, overwrite)
    if report_dir is not None:
        check_folder_target(report_dir, overwrite)
        require_report_dependencies()
    pair = align_pair(before, after, config.bands)
    try:
        windows = read_tagged_windows(tiles, pair, config.tile_size)
        tags = [t for _, t in windows]
        counts = {1: tags.count(1), 0: tags.count(0)}
        for tag, name in ((1, "changed (1)"), (0, "not changed (0)")):
            if counts[tag] < MIN_TILES_PER_CLASS:
                raise TagError(
                    f"{tiles} has {counts[tag]} tiles tagged {name} over the rasters; at least "
                    f"{MIN_TILES_PER_CLASS} of each class are needed (more give better models: "
                    "tens of each is a good start)"
                )
        report(progress, 0.0, f"{counts[1]} changed and {counts[0]} unchanged tiles tagged")
        stretches = pair_stretches(pair)
        normalisation = Normalisation.default(len(pair.bands))
        dataset = RasterTileDataset(pair, windows, stretches, normalisation, config.tile_size)
        device = pick_device(config.kd.device)
        kd = train_kd(dataset, config.kd, None, sub_progress(progress, 0.0, 0.45), cancelled)
        histograms = ProbabilityHistograms()
        masks, choice = msi_pseudo_labels(
            kd.student.to(device),
            dataset,
            config.threshold,
            config.scales,
            device=device,
            progress=sub_progress(progress, 0.45, 0.55),
            cancelled=cancelled,
            histograms=histograms,
        )
        log.info("pseudo labels: %s", choice.describe())
        dataset.set_masks(masks)
        cd_end = 0.8 if config.quality_robust else 0.97
        cd = train_detector(
            dataset, config.cd, None, sub_progress(progress, 0.55, cd_end), cancelled
        )
        summary = {
            "source": {"before": str(before), "after": str(after), "tiles": str(tiles)},
            "tags": {"changed": counts[1], "not_changed": counts[0]},
            "stretch": {"before": stretches[0].to_dict(), "after": stretches[1].to_dict()},
            "kd": {
                "config": kd.config,
                "history": kd.history,
                "selection": kd.selection,
                "steps": thin_steps(kd.steps),
            },
            "pseudo_labels": {"threshold": choice.to_dict(), "scales": list(config.scales)},
            "detector": {
                "config": cd.config,
                "history": cd.history,
                "selection": cd.selection,
                "steps": thin_steps(cd.steps),
            },
        }
        deployed = cd.model
        if config.quality_robust:
            hicd = train_hicd(
                cd.model, dataset, config.hicd, sub_progress(progress, cd_end, 0.97), cancelled
            )
            summary["hicd"] = {
                "config": hicd.config,
                "history": hicd.history,
                "selection": hicd.selection,
            }
            deployed = hicd.model
        save_detector(
            out,
            deployed,
            pair.bands,
            normalisation,
            config.tile_size,
            summary,
            quality_robust=config.quality_robust,
            method=config.hicd.method if config.quality_robust else None,
        )
        report(progress, 0.98, f"saved {out}")
        if report_dir is not None:
            dataset.augment = False
            tags_report(
                report_dir,
                dataset,
                kd,
                cd,
                masks,
                choice,
                histograms,
                config.scales,
                device,
                overwrite,
                settings={"before": str(before), "after": str(after), "tiles": str(tiles)},
                detector=deployed,
            )
            report(progress, 1.0, f"training report in {report_dir}")
        else:
            report(progress, 1.0, f"saved {out}")
        return summary
    finally:
        pair.close()
