"""Joint training of the KD-MSI teacher and student on image-level labels.

Per batch: G_t = teacher(pre, post), G_s = student(pre, post);
L = BCE(GAP(G_t), y) + kd_weight * MSE(sigmoid(G_s), CAM(G_t).detach() * y).
The two networks have separate weights and one SGD optimiser.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from ..evaluation import collect_map_statistics, map_function
from ..inference import pick_device
from ..losses import DEFAULT_KD_WEIGHT, classification_loss, kd_loss
from ..models import SiameseCAMNet
from ..progress import CancelCheck, ProgressCallback, check_cancel, no_progress
from .common import (
    cpu_state,
    eval_loader,
    poly_lr,
    seed_everything,
    sgd,
    stratified_holdout,
    subset,
    train_loader,
)

MIN_TILES_PER_CLASS = 2


log = logging.getLogger(__name__)


@dataclass
class KDConfig:
    """Hyper-parameters of the joint teacher/student training (the paper's defaults)."""

    backbone: str = "resnet50"
    fusion: str = "abs"
    weights: Optional[str] = None
    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-3
    head_lr_mult: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    kd_weight: float = DEFAULT_KD_WEIGHT
    holdout_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"


@dataclass
class KDResult:
    """The selected teacher and student (eval mode, CPU), per-epoch history, selection record.

    `steps` holds one record per optimiser step: ``step``, ``epoch`` (fractional, at the end of
    the step), ``total``, ``cls`` (teacher) and ``kd`` (student) losses, for the loss curves.
    """

    teacher: SiameseCAMNet
    student: SiameseCAMNet
    history: list[dict] = field(default_factory=list)
    selection: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    steps: list[dict] = field(default_factory=list)


def train_kd(
    dataset: Dataset,
    config: KDConfig,
    val_dataset: Optional[Dataset] = None,
    progress: Optional[ProgressCallback] = None,
    cancelled: Optional[CancelCheck] = None,
) -> KDResult:
    """Train teacher and student jointly on a `PairDataset` with image-level labels.

    Model selection: by the student's best single-scale change IoU on
    `val_dataset` when it has pixel masks; otherwise by the teacher's classification loss on a
    stratified held-out part (`holdout_fraction`) of the image-labelled tiles.
    """
    progress = progress or no_progress
    labels = list(dataset.labels)
    if any(label is None for label in labels):
        raise ValueError("KD training needs an image label for every tile")
    counts = {"changed (1)": labels.count(1), "unchanged (0)": labels.count(0)}
    for name, n in counts.items():
        if n < MIN_TILES_PER_CLASS:
            raise ValueError(
                f"KD training needs at least {MIN_TILES_PER_CLASS} tiles labelled {name}, "
                f"got {n}; label more tiles of that class"
            )
    generator = seed_everything(config.seed)
    device = pick_device(config.device)

    use_val_iou = val_dataset is not None and getattr(val_dataset, "has_masks", False)
    if use_val_iou:
        train_idx, held_idx = list(range(len(dataset))), []
    else:
        train_idx, held_idx = stratified_holdout(labels, config.holdout_fraction, config.seed)
        if not held_idx:
            train_idx = list(range(len(dataset)))
    train_set = subset(dataset, train_idx, augment=True)
    held_set = subset(dataset, held_idx, augment=False) if held_idx else None

    bands = len(dataset.bands)
    teacher = SiameseCAMNet(config.backbone, config.fusion, bands, config.weights).to(device)
    student = SiameseCAMNet(config.backbone, config.fusion, bands, config.weights).to(device)
    groups = teacher.param_groups(config.lr, config.head_lr_mult) + student.param_groups(
        config.lr, config.head_lr_mult
    )
    optimizer = sgd(groups, config.momentum, config.weight_decay)
    loader = train_loader(train_set, config.batch_size, generator)
    total_steps = max(1, config.epochs * len(loader))

    if use_val_iou:
        criterion = "val_change_iou"
    elif held_set is not None:
        criterion = "heldout_teacher_cls_loss"
    else:
        criterion = "last_epoch"
    best_score, best = -np.inf, None
    history: list[dict] = []
    steps: list[dict] = []
    step = 0
    for epoch in range(1, config.epochs + 1):
        teacher.train()
        student.train()
        sums = {"total": 0.0, "cls": 0.0, "kd": 0.0}
        n_batches = 0
        for batch in loader:
            check_cancel(cancelled)
            poly_lr(optimizer, step, total_steps, config.poly_power)
            pre, post = batch["pre"].to(device), batch["post"].to(device)
            y = batch["label"].to(device)
            losses = kd_loss(teacher(pre, post), student(pre, post), y, config.kd_weight)
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            optimizer.step()
            values = {k: losses[k].item() for k in sums}
            for k in sums:
                sums[k] += values[k]
            n_batches += 1
            step += 1
            steps.append({"step": step, "epoch": epoch - 1 + n_batches / len(loader), **values})
            progress(
                step / total_steps,
                f"KD epoch {epoch}/{config.epochs}: loss {losses['total'].item():.4f}",
            )
        record = {"epoch": epoch, **{f"train_{k}": v / max(n_batches, 1) for k, v in sums.items()}}
        if criterion == "val_change_iou":
            record["val_change_iou"] = student_change_iou(student, val_dataset, device, cancelled)
            score = record["val_change_iou"]
        elif criterion == "heldout_teacher_cls_loss":
            record["heldout_teacher_cls_loss"] = teacher_cls_loss(teacher, held_set, device)
            score = -record["heldout_teacher_cls_loss"]
        else:
            score = epoch
        history.append(record)
        if score > best_score:
            best_score = score
            best = (epoch, cpu_state(teacher), cpu_state(student))
        message = _epoch_message(record, config.epochs)
        log.info(message)
        progress(step / total_steps, message)

    epoch, t_state, s_state = best
    teacher.load_state_dict(t_state)
    student.load_state_dict(s_state)
    selection = {
        "criterion": criterion,
        "epoch": epoch,
        "value": history[epoch - 1].get(criterion, None),
        "heldout_tiles": len(held_idx),
    }
    return KDResult(
        teacher.cpu().eval(), student.cpu().eval(), history, selection, asdict(config), steps
    )


def _epoch_message(record: dict, epochs: int) -> str:
    parts = [f"KD epoch {record['epoch']}/{epochs}"]
    parts += [f"{k} {v:.4f}" for k, v in record.items() if k != "epoch"]
    return ", ".join(parts)


@torch.no_grad()
def teacher_cls_loss(teacher: SiameseCAMNet, dataset: Dataset, device: torch.device) -> float:
    """Mean classification loss of the teacher over an image-labelled dataset."""
    teacher.eval()
    total, count = 0.0, 0
    for batch in eval_loader(dataset, 16):
        g = teacher(batch["pre"].to(device), batch["post"].to(device))
        n = batch["label"].shape[0]
        total += float(classification_loss(g, batch["label"].to(device))) * n
        count += n
    return total / max(count, 1)


@torch.no_grad()
def student_change_iou(
    student: SiameseCAMNet,
    dataset: Dataset,
    device: torch.device,
    cancelled: Optional[CancelCheck] = None,
) -> float:
    """Best change IoU of the single-scale student over thresholds 0.05..0.95 (step 0.05)
    against the validation masks. The best threshold is used because the student's scale is
    only known relative to the teacher's CAM; the pseudo-label threshold is chosen later."""
    student.eval()
    stats = collect_map_statistics(
        dataset, {"student": map_function("student", student)}, device, 16, cancelled=cancelled
    )["student"]
    return max(stats.counts_at(t / 20).metrics()["cIoU"] for t in range(1, 20))
