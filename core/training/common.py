"""Pieces shared by the training loops: seeding, loaders, poly LR, hold-out splits."""

from __future__ import annotations

import copy
import random
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset


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


def train_loader(dataset: Dataset, batch_size: int, generator: torch.Generator) -> DataLoader:
    """Shuffled batches; the last partial batch is dropped when at least one full batch exists,
    because BatchNorm cannot train on a batch of one."""
    drop_last = len(dataset) > batch_size and len(dataset) % batch_size == 1
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=drop_last,
        generator=generator,
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


def subset(dataset: Dataset, indices: Sequence[int], augment: Optional[bool] = None) -> Subset:
    """A Subset; with `augment` set, over a shallow copy of the dataset with that flag."""
    if augment is not None and getattr(dataset, "augment", None) != augment:
        dataset = copy.copy(dataset)
        dataset.augment = augment
    return Subset(dataset, list(indices))


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a model's state dict (for keeping the best epoch)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
