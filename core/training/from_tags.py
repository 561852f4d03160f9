"""Training a change detector from tiles an analyst tagged changed (1) / not changed (0).

raster pair + tile layer (`changed` in {0, 1, NULL}, any CRS) -> windows of the tagged tiles on
the aligned before grid -> KD joint training (teacher CAM, student) -> MSI pseudo labels (the
threshold chosen without pixel truth) -> Siamese DeepLabV3+ -> one checkpoint with metadata.
Untagged (NULL) tiles are ignored.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.pairs import IGNORE_INDEX, Normalisation, paired_augment
from ..detect.tile_reader import TilePreparer
from ..geo.align import AlignedPair, align_pair
from ..geo.atomic import check_folder_target, check_output_target
from ..geo.stretch import BandStretch, pair_stretches
from ..geo.tiling import Window
from ..inference.msi import DEFAULT_SCALES, pick_device
from ..inference.pseudo_labels import DegeneratePseudoLabels, check_pseudo_labels, msi_pseudo_labels
from ..inference.thresholds import ProbabilityHistograms
from ..models.checkpoint import save_detector, save_kd, thin_steps
from ..models.pretrained import describe_weights
from ..progress import CancelCheck, ProgressCallback, report, sub_progress
from ..reports.page import require_report_dependencies
from ..reports.runs import tags_report
from ..runtime.speed import training_stage_shares
from . import CDConfig, HiCDConfig, KDConfig, train_detector, train_hicd, train_kd
from .kd import MIN_TILES_PER_CLASS

log = logging.getLogger(__name__)

TAG_FIELD = "changed"
PathLike = Union[str, Path]


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
    out = []
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
        xs = sorted(((min_x - gt[0]) / gt[1], (max_x - gt[0]) / gt[1]))
        ys = sorted(((min_y - gt[3]) / gt[5], (max_y - gt[3]) / gt[5]))
        out.append(((xs[0], ys[0], xs[1], ys[1]), int(str(value).strip())))
    return out


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


@dataclass
class TagTrainingConfig:
    """Everything `train_from_tags` needs beyond the inputs.

    quality_robust: "the two images differ in quality": after the detector is trained, a HiCD
    student (`kdmsi.training.train_hicd`, options in `hicd`) is trained with it as the teacher
    on the same tiles with degraded after images, and the student is saved instead, marked
    quality-robust (`kdmsi.models.checkpoint.is_quality_robust`). tile_size: the training windows'
    side in pixels; None (default) takes the tagged tiles' own size (`read_tagged_windows`).
    """

    tile_size: Optional[int] = None
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
    kd_out: Optional[PathLike] = None,
) -> dict:
    """Train KD teacher/student, make MSI pseudo labels, train the detector, save it to `out`.

    Returns the training summary stored in the checkpoint metadata. Nothing is written at
    `out` unless every stage succeeds. With `report_dir`, the training report (an HTML page
    with loss curves, the pseudo-label threshold and sample tiles, see `kdmsi.reports.page`) is
    written to that folder after the model; `overwrite` also applies to it. With `kd_out`,
    the teacher and student are saved there too (a KD model file, for `kdmsi evaluate` or
    `kdmsi detect`), as soon as they are trained.

    Raises:
        DegeneratePseudoLabels: the pseudo labels came out (nearly) empty or all change; no
            detector is trained (the report, when asked for, says so).
    """
    config = config or TagTrainingConfig()
    check_output_target(out, overwrite)
    if kd_out is not None:
        check_output_target(kd_out, overwrite)
        if Path(kd_out).resolve() == Path(out).resolve():
            raise ValueError(f"{out} is given as both the detector and the KD model file")
    if report_dir is not None:
        check_folder_target(report_dir, overwrite)
        require_report_dependencies()
    pair = align_pair(before, after, config.bands)
    try:
        windows, tile_size = read_tagged_windows(tiles, pair, config.tile_size)
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
        dataset = RasterTileDataset(pair, windows, stretches, normalisation, tile_size)
        device = pick_device(config.kd.device)
        timing: dict[str, float] = {}
        clock = time.perf_counter()
        cd_end = 0.8 if config.quality_robust else 0.97  # HiCD, when asked, takes the rest
        kd_end, msi_end = training_stage_shares(
            config.kd.backbone, config.cd.backbone, config.kd.epochs, config.cd.epochs, cd_end
        )
        kd = train_kd(dataset, config.kd, None, sub_progress(progress, 0.0, kd_end), cancelled)
        timing["kd"], clock = round(time.perf_counter() - clock, 1), time.perf_counter()
        if kd_out is not None:
            save_kd(kd_out, kd, pair.bands, normalisation, tile_size, {"tiles": str(tiles)})
        histograms = ProbabilityHistograms()
        masks, choice = msi_pseudo_labels(
            kd.student.to(device),
            dataset,
            config.threshold,
            config.scales,
            device=device,
            progress=sub_progress(progress, kd_end, msi_end),
            cancelled=cancelled,
            histograms=histograms,
        )
        timing["pseudo_labels"], clock = round(time.perf_counter() - clock, 1), time.perf_counter()
        log.info("pseudo labels: %s", choice.describe())
        sources = {"before": str(before), "after": str(after), "tiles": str(tiles)}

        def write_report(cd, **extra) -> None:
            dataset.augment = False
            tags_report(
                report_dir, dataset, kd, cd, masks, choice, histograms, config.scales, device,
                overwrite, settings=sources, **extra,
            )  # fmt: skip

        try:
            fraction = check_pseudo_labels(masks, dataset.labels, choice, kd.teacher_note())
        except DegeneratePseudoLabels as exc:
            if report_dir is not None:
                write_report(None, warnings=[f"Training stopped before the detector: {exc}"])
                raise DegeneratePseudoLabels(
                    f"{exc} (the training report {Path(report_dir) / 'index.html'} shows the maps)"
                ) from None
            raise
        log.info("pseudo labels mark %.1f %% of the changed tiles' pixels", 100 * fraction)
        dataset.set_masks(masks)
        cd = train_detector(
            dataset, config.cd, None, sub_progress(progress, msi_end, cd_end), cancelled
        )
        timing["detector"] = round(time.perf_counter() - clock, 1)
        summary = {
            "timing_s": timing,
            "source": sources,
            "tags": {"changed": counts[1], "not_changed": counts[0]},
            "stretch": {"before": stretches[0].to_dict(), "after": stretches[1].to_dict()},
            "kd": {
                "config": kd.config,
                "history": kd.history,
                "selection": kd.selection,
                "steps": thin_steps(kd.steps),
            },
            "weights": {
                "kd": describe_weights(config.kd.backbone, config.kd.weights),
                "detector": describe_weights(config.cd.backbone, config.cd.weights),
            },
            "pseudo_labels": {
                "threshold": choice.to_dict(),
                "scales": list(config.scales),
                "changed_fraction": fraction,
            },
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
            tile_size,
            summary,
            quality_robust=config.quality_robust,
            method=config.hicd.method if config.quality_robust else None,
        )
        report(progress, 0.98, f"saved {out}")
        if report_dir is not None:
            write_report(cd, detector=deployed)
            report(progress, 1.0, f"training report in {report_dir}")
        else:
            report(progress, 1.0, f"saved {out}")
        return summary
    finally:
        pair.close()
