"""Training the Siamese DeepLabV3+ change detector on (pseudo) label masks."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .. import recipe
from ..choices import DEFAULT_BACKBONE
from ..data.pairs import IGNORE_INDEX, subset
from ..inference.msi import pick_device
from ..metrics.change import ConfusionCounts
from ..models import SiameseDeepLabV3Plus
from ..progress import CancelCheck, ProgressCallback, check_cancel, no_progress
from .common import (
    cpu_state,
    eval_loader,
    freeze_stages,
    make_optimizer,
    poly_lr,
    seed_everything,
    set_train_mode,
    to_device,
    train_loader,
)

log = logging.getLogger(__name__)


@dataclass
class CDConfig:
    """Hyper-parameters of the detector training.

    Defaults: the CPU recipe (`kdmsi.recipe`; README, "Training recipe"): pretrained
    EfficientNet-Lite0 frozen up to stride 8, ASPP and decoder 128 channels wide, AdamW at
    1e-4 (head x10), frozen batch-norm statistics in the trunk. The paper's setting is
    ``backbone="resnet50"``, ``head_channels=256``, ``optimizer="sgd"``, ``lr=0.007``,
    ``head_lr_mult=1``, ``freeze_bn=False``, ``frozen_stages=0``, 50 epochs of batch 16.
    """

    backbone: str = DEFAULT_BACKBONE
    weights: Optional[str] = recipe.WEIGHTS
    epochs: int = recipe.CD_EPOCHS
    batch_size: int = recipe.BATCH_SIZE
    optimizer: str = recipe.OPTIMIZER
    lr: float = recipe.CD_LR
    head_lr_mult: float = recipe.HEAD_LR_MULT
    head_channels: int = recipe.DETECTOR_HEAD_CHANNELS
    separable: bool = recipe.DETECTOR_SEPARABLE
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    freeze_bn: bool = recipe.FREEZE_BN
    frozen_stages: Optional[int] = None
    seed: int = 0
    device: str = "auto"

    @classmethod
    def paper(cls, **overrides) -> CDConfig:
        """The paper's setting (ResNet-50, 256-channel head, SGD at 0.007, the whole trunk
        and its batch norms trained, 50 epochs of batch 16), with ``overrides``."""
        setting = dict(
            backbone="resnet50",
            epochs=50,
            batch_size=16,
            optimizer="sgd",
            lr=0.007,
            head_lr_mult=1.0,
            head_channels=256,
            freeze_bn=False,
            frozen_stages=0,
        )
        return cls(**{**setting, **overrides})


@dataclass
class CDResult:
    """The selected detector (eval mode, CPU), per-epoch history and selection record.

    `steps` holds one record per optimiser step: ``step``, ``epoch`` (fractional) and ``ce``.
    """

    model: SiameseDeepLabV3Plus
    history: list[dict] = field(default_factory=list)
    selection: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    steps: list[dict] = field(default_factory=list)


def train_detector(
    dataset: Dataset,
    config: CDConfig,
    val_dataset: Optional[Dataset] = None,
    progress: Optional[ProgressCallback] = None,
    cancelled: Optional[CancelCheck] = None,
    init: Optional[dict[str, torch.Tensor]] = None,
) -> CDResult:
    """Train on a `PairDataset` whose masks are (pseudo) labels; 255 is ignored by the loss.

    ``init``: a state dict to start from (an earlier detector, `kdmsi.training.warm_start`)
    instead of the trunk's ``config.weights``.

    Model selection: change IoU on `val_dataset` when it has pixel masks, else the last epoch.
    """
    progress = progress or no_progress
    generator = seed_everything(config.seed)
    device = pick_device(config.device)
    model = SiameseDeepLabV3Plus(
        config.backbone,
        len(dataset.bands),
        config.weights,
        head_channels=config.head_channels,
        separable=config.separable,
    )
    if init is not None:
        model.load_state_dict(init)
    freeze_stages(model.trunk, config.frozen_stages)
    model.to(device, memory_format=torch.channels_last)
    optimizer = make_optimizer(
        model.param_groups(config.lr, config.head_lr_mult),
        config.optimizer,
        config.momentum,
        config.weight_decay,
    )
    loader = train_loader(
        subset(dataset, range(len(dataset)), augment=True), config.batch_size, generator
    )
    total_steps = max(1, config.epochs * len(loader))
    use_val = val_dataset is not None and getattr(val_dataset, "has_masks", False)
    criterion = "val_change_iou" if use_val else "last_epoch"
    best_score, best = -np.inf, None
    history: list[dict] = []
    steps: list[dict] = []
    step = 0
    for epoch in range(1, config.epochs + 1):
        set_train_mode(model, config.freeze_bn)
        loss_sum, n_batches = 0.0, 0
        for i, batch in enumerate(loader, start=1):
            check_cancel(cancelled)
            if batch["pre"].shape[0] < 2:
                continue  # BatchNorm in ASPP's pooling branch cannot train on one sample
            poly_lr(optimizer, step, total_steps, config.poly_power)
            logits = model(to_device(batch, "pre", device), to_device(batch, "post", device))
            loss = F.cross_entropy(logits, batch["mask"].to(device), ignore_index=IGNORE_INDEX)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item()
            n_batches += 1
            step += 1
            steps.append({"step": step, "epoch": epoch - 1 + i / len(loader), "ce": loss.item()})
            tiles = min(i * config.batch_size, len(dataset))
            progress(
                step / total_steps,
                f"detector epoch {epoch}/{config.epochs}, tile {tiles}/{len(dataset)}: "
                f"loss {loss.item():.4f}",
            )
        record = {"epoch": epoch, "train_ce": loss_sum / max(n_batches, 1)}
        if use_val:
            record["val_change_iou"] = detector_change_iou(model, val_dataset, device, cancelled)
            score = record["val_change_iou"]
        else:
            score = epoch
        history.append(record)
        if score > best_score:
            best_score, best = score, (epoch, cpu_state(model))
        msg = ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k != "epoch")
        log.info("detector epoch %d/%d: %s", epoch, config.epochs, msg)
        progress(step / total_steps, f"detector epoch {epoch}/{config.epochs}: {msg}")
    epoch, state = best
    model.load_state_dict(state)
    model.to(memory_format=torch.contiguous_format)
    selection = {"criterion": criterion, "epoch": epoch, "value": history[epoch - 1].get(criterion)}
    return CDResult(model.cpu().eval(), history, selection, asdict(config), steps)


@torch.no_grad()
def detector_change_iou(
    model: SiameseDeepLabV3Plus,
    dataset: Dataset,
    device: torch.device,
    cancelled: Optional[CancelCheck] = None,
) -> float:
    """Change IoU of the detector's argmax against the dataset's masks (255 ignored)."""
    model.eval()
    counts = ConfusionCounts()
    for batch in eval_loader(dataset, 8):
        check_cancel(cancelled)
        pred = model(batch["pre"].to(device), batch["post"].to(device)).argmax(dim=1).cpu()
        mask = batch["mask"]
        counts.update(pred == 1, mask == 1, mask != IGNORE_INDEX)
    return counts.metrics()["cIoU"]
