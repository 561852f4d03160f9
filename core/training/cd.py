"""Training the Siamese DeepLabV3+ change detector on (pseudo) label masks."""

from __future__ import annotations

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
from ..progress import CancelCheck, ProgressCallback, check_cancel
from .common import (
    eval_loader,
    freeze_stages,
    make_optimizer,
    seed_everything,
    to_device,
)
from .distributed import ONE_PROCESS, Replicas, replica_loader
from .loop import LAST_EPOCH, run_epochs


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
    replicas: Replicas = ONE_PROCESS,
) -> CDResult:
    """Train on a `PairDataset` whose masks are (pseudo) labels; 255 is ignored by the loss.

    ``init``: a state dict to start from (an earlier detector, `kdmsi.training.warm_start`)
    instead of the trunk's ``config.weights``. ``replicas``: this process's place in a
    data-parallel run (`kdmsi.training.distributed`); every rank returns the same model.

    Model selection: change IoU on `val_dataset` when it has pixel masks, else the last epoch.
    """
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
    model.to(device)
    optimizer = make_optimizer(
        model.param_groups(config.lr, config.head_lr_mult),
        config.optimizer,
        config.momentum,
        config.weight_decay,
    )
    loader = replica_loader(
        subset(dataset, range(len(dataset)), augment=True),
        config.batch_size,
        generator,
        replicas,
        config.seed,
    )
    use_val = val_dataset is not None and getattr(val_dataset, "has_masks", False)
    method = DetectorMethod(model, device, val_dataset if use_val else None, cancelled, replicas)
    loop = run_epochs(
        method,
        loader,
        optimizer,
        epochs=config.epochs,
        criterion="val_change_iou" if use_val else LAST_EPOCH,
        poly_power=config.poly_power,
        freeze_bn=config.freeze_bn,
        progress=progress,
        cancelled=cancelled,
        replicas=replicas,
    )
    return CDResult(model.cpu().eval(), loop.history, loop.selection, asdict(config), loop.steps)


class DetectorMethod:
    """`TrainingMethod` of the detector: cross-entropy against the (pseudo) label masks (255
    ignored); selected by change IoU on ``val_dataset`` when given, else the last epoch (in a
    data-parallel run, from TP/FP/FN summed over the processes' shards of it)."""

    name = "detector"
    step_keys = ("ce",)

    def __init__(
        self,
        model: SiameseDeepLabV3Plus,
        device: torch.device,
        val_dataset: Optional[Dataset] = None,
        cancelled: Optional[CancelCheck] = None,
        replicas: Replicas = ONE_PROCESS,
    ):
        self.model, self.device, self.replicas = model, device, replicas
        self.networks = [model]
        self.val_dataset, self.cancelled = val_dataset, cancelled

    def begin_epoch(self, epoch: int) -> None:
        pass

    def step(self, batch: dict) -> Optional[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        if batch["pre"].shape[0] < 2:
            return None  # BatchNorm in ASPP's pooling branch cannot train on one sample
        pre, post = to_device(batch, "pre", self.device), to_device(batch, "post", self.device)
        logits = self.model(pre, post)
        mask = batch["mask"].to(self.device)
        loss = F.cross_entropy(logits, mask, ignore_index=IGNORE_INDEX)
        return loss, {"ce": loss}

    def score(self, record: dict) -> Optional[float]:
        if self.val_dataset is None:
            return None
        iou = detector_change_iou(
            self.model, self.val_dataset, self.device, self.cancelled, self.replicas
        )
        record["val_change_iou"] = iou
        return iou


@torch.no_grad()
def detector_change_iou(
    model: SiameseDeepLabV3Plus,
    dataset: Dataset,
    device: torch.device,
    cancelled: Optional[CancelCheck] = None,
    replicas: Replicas = ONE_PROCESS,
) -> float:
    """Change IoU of the detector's argmax against the dataset's masks (255 ignored); with
    ``replicas``, from the confusion counts of each process's shard, summed."""
    model.eval()
    counts = ConfusionCounts()
    for batch in eval_loader(replicas.shard(dataset), 8):
        check_cancel(cancelled)
        pred = model(batch["pre"].to(device), batch["post"].to(device)).argmax(dim=1).cpu()
        mask = batch["mask"]
        counts.update(pred == 1, mask == 1, mask != IGNORE_INDEX)
    if replicas.world_size > 1:
        totals = replicas.sum_array(np.array([counts.tp, counts.fp, counts.fn, counts.tn]))
        counts = ConfusionCounts(*(int(v) for v in totals))
    return counts.metrics()["cIoU"]
