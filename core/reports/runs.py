"""The training report of each way to train: `kdmsi train-kd`, `kdmsi train-cd`, and training
from tagged tiles (`kdmsi train`, the QGIS plugin).

Each function gathers what its run knows (histories, threshold, models, pseudo labels, truth
when the data has it) into a `TrainingReport` and writes it with `write_training_report`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ..data.pairs import IGNORE_INDEX, PairDataset
from ..inference.msi import DEFAULT_SCALES
from ..inference.thresholds import ProbabilityHistograms, ThresholdChoice
from ..metrics.change import ConfusionCounts
from ..types import PathLike
from .page import write_training_report
from .tiles import build_report, dataset_truth

log = logging.getLogger(__name__)

REPORT_SUFFIX = "_report"


def default_report_dir(model_path: PathLike) -> Path:
    """`<folder>/<model stem>_report` beside a model file."""
    path = Path(model_path)
    return path.with_name(path.stem + REPORT_SUFFIX)


def _record(result) -> dict:
    return {"history": result.history, "steps": result.steps, "selection": result.selection}


def kd_report(
    folder: PathLike,
    dataset,
    result,
    device: Union[str, torch.device] = "cpu",
    overwrite: bool = False,
) -> Path:
    """Report of a teacher + student run (`KDResult`) on `dataset`; truth shown when present."""
    report = build_report(
        dataset,
        "KD-MSI training report: teacher + student",
        kd=_record(result),
        teacher=result.teacher,
        student=result.student,
        truth=dataset_truth(dataset),
        device=device,
        settings=dict(result.config),
        notes=[
            "The pseudo-label threshold, the pseudo labels and the final detector are added by "
            "the report of `kdmsi train-cd` (after `kdmsi pseudo-labels`) or `kdmsi train`."
        ],
    )
    return write_training_report(folder, report, overwrite)


def cd_report(
    folder: PathLike,
    dataset: PairDataset,
    result,
    pseudo_summary: Optional[dict] = None,
    device: Union[str, torch.device] = "cpu",
    overwrite: bool = False,
) -> Path:
    """Report of a detector run (`CDResult`) on `dataset`, whose masks are the pseudo labels.

    `pseudo_summary` is the `pseudo_labels.json` of those labels: its threshold and MSI
    histograms are shown, and the KD model it names (``kd_model``), when still there, adds the
    teacher's and student's history and maps. Truth comes from `<data>/label` when it exists.
    """
    from ..inference.pseudo_labels import histograms_from_summary
    from ..models.checkpoint import CheckpointError, load_checkpoint

    pseudo_summary = pseudo_summary or {}
    truth_ds = _truth_dataset(dataset)
    teacher = student = None
    kd_record: dict = {}
    kd_path = pseudo_summary.get("kd_model")
    notes = []
    if kd_path and Path(kd_path).is_file():
        try:
            teacher, meta = load_checkpoint(kd_path, role="teacher")
            student, _ = load_checkpoint(kd_path, role="student")
            kd_record = meta.get("training", {})
        except CheckpointError as exc:
            notes.append(f"KD model {kd_path} could not be read ({exc}); its maps are left out.")
    else:
        notes.append(
            "No KD model recorded with the pseudo labels (or it was moved): teacher and student "
            "maps and losses are left out."
        )
    metrics = {}
    if truth_ds is not None:
        metrics["Pseudo labels against the truth of the training data"] = {
            "pseudo labels": label_metrics(dataset, truth_ds).metrics()
        }
    report = build_report(
        dataset,
        "KD-MSI training report: detector on pseudo labels",
        kd=kd_record,
        cd=_record(result),
        teacher=teacher,
        student=student,
        detector=result.model,
        pseudo=lambda i: dataset.read_tile(i)[2],
        truth=dataset_truth(truth_ds) if truth_ds is not None else None,
        threshold=(pseudo_summary.get("threshold") or None),
        histograms=histograms_from_summary(pseudo_summary),
        scales=pseudo_summary.get("scales") or DEFAULT_SCALES,
        device=device,
        metrics=metrics,
        settings=dict(result.config),
        notes=notes,
    )
    return write_training_report(folder, report, overwrite)


def tags_report(
    folder: PathLike,
    dataset,
    kd,
    cd,
    masks: Sequence[np.ndarray],
    choice: ThresholdChoice,
    histograms: Optional[ProbabilityHistograms],
    scales: Sequence[float] = DEFAULT_SCALES,
    device: Union[str, torch.device] = "cpu",
    overwrite: bool = False,
    settings: Optional[dict] = None,
    detector: Optional[torch.nn.Module] = None,
    warnings: Sequence[str] = (),
) -> Path:
    """Report of a whole run from tagged tiles: `KDResult`, `CDResult`, the pseudo-label masks
    (dataset order), their threshold and the MSI histograms it was chosen from. `detector`
    is the deployed model when it is not `cd.model` (e.g. a quality-robust student). ``cd``
    None: the run stopped before the detector (``warnings`` say why)."""
    if detector is None and cd is not None:
        detector = cd.model
    report = build_report(
        dataset,
        "KD-MSI training report: detector from tagged tiles",
        kd=_record(kd),
        cd=_record(cd) if cd is not None else None,
        teacher=kd.teacher,
        student=kd.student,
        detector=detector,
        pseudo=lambda i: masks[i],
        threshold=choice.to_dict(),
        histograms=histograms,
        scales=scales,
        device=device,
        settings=settings or {},
        warnings=list(warnings),
    )
    return write_training_report(folder, report, overwrite)


def _truth_dataset(dataset: PairDataset) -> Optional[PairDataset]:
    """The same tiles read with the data's own `label/` (truth), when it is not the label
    folder the dataset already uses."""
    truth_dir = dataset.root / "label"
    if not truth_dir.is_dir() or (
        dataset.label_dir is not None and dataset.label_dir.resolve() == truth_dir.resolve()
    ):
        return None
    return PairDataset(
        dataset.root,
        tile_size=dataset.tile_size,
        names=list(dataset.pairs),
        bands=dataset.bands,
        normalisation=dataset.normalisation,
        require_labels=False,
    )


def label_metrics(pred: PairDataset, truth: PairDataset) -> ConfusionCounts:
    """Confusion counts of `pred`'s masks against `truth`'s, tile by tile (same tiling);
    pixels not scored in either (255) or without truth are left out."""
    counts = ConfusionCounts()
    for i in range(len(truth)):
        if truth.masks[truth.tiles[i].name] is None:
            continue
        p, t = pred.read_tile(i)[2], truth.read_tile(i)[2]
        counts.update(p == 1, t == 1, (p != IGNORE_INDEX) & (t != IGNORE_INDEX))
    return counts
