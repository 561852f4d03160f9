"""The step-by-step chain on tile-folder datasets (``A/``, ``B/``, ``label/`` or
``labels.csv``): train the KD teacher and student, write MSI pseudo labels, train the detector
on them. `kdmsi train-kd`, `kdmsi pseudo-labels`, `kdmsi train-cd` and `kdmsi.demo` call these;
each checks its output before any compute and writes it whole or not at all. In a
data-parallel run (``replicas``, `kdmsi.training.distributed`) every process trains and only
the main one writes the model file and the report.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional, Sequence, Union

from ..data.pairs import PairDataset
from ..geo.atomic import check_folder_target, check_output_target
from ..inference.msi import DEFAULT_SCALES, pick_device
from ..progress import ProgressCallback
from ..types import PathLike
from .cd import CDConfig, CDResult, train_detector
from .distributed import ONE_PROCESS, Replicas
from .kd import KDConfig, KDResult, train_kd

log = logging.getLogger(__name__)


def check_outputs(model: Path, report_dir: Optional[Path], overwrite: bool) -> None:
    """The model file and the report folder, before anything is read or trained."""
    check_output_target(model, overwrite)
    if report_dir is not None:
        from ..reports.page import require_report_dependencies

        check_folder_target(report_dir, overwrite)
        require_report_dependencies()


def train_kd_on_folder(
    data: PathLike,
    out: PathLike,
    config: KDConfig,
    *,
    tile_size: int = 256,
    bands: Optional[Sequence[int]] = None,
    val: Optional[PathLike] = None,
    report_dir: Optional[Path] = None,
    overwrite: bool = False,
    progress: Optional[ProgressCallback] = None,
    replicas: Replicas = ONE_PROCESS,
) -> KDResult:
    """Train the teacher and student on the image labels of ``data``, save them to ``out``
    (a KD model file) and, with ``report_dir``, write the training report there.

    ``val``: a dataset with pixel masks, for selection by IoU (else a held-out share).
    """
    from ..models.checkpoint import save_kd
    from ..reports.runs import kd_report

    out = Path(out)
    check_outputs(out, report_dir, overwrite)
    train = PairDataset(data, tile_size=tile_size, bands=bands)
    val_set = PairDataset(val, tile_size=tile_size, bands=train.bands) if val else None
    log.info(
        "KD training on %d tiles (%d changed, %d unchanged)",
        len(train), train.labels.count(1), train.labels.count(0),
    )  # fmt: skip
    result = train_kd(train, config, val_set, progress=progress, replicas=replicas)
    if not replicas.is_main:
        return result
    record = {"tiles": len(train), "dataset": str(Path(data).resolve())}
    save_kd(out, result, train.bands, train.normalisation, tile_size, record)
    selection = result.selection
    log.info(
        "saved %s (selected epoch %s by %s = %s)",
        out, selection["epoch"], selection["criterion"], selection["value"],
    )  # fmt: skip
    if report_dir is not None:
        kd_report(report_dir, train, result, pick_device(config.device), overwrite)
        log.info("training report: %s", report_dir / "index.html")
    return result


def pseudo_labels_from_model(
    model: PathLike,
    data: PathLike,
    out: PathLike,
    *,
    threshold: Union[str, float] = "auto",
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = True,
    feature_vote: float = 0.0,
    device: str = "auto",
    batch_size: int = 4,
    overwrite: bool = False,
    progress: Optional[ProgressCallback] = None,
) -> dict:
    """MSI pseudo labels of every tile of ``data`` from the student of the KD model file
    ``model``, written to ``out/label/`` with ``out/pseudo_labels.json``; returns that summary
    (`kdmsi.inference.pseudo_labels.generate_pseudo_labels`)."""
    from ..inference.pseudo_labels import generate_pseudo_labels
    from ..models.checkpoint import load_checkpoint

    torch_device = pick_device(device)
    student, meta = load_checkpoint(model, role="student", device=torch_device)
    if meta["kind"] != "kd":
        raise ValueError(f"{model} is a {meta['kind']} model; pseudo labels need a KD model")
    dataset = PairDataset.for_model(data, meta)
    summary = generate_pseudo_labels(
        student, dataset, out, threshold=threshold, scales=scales, flip=flip,
        device=torch_device, batch_size=batch_size, overwrite=overwrite, progress=progress,
        record={"kd_model": str(Path(model).resolve())}, feature_vote=feature_vote,
    )  # fmt: skip
    log.info(
        "pseudo labels in %s: %s; %.1f%% of pixels changed",
        out, summary["threshold_description"], 100 * summary["changed_pixel_fraction"],
    )  # fmt: skip
    return summary


def train_detector_on_folder(
    data: PathLike,
    labels: PathLike,
    out: PathLike,
    config: CDConfig,
    *,
    tile_size: int = 256,
    bands: Optional[Sequence[int]] = None,
    val: Optional[PathLike] = None,
    report_dir: Optional[Path] = None,
    overwrite: bool = False,
    progress: Optional[ProgressCallback] = None,
    replicas: Replicas = ONE_PROCESS,
) -> CDResult:
    """Train the detector on ``data`` with the label images of ``labels`` (pseudo labels,
    `pseudo_labels_from_model`), calibrate its threshold and save it to ``out``; with
    ``report_dir``, write the training report there."""
    from ..models.checkpoint import save_detector, thin_steps
    from ..reports.runs import cd_report
    from .calibration import calibrated_threshold

    out, labels = Path(out), Path(labels)
    check_outputs(out, report_dir, overwrite)
    train = PairDataset(data, tile_size=tile_size, label_dir=labels, bands=bands)
    if not train.has_masks:
        missing = [n for n, m in train.masks.items() if m is None][:5]
        raise ValueError(f"{labels} lacks label images for {missing}; run `kdmsi pseudo-labels`")
    val_set = PairDataset(val, tile_size=tile_size, bands=train.bands) if val else None
    pseudo_info = labels.parent / "pseudo_labels.json"
    pseudo = json.loads(pseudo_info.read_text()) if pseudo_info.is_file() else None
    result = train_detector(train, config, val_set, progress=progress, replicas=replicas)
    if not replicas.is_main:  # the main process calibrates and writes
        return result
    training = {
        "config": result.config,
        "history": result.history,
        "selection": result.selection,
        "steps": thin_steps(result.steps),
        "tiles": len(train),
        "labels": str(labels.resolve()),
        "pseudo_labels": pseudo,
    }
    device = pick_device(config.device)
    threshold, training["tag_check"] = calibrated_threshold(result.model.to(device), train, device)
    training["threshold"] = threshold
    result.model.cpu()
    save_detector(
        out, result.model, train.bands, train.normalisation, tile_size, training,
        threshold=threshold["value"],
    )  # fmt: skip
    log.info(
        "saved %s (selected epoch %s by %s; threshold %.3f, %s)", out, result.selection["epoch"],
        result.selection["criterion"], threshold["value"], threshold["method"],
    )  # fmt: skip
    if report_dir is not None:
        cd_report(report_dir, train, result, pseudo, device, overwrite)
        log.info("training report: %s", report_dir / "index.html")
    return result


__all__ = ["pseudo_labels_from_model", "train_detector_on_folder", "train_kd_on_folder"]
