"""Pieces shared by the training loops: seeding, loaders, poly LR, hold-out splits."""

from __future__ import annotations

import random
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..choices import OPTIMIZERS


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, numpy and torch; returns a generator for data loaders."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def poly_lr(optimizer: torch.optim.Optimizer, step: int, total_steps: int, power: float = 0.9):
    """Set each group's lr to base_lr * (1 - step / total_steps) ** power."""
    factor = (1.0 - min(step, total_steps) / max(total_steps, 1)) ** power
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


def sgd(param_groups: list[dict], momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD with Nesterov momentum over groups that carry their own ``base_lr``."""
    return torch.optim.SGD(
        param_groups,
        lr=param_groups[0]["lr"],
        momentum=momentum,
        nesterov=True,
        weight_decay=weight_decay,
    )


def train_loader(
    dataset: Dataset,
    batch_size: int,
    generator: torch.Generator,
    sampler: Optional[Sampler] = None,
) -> DataLoader:
    """Shuffled batches; the last partial batch is dropped when at least one full batch exists,
    because BatchNorm cannot train on a batch of one. ``sampler`` (a data-parallel shard,
    `kdmsi.training.distributed.replica_loader`) replaces the shuffle; the rule then applies
    to the shard's size, the same on every rank."""
    size = len(sampler) if sampler is not None else len(dataset)  # type: ignore[arg-type]
    drop_last = size > batch_size and size % batch_size == 1
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=drop_last,
        generator=generator if sampler is None else None,
        num_workers=0,
    )


def eval_loader(dataset: Dataset, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)


def stratified_holdout(
    labels: Sequence[Optional[int]], fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Split item indices into (train, held-out), holding out `fraction` of each label class
    (at least one item of a class with two or more items). Unlabelled items stay in train."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for cls in (0, 1):
        idx = [i for i, label in enumerate(labels) if label == cls]
        rng.shuffle(idx)
        n_held = max(1, round(fraction * len(idx))) if len(idx) >= 2 and fraction > 0 else 0
        held += idx[:n_held]
        train += idx[n_held:]
    train += [i for i, label in enumerate(labels) if label is None]
    return sorted(train), sorted(held)


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a model's state dict (for keeping the best epoch)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def make_optimizer(
    param_groups: list[dict], name: str, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """AdamW or SGD (Nesterov) over groups that carry their own ``lr`` and ``base_lr``.

    AdamW is the default of every loop: its steps do not depend on the scale of the fused
    features, so one learning rate fits every trunk; SGD at the paper's rates barely moved a
    pretrained teacher's loss in the steps a CPU affords (README, "Training recipe")."""
    groups = [g for g in param_groups if g["params"]]
    if name == "sgd":
        return sgd(groups, momentum, weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=groups[0]["lr"], weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def freeze_stages(trunk: torch.nn.Module, count: Optional[int]) -> int:
    """Stop training the first ``count`` parts of ``trunk.stages()`` (stem first; None: the
    trunk's ``early_parts``, up to output stride 8): no gradients, and their batch norms keep
    their statistics (`set_train_mode` keeps them in eval mode). Returns the count.

    Measured on real pairs (README, "Training recipe"): freezing EfficientNet-Lite0 up to
    stride 8 matched full fine-tuning (pooled MSI IoU 0.356 vs 0.348) at 138 instead of 242 ms
    per tile pair and step; freezing the whole trunk lost 4 points."""
    count = trunk.early_parts if count is None else int(count)
    for stage in trunk.stages()[:count]:
        for p in stage.parameters():
            p.requires_grad_(False)
    return count


def set_train_mode(model: torch.nn.Module, freeze_bn: bool) -> None:
    """``model.train()``, then batch norms of the trunk in eval mode where they are frozen:
    all of them with ``freeze_bn`` (pretrained statistics; batches of a few tiles of one
    region would replace them with noisy ones), else those of frozen stages."""
    model.train()
    trunk = getattr(model, "trunk", model)
    for module in trunk.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            frozen = not any(p.requires_grad for p in module.parameters())
            if freeze_bn or frozen:
                module.eval()


def to_device(batch: dict, key: str, device: torch.device) -> torch.Tensor:
    """``batch[key]`` on ``device``; 4-d image batches in channels-last memory order, which
    roughly halves the time of depthwise and 1x1 convolutions on a CPU (EfficientNet-Lite0
    train step at 256 px: 479 -> 236 ms per tile pair)."""
    x = batch[key].to(device)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
