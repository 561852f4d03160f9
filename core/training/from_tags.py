"""Training a change detector from tiles an analyst tagged changed (1) / not changed (0).

raster pair + tile layer (`changed` in {0, 1, NULL}, any CRS) -> windows of the tagged tiles on
the aligned before grid -> KD joint training (teacher CAM, student) -> MSI pseudo labels (the
threshold chosen without pixel truth) -> Siamese DeepLabV3+ -> one checkpoint with metadata.
Untagged (NULL) tiles are ignored.

Data-parallel (``replicas``, `kdmsi.training.distributed`): each process trains the networks
on its shard of the tiles and computes the MSI maps and the features' distance of its shard;
the maps are gathered and the histograms summed, so every process holds the same pseudo labels
of all tiles and trains the detector on them; only the main process calibrates and writes the
model files and the report.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from .. import recipe
from ..data.pairs import Normalisation
from ..data.tagged import RasterTileDataset, TagError, read_tagged_windows
from ..geo.align import align_pair
from ..geo.atomic import check_folder_target, check_output_target
from ..geo.stretch import pair_stretches
from ..inference.msi import DEFAULT_SCALES, pick_device
from ..inference.pseudo_labels import (
    ZERO_SHOT_HINT,
    DegeneratePseudoLabels,
    check_pseudo_labels,
    msi_pseudo_labels,
)
from ..inference.thresholds import ProbabilityHistograms
from ..models.checkpoint import save_detector, save_kd, thin_steps
from ..models.pretrained import describe_weights
from ..options import (
    check_bands,
    check_device,
    check_numbers,
    check_outputs_are_not_inputs,
    check_scales,
    check_threshold,
    same_file,
)
from ..progress import CancelCheck, ProgressCallback, report, sub_progress
from ..reports.page import require_report_dependencies
from ..reports.runs import tags_report
from ..runtime.speed import training_stage_shares
from ..types import PathLike
from . import CDConfig, HiCDConfig, KDConfig, train_detector, train_hicd, train_kd
from .calibration import calibrated_threshold
from .distributed import ONE_PROCESS, Replicas
from .kd import MIN_TILES_PER_CLASS
from .warm_start import WarmStart, planned_configs, read_warm_start

log = logging.getLogger(__name__)


@dataclass
class TagTrainingConfig:
    """Everything `train_from_tags` needs beyond the inputs.

    quality_robust: "the two images differ in quality": after the detector is trained, a
    quality-robust student (`kdmsi.training.train_hicd`, options in `hicd`; feature-MSE
    distillation by default) is trained with it as the teacher
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
    feature_vote: float = recipe.FEATURE_VOTE
    """Weight of the pretrained features' vote in the pseudo labels (0: MSI alone;
    `kdmsi.inference.feature_vote`)."""
    warm_start: tuple[str, ...] = ()
    """Model files of an earlier run to start from (a detector, a KD model, or both;
    `kdmsi.training.warm_start`) instead of ImageNet: for re-runs as tags are added."""


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
    replicas: Replicas = ONE_PROCESS,
) -> dict:
    """Train KD teacher/student, make MSI pseudo labels, train the detector, save it to `out`.

    Returns the training summary stored in the checkpoint metadata. Nothing is written at
    `out` unless every stage succeeds. With `report_dir`, the training report (an HTML page
    with loss curves, the pseudo-label threshold and sample tiles, see `kdmsi.reports.page`) is
    written to that folder after the model; `overwrite` also applies to it. With `kd_out`,
    the teacher and student are saved there too (a KD model file, for `kdmsi evaluate` or
    `kdmsi detect`), as soon as they are trained. ``replicas``: see the module docstring; the
    other processes return the summary without the threshold, having written nothing.

    Raises:
        DegeneratePseudoLabels: the pseudo labels came out (nearly) empty or all change; no
            detector is trained (the report, when asked for, says so).
    """
    config = config or TagTrainingConfig()
    check_outputs_are_not_inputs(
        {"--out": out, "--kd-model": kd_out, "--report": report_dir},
        {
            "--before": before,
            "--after": after,
            "--tiles": tiles,
            **{f"--warm-start #{i}": path for i, path in enumerate(config.warm_start, 1)},
        },
    )
    settings = config
    check_numbers(
        {
            "tile_size": settings.tile_size,
            "batch_size": settings.kd.batch_size,
            "kd_epochs": settings.kd.epochs,
            "cd_epochs": settings.cd.epochs,
            "kd_lr": settings.kd.lr,
            "cd_lr": settings.cd.lr,
            "feature_vote": settings.feature_vote,
        }
    )
    check_threshold(settings.threshold)
    check_scales(settings.scales)
    check_device(settings.kd.device)
    if settings.bands is not None:
        check_bands(settings.bands)
    check_output_target(out, overwrite)
    if kd_out is not None:
        check_output_target(kd_out, overwrite)
        if same_file(kd_out, out):
            raise ValueError(f"{out} is given as both the detector and the KD model file")
    if report_dir is not None:
        check_folder_target(report_dir, overwrite)
        require_report_dependencies()
    pair = align_pair(before, after, config.bands)
    try:
        warm = None
        if config.warm_start:  # checked before the tags, so a wrong file is named first
            planned = planned_configs(config.kd, config.cd, len(pair.bands))
            warm = read_warm_start(config.warm_start, *planned, len(pair.bands))
        windows, tile_size = read_tagged_windows(tiles, pair, config.tile_size)
        tags = [t for _, t in windows]
        counts = {1: tags.count(1), 0: tags.count(0)}
        for tag, name in ((1, "changed (1)"), (0, "not changed (0)")):
            if counts[tag] < MIN_TILES_PER_CLASS:
                raise TagError(
                    f"{tiles} has {counts[tag]} tiles tagged {name} over the rasters; at least "
                    f"{MIN_TILES_PER_CLASS} of each class are needed (more give better models: "
                    "tens of each is a good start); until then the zero-shot map needs no tags "
                    f"({ZERO_SHOT_HINT})"
                )
        report(progress, 0.0, f"{counts[1]} changed and {counts[0]} unchanged tiles tagged")
        stretches = pair_stretches(pair)
        normalisation = Normalisation.default(len(pair.bands))
        dataset = RasterTileDataset(pair, windows, stretches, normalisation, tile_size)
        device = pick_device(config.kd.device)
        timing: dict[str, float] = {}
        clock = time.perf_counter()
        # the quality-robust student, when asked, takes the rest
        cd_end = 0.8 if config.quality_robust else 0.97
        kd_end, msi_end = training_stage_shares(
            config.kd.backbone, config.cd.backbone, config.kd.epochs, config.cd.epochs, cd_end
        )
        kd = train_kd(
            dataset, config.kd, None, sub_progress(progress, 0.0, kd_end), cancelled,
            init=warm.kd if warm else None, replicas=replicas,
        )  # fmt: skip
        timing["kd"], clock = round(time.perf_counter() - clock, 1), time.perf_counter()
        if kd_out is not None and replicas.is_main:
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
            vote_weight=config.feature_vote,
            replicas=replicas,
        )
        timing["pseudo_labels"], clock = round(time.perf_counter() - clock, 1), time.perf_counter()
        log.info("pseudo labels: %s", choice.describe())
        sources = {"before": str(before), "after": str(after), "tiles": str(tiles)}

        def write_report(cd, notes: Optional[dict] = None, **extra) -> None:
            dataset.augment = False
            tags_report(
                report_dir, dataset, kd, cd, masks, choice, histograms, config.scales, device,
                overwrite, settings={**sources, **(notes or {})}, **extra,
            )  # fmt: skip

        try:
            fraction = check_pseudo_labels(masks, dataset.labels, choice, kd.teacher_note())
        except DegeneratePseudoLabels as exc:
            if report_dir is not None and replicas.is_main:
                write_report(None, warnings=[f"Training stopped before the detector: {exc}"])
            replicas.barrier()  # every rank got here; none ends the run before the report
            if report_dir is not None:
                raise DegeneratePseudoLabels(
                    f"{exc} (the training report {Path(report_dir) / 'index.html'} shows the maps)"
                ) from None
            raise
        log.info("pseudo labels mark %.1f %% of the changed tiles' pixels", 100 * fraction)
        dataset.set_masks(masks)
        cd = train_detector(
            dataset, config.cd, None, sub_progress(progress, msi_end, cd_end), cancelled,
            init=warm.detector if warm else None, replicas=replicas,
        )  # fmt: skip
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
                "kd": _weights_note(config.kd.backbone, config.kd.weights, warm, "kd"),
                "detector": _weights_note(config.cd.backbone, config.cd.weights, warm, "detector"),
            },
            "pseudo_labels": {
                "threshold": choice.to_dict(),
                "scales": list(config.scales),
                "feature_vote": config.feature_vote,
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
                cd.model, dataset, config.hicd, sub_progress(progress, cd_end, 0.97), cancelled,
                replicas=replicas,
            )  # fmt: skip
            summary["hicd"] = {
                "config": hicd.config,
                "history": hicd.history,
                "selection": hicd.selection,
            }
            deployed = hicd.model
        if not replicas.is_main:  # the main process calibrates, writes and reports
            return summary
        threshold, check = calibrated_threshold(
            deployed.to(device), dataset, device, cancelled=cancelled
        )
        deployed.cpu()
        summary["detector"].update(threshold=threshold, tag_check=check)
        summary["warnings"] = check["warnings"]
        save_detector(
            out,
            deployed,
            pair.bands,
            normalisation,
            tile_size,
            summary,
            threshold=threshold["value"],
            quality_robust=config.quality_robust,
            method=config.hicd.method if config.quality_robust else None,
        )
        report(progress, 0.98, f"saved {out}")
        if report_dir is not None:
            notes = {"tags after training": check["summary"]}
            write_report(cd, notes, detector=deployed, warnings=summary["warnings"])
            report(progress, 1.0, f"training report in {report_dir}")
        else:
            report(progress, 1.0, f"saved {out}")
        return summary
    finally:
        pair.close()


def _weights_note(
    backbone: str, weights: Optional[str], warm: Optional[WarmStart], part: str
) -> str:
    """What the summary, the CLI and the plugin say a part started from."""
    if warm is not None and getattr(warm, part) is not None:
        return f"warm start from {', '.join(warm.sources)}"
    return describe_weights(backbone, weights)
