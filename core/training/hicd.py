"""Training a quality-robust detector on (before, degraded after) pairs, with a frozen teacher.

One loop, three methods (`METHODS`), so that they are compared like with like (same student
initialisation, data, degradations, schedule and steps):

* ``direct``: cross-entropy on the degraded pairs only (the baseline; no teacher needed);
* ``feature-mse``: + ``lambda_feat`` x `kdmsi.losses.hicd.feature_mse_loss` to the teacher's
  clean-pair features, position by position;
* ``hicd``: + the HiCD correlation terms (`kdmsi.losses.hicd.HiCDLoss`).

The teacher (a `SiameseDeepLabV3Plus` trained on clean pairs) is frozen, kept in eval mode and
run under ``torch.no_grad()`` on (before, clean after); the student runs on (before, degraded
after) of the same augmented tile. Memory per step: one teacher forward without activations
kept, one student forward/backward, and the bounded correlation matrices of `kdmsi.losses.hicd`.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .. import recipe
from ..data.pairs import IGNORE_INDEX, subset
from ..inference.msi import pick_device
from ..losses.hicd import HiCDLoss, HiCDLossConfig, feature_mse_loss
from ..models import SiameseDeepLabV3Plus
from ..progress import CancelCheck, ProgressCallback
from .cd import DetectorMethod
from .common import make_optimizer, seed_everything
from .degrade import DegradedPairDataset, check_preset
from .distributed import ONE_PROCESS, Replicas, replica_loader
from .loop import LAST_EPOCH, run_epochs

METHODS = ("direct", "feature-mse", "hicd")
INITS = ("teacher", "imagenet", "random")


@dataclass
class HiCDConfig:
    """Hyper-parameters of `train_hicd`.

    method: one of `METHODS`; the default, feature-MSE distillation, is the one the HiCD bench
    supports (`bench/results/hicd.md`: above the direct baseline on synthetic and LEVIR-CD
    pairs, while HiCD's correlation terms were not, at any weight searched). preset:
    degradation preset of the after images (`kdmsi.training.degrade.PRESETS`); training draws
    a fresh degradation of every tile each epoch (seeded by ``degrade_seed``, tile and epoch).
    init: the student starts as a copy of the teacher (``teacher``), or as a new network of the
    teacher's architecture with an ImageNet trunk (``imagenet``) or random weights
    (``random``). The optimiser, learning rates and frozen batch norms follow the detector's
    recipe (`kdmsi.recipe`), as the teacher was trained. lambda_feat: weight of the
    feature-MSE distillation.
    """

    method: str = "feature-mse"
    preset: str = "multi"
    init: str = "teacher"
    epochs: int = recipe.CD_EPOCHS
    batch_size: int = recipe.BATCH_SIZE
    optimizer: str = recipe.OPTIMIZER
    lr: float = recipe.CD_LR
    head_lr_mult: float = recipe.HEAD_LR_MULT
    freeze_bn: bool = recipe.FREEZE_BN
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    lambda_feat: float = 3.0
    loss: HiCDLossConfig = field(default_factory=HiCDLossConfig)
    seed: int = 0
    degrade_seed: int = 0
    device: str = "auto"

    def validate(self) -> HiCDConfig:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {METHODS}")
        if self.init not in INITS:
            raise ValueError(f"unknown student init {self.init!r}; choose one of {INITS}")
        check_preset(self.preset)
        self.loss.validate()
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["loss"] = self.loss.to_dict()
        return d


@dataclass
class HiCDResult:
    """The selected student (eval mode, CPU), per-epoch history and selection record.

    `steps` holds one record per optimiser step: ``step``, ``epoch`` (fractional), ``ce`` and,
    for the distillation methods, ``distill`` (the weighted distillation loss).
    """

    model: SiameseDeepLabV3Plus
    history: list[dict] = field(default_factory=list)
    selection: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    steps: list[dict] = field(default_factory=list)


def frozen(teacher: SiameseDeepLabV3Plus, device: torch.device) -> SiameseDeepLabV3Plus:
    """A frozen eval-mode copy of `teacher` on `device` (the caller's model is not touched)."""
    model = copy.deepcopy(teacher).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def make_student(
    teacher: SiameseDeepLabV3Plus, config: HiCDConfig, device: torch.device
) -> SiameseDeepLabV3Plus:
    """The student: a trainable copy of the teacher, or a new network of the teacher's
    architecture (trunk, bands, head) with ImageNet or random weights."""
    if config.init == "teacher":
        student = copy.deepcopy(teacher)
        for p in student.parameters():
            p.requires_grad_(True)
    else:
        weights = recipe.WEIGHTS if config.init == "imagenet" else None
        student = SiameseDeepLabV3Plus(**teacher.config(), weights=weights)
    return student.to(device).train()


def train_hicd(
    teacher: SiameseDeepLabV3Plus,
    dataset: Dataset,
    config: Optional[HiCDConfig] = None,
    progress: Optional[ProgressCallback] = None,
    cancelled: Optional[CancelCheck] = None,
    val_dataset: Optional[Dataset] = None,
    replicas: Replicas = ONE_PROCESS,
) -> HiCDResult:
    """Train a student of `config.method` on `dataset` with its after images degraded.

    Args:
        teacher: detector trained on clean pairs; copied and frozen, never modified.
        dataset: clean pairs with (pseudo) label masks (`PairDataset`, `RasterTileDataset`:
            items ``pre``/``post`` [C, T, T], ``mask`` [T, T] with 255 ignored). It is wrapped
            in a `DegradedPairDataset` here; do not pass a degraded one.
        config: see `HiCDConfig`.
        val_dataset: clean pairs with pixel masks; when given, the epoch with the best change
            IoU on its degraded version (fixed degradations, seed ``degrade_seed + 1``) is
            kept, else the last epoch.
        replicas: this process's place in a data-parallel run (`kdmsi.training.distributed`):
            only the student is wrapped for DDP (the frozen teacher runs as it is on each
            rank); every rank returns the same student.

    Returns:
        `HiCDResult` whose ``model`` is the student in eval mode on the CPU.
    """
    config = (config or HiCDConfig()).validate()
    generator = seed_everything(config.seed)
    device = pick_device(config.device)
    student = make_student(teacher, config, device)
    method = HiCDMethod(
        student,
        frozen(teacher, device) if config.method != "direct" else None,
        config,
        device,
        cancelled,
        replicas,
    )
    optimizer = make_optimizer(
        student.param_groups(config.lr, config.head_lr_mult),
        config.optimizer,
        config.momentum,
        config.weight_decay,
    )
    degraded = DegradedPairDataset(dataset, config.preset, config.degrade_seed, True)
    view = subset(degraded, range(len(degraded)), augment=True)
    method.train_set = view.dataset  # `subset` may have copied it: the loader reads this one
    loader = replica_loader(view, config.batch_size, generator, replicas, config.seed)
    if val_dataset is not None and getattr(val_dataset, "has_masks", False):
        method.val_dataset = DegradedPairDataset(
            val_dataset, config.preset, config.degrade_seed + 1
        )
    loop = run_epochs(
        method,
        loader,
        optimizer,
        epochs=config.epochs,
        criterion="val_change_iou" if method.val_dataset is not None else LAST_EPOCH,
        poly_power=config.poly_power,
        freeze_bn=config.freeze_bn,
        channels_last=False,  # as measured in the HiCD bench; the loop can switch it on
        progress=progress,
        cancelled=cancelled,
        replicas=replicas,
    )
    return HiCDResult(
        student.cpu().eval(), loop.history, loop.selection, config.to_dict(), loop.steps
    )


class HiCDMethod(DetectorMethod):
    """`TrainingMethod` of the quality-robust student: cross-entropy on degraded after images
    plus, for `hicd` and `feature-mse`, distillation from the frozen teacher's features on the
    clean pair. Selected as the detector is (`DetectorMethod.score`), on the degraded
    validation set (``val_dataset``) when given."""

    step_keys = ("ce", "distill")

    def __init__(
        self,
        student: SiameseDeepLabV3Plus,
        teacher: Optional[SiameseDeepLabV3Plus],
        config: HiCDConfig,
        device: torch.device,
        cancelled: Optional[CancelCheck] = None,
        replicas: Replicas = ONE_PROCESS,
    ):
        super().__init__(student, device, None, cancelled, replicas)
        self.name, self.student, self.teacher, self.config = config.method, student, teacher, config
        self.hicd = HiCDLoss(config.loss) if config.method == "hicd" else None
        self.sample_gen = torch.Generator().manual_seed(config.seed + 1)
        self.train_set: Optional[DegradedPairDataset] = None

    def begin_epoch(self, epoch: int) -> None:
        self.train_set.set_epoch(epoch)

    def step(self, batch: dict) -> Optional[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        if batch["pre"].shape[0] < 2:
            return None  # BatchNorm in ASPP's pooling branch cannot train on one sample
        pre, post = batch["pre"].to(self.device), batch["post"].to(self.device)
        feats = self.student.forward_features(pre, post)
        mask = batch["mask"].to(self.device)
        ce = F.cross_entropy(feats.logits, mask, ignore_index=IGNORE_INDEX)
        parts = {"ce": ce}
        if self.teacher is None:
            return ce, parts
        with torch.no_grad():
            t_feats = self.teacher.forward_features(pre, batch["post_clean"].to(self.device))
        if self.hicd is not None:
            terms = self.hicd(feats, t_feats, self.sample_gen)
            parts.update({k: v for k, v in terms.items() if k != "total"})
            parts["distill"] = terms["total"]
        else:
            parts["feat_mse"] = feature_mse_loss(feats, t_feats, self.config.loss.stages)
            parts["distill"] = self.config.lambda_feat * parts["feat_mse"]
        return ce + parts["distill"], parts
