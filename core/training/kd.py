"""Joint training of the KD-MSI teacher and student on image-level labels.

Per batch: G_t = teacher(pre, post), G_s = student(pre, post);
L = BCE(GAP(G_t), y) + kd_weight * MSE(sigmoid(G_s), CAM(G_t).detach() * y).
The two networks have separate weights and one SGD optimiser.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from .. import recipe
from ..choices import DEFAULT_BACKBONE
from ..data.pairs import subset
from ..inference.maps import collect_map_statistics, map_function
from ..inference.msi import pick_device
from ..losses.kd import DEFAULT_KD_WEIGHT, classification_loss, kd_loss
from ..models import SiameseCAMNet
from ..progress import CancelCheck, ProgressCallback
from .common import (
    eval_loader,
    freeze_stages,
    make_optimizer,
    seed_everything,
    stratified_holdout,
    to_device,
)
from .distributed import ONE_PROCESS, Replicas, replica_loader
from .loop import LAST_EPOCH, run_epochs

MIN_TILES_PER_CLASS = 2
CHANCE_LOSS = float(np.log(2.0))  # binary cross-entropy of a classifier that knows nothing


@dataclass
class KDConfig:
    """Hyper-parameters of the joint teacher/student training.

    The defaults are the CPU recipe measured on real pairs (`kdmsi.recipe`; README, "Training
    recipe"): a pretrained EfficientNet-Lite0, the pyramid CAM head, AdamW at 1e-4 (head
    x10), batch norms frozen at their ImageNet statistics, the trunk frozen up to stride 8.
    The paper's setting is ``backbone="resnet50"``, ``head="single"``, ``optimizer="sgd"``,
    ``lr=1e-3``, ``freeze_bn=False``, ``frozen_stages=0``, 20 epochs. ``frozen_stages``: the
    first trunk parts (`freeze_stages`) that keep their pretrained weights; None: up to
    output stride 8.
    """

    backbone: str = DEFAULT_BACKBONE
    fusion: str = "abs"
    weights: Optional[str] = recipe.WEIGHTS
    head: str = recipe.CAM_HEAD
    epochs: int = recipe.KD_EPOCHS
    batch_size: int = recipe.BATCH_SIZE
    optimizer: str = recipe.OPTIMIZER
    lr: float = recipe.KD_LR
    head_lr_mult: float = recipe.HEAD_LR_MULT
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    freeze_bn: bool = recipe.FREEZE_BN
    frozen_stages: Optional[int] = None
    kd_weight: float = DEFAULT_KD_WEIGHT
    holdout_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"

    @classmethod
    def paper(cls, **overrides) -> KDConfig:
        """The paper's setting (ResNet-50, single CAM head, SGD at 1e-3, batch norms and the
        whole trunk trained, 20 epochs), with ``overrides``."""
        setting = dict(
            backbone="resnet50",
            head="single",
            epochs=20,
            optimizer="sgd",
            lr=1e-3,
            freeze_bn=False,
            frozen_stages=0,
        )
        return cls(**{**setting, **overrides})


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

    def teacher_note(self) -> str:
        """What the teacher's model selection says about its learning, for messages: its
        held-out classification loss against chance (ln 2), when it was selected on one."""
        value = self.selection.get("value")
        if self.selection.get("criterion") != "heldout_teacher_cls_loss" or value is None:
            return ""
        if value >= CHANCE_LOSS - 0.02:
            return (
                f"the teacher's held-out classification loss {value:.3f} is at chance "
                f"({CHANCE_LOSS:.3f}): it did not learn to tell the changed tiles from the others"
            )
        return (
            f"the teacher's held-out classification loss is {value:.3f}; "
            f"chance is {CHANCE_LOSS:.3f}"
        )


def train_kd(
    dataset: Dataset,
    config: KDConfig,
    val_dataset: Optional[Dataset] = None,
    progress: Optional[ProgressCallback] = None,
    cancelled: Optional[CancelCheck] = None,
    init: Optional[dict[str, dict[str, torch.Tensor]]] = None,
    replicas: Replicas = ONE_PROCESS,
) -> KDResult:
    """Train teacher and student jointly on a `PairDataset` with image-level labels.

    ``init`` ({"teacher": state dict, "student": state dict}, e.g. of an earlier run on fewer
    tags, `kdmsi.training.warm_start`) starts both networks from those weights instead of the
    trunk's ``config.weights``. ``replicas``: this process's place in a data-parallel run
    (`kdmsi.training.distributed`): each trains on its shard of the tiles and every one
    returns the same selected networks.

    Model selection: by the student's best single-scale change IoU on
    `val_dataset` when it has pixel masks; otherwise by the teacher's classification loss on a
    stratified held-out part (`holdout_fraction`) of the image-labelled tiles.
    """
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
    teacher, student = (
        SiameseCAMNet(config.backbone, config.fusion, bands, config.weights, config.head)
        for _ in range(2)
    )
    if init is not None:
        teacher.load_state_dict(init["teacher"])
        student.load_state_dict(init["student"])
    shared = share_frozen_prefix(teacher, student, config.frozen_stages)
    for net in (teacher, student):
        net.to(device)
    groups = teacher.param_groups(config.lr, config.head_lr_mult) + student.param_groups(
        config.lr, config.head_lr_mult
    )
    optimizer = make_optimizer(groups, config.optimizer, config.momentum, config.weight_decay)
    method = KDMethod(teacher, student, shared, config.kd_weight, device, cancelled, replicas)
    if use_val_iou:
        method.val_dataset, criterion = val_dataset, "val_change_iou"
    elif held_set is not None:
        method.held_set, criterion = held_set, "heldout_teacher_cls_loss"
    else:
        criterion = LAST_EPOCH
    loop = run_epochs(
        method,
        replica_loader(train_set, config.batch_size, generator, replicas, config.seed),
        optimizer,
        epochs=config.epochs,
        criterion=criterion,
        poly_power=config.poly_power,
        freeze_bn=config.freeze_bn,
        progress=progress,
        cancelled=cancelled,
        replicas=replicas,
    )
    selection = {**loop.selection, "heldout_tiles": len(held_idx)}
    return KDResult(
        teacher.cpu().eval(), student.cpu().eval(), loop.history, selection, asdict(config),
        loop.steps,
    )  # fmt: skip


class KDMethod:
    """`TrainingMethod` of the joint teacher/student training (`kd_loss`: the teacher's
    classification loss + ``kd_weight`` x the student's CAM distillation). The frozen trunk
    prefix both share runs once per batch. Selected by the student's change IoU on
    ``val_dataset``, else by the teacher's classification loss on ``held_set``, else the last
    epoch. In a data-parallel run both are sums over the processes' shards of those tiles
    (confusion histograms; loss sum and tile count), so every rank selects the same epoch."""

    name = "KD"
    step_keys = None

    def __init__(
        self,
        teacher: SiameseCAMNet,
        student: SiameseCAMNet,
        shared: int,
        kd_weight: float,
        device: torch.device,
        cancelled: Optional[CancelCheck] = None,
        replicas: Replicas = ONE_PROCESS,
    ):
        self.teacher, self.student, self.shared = teacher, student, shared
        self.replicas = replicas
        self.networks = [teacher, student]
        self.kd_weight, self.device, self.cancelled = kd_weight, device, cancelled
        self.val_dataset: Optional[Dataset] = None
        self.held_set: Optional[Dataset] = None

    def begin_epoch(self, epoch: int) -> None:
        pass

    def step(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pre, post = to_device(batch, "pre", self.device), to_device(batch, "post", self.device)
        y = batch["label"].to(self.device)
        with torch.no_grad():  # the frozen prefix, run once for both networks
            state = self.teacher.start(pre, post, self.shared)
        g_teacher, g_student = self.teacher.forward_from(state), self.student.forward_from(state)
        losses = kd_loss(g_teacher, g_student, y, self.kd_weight)
        return losses["total"], {k: losses[k] for k in ("total", "cls", "kd")}

    def score(self, record: dict) -> Optional[float]:
        if self.val_dataset is not None:
            record["val_change_iou"] = student_change_iou(
                self.student, self.val_dataset, self.device, self.cancelled, self.replicas
            )
            return record["val_change_iou"]
        if self.held_set is not None:
            loss = teacher_cls_loss(self.teacher, self.held_set, self.device, self.replicas)
            record["heldout_teacher_cls_loss"] = loss
            return -loss
        return None


def share_frozen_prefix(
    teacher: SiameseCAMNet, student: SiameseCAMNet, parts: Optional[int]
) -> int:
    """Freeze the first ``parts`` trunk parts of both networks (None: the trunk's default,
    `freeze_stages`) and give the student the teacher's weights there, so that the KD loop
    runs that prefix once for both (a frozen prefix is the same function in each: no
    gradient, batch norms in eval mode). Returns the number of parts frozen."""
    for net in (teacher, student):
        parts = freeze_stages(net.trunk, parts)
    for mine, theirs in zip(student.trunk.stages()[:parts], teacher.trunk.stages()[:parts]):
        mine.load_state_dict(theirs.state_dict())
    return parts


@torch.no_grad()
def teacher_cls_loss(
    teacher: SiameseCAMNet,
    dataset: Dataset,
    device: torch.device,
    replicas: Replicas = ONE_PROCESS,
) -> float:
    """Mean classification loss of the teacher over an image-labelled dataset (with
    ``replicas``: the loss sum and tile count of each process's shard, summed)."""
    teacher.eval()
    total, count = 0.0, 0
    for batch in eval_loader(replicas.shard(dataset), 16):
        g = teacher(batch["pre"].to(device), batch["post"].to(device))
        n = batch["label"].shape[0]
        total += float(classification_loss(g, batch["label"].to(device))) * n
        count += n
    sums, count = replicas.reduce_sums({"loss": total}, count)
    return sums["loss"] / max(count, 1)


@torch.no_grad()
def student_change_iou(
    student: SiameseCAMNet,
    dataset: Dataset,
    device: torch.device,
    cancelled: Optional[CancelCheck] = None,
    replicas: Replicas = ONE_PROCESS,
) -> float:
    """Best change IoU of the single-scale student over thresholds 0.05..0.95 (step 0.05)
    against the validation masks. The best threshold is used because the student's scale is
    only known relative to the teacher's CAM; the pseudo-label threshold is chosen later.
    With ``replicas``, each process scores its shard and the truth-split histograms are
    summed (the confusion counts at every threshold are then those of the whole set)."""
    student.eval()
    stats = collect_map_statistics(
        replicas.shard(dataset),
        {"student": map_function("student", student)},
        device,
        16,
        cancelled=cancelled,
    )["student"]
    if replicas.world_size > 1:
        stats.positive = replicas.sum_array(stats.positive).astype(np.int64)
        stats.negative = replicas.sum_array(stats.negative).astype(np.int64)
    return max(stats.counts_at(t / 20).metrics()["cIoU"] for t in range(1, 20))
