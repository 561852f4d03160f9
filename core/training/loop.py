"""The one training loop of the KD, detector and HiCD methods.

The loop owns what every method did alike: epochs, the poly learning rate, the optimiser step,
cancellation, the per-step loss records, the per-epoch history and progress text, channels-last
memory order while training, and keeping the best epoch's weights by a selection metric (as
torchgeo's trainers own the optimiser, the monitored metric and checkpoint selection). A method
supplies only its networks, one step's losses and its selection score (`TrainingMethod`).

Data-parallel training hooks in here, once: `Replicas` (`kdmsi.training.distributed`) says
which process of how many this is; each step runs through DDP (`data_parallel_step`: the
gradients are averaged over the processes before the optimiser step), the loader's sampler
gets its epoch, the epoch's loss sums go through `Replicas.reduce_sums`, and only the main
process reports progress and logs (a method's selection metric must itself be reduced as
sums, e.g. TP/FP/FN, never averaged per process). One process is the default and imports
nothing of `torch.distributed`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..progress import CancelCheck, ProgressCallback, check_cancel, no_progress
from .common import cpu_state, poly_lr, set_train_mode
from .distributed import ONE_PROCESS, Replicas, data_parallel_step

log = logging.getLogger(__name__)

LAST_EPOCH = "last_epoch"
"""The selection criterion when a method has no metric to select by: the last epoch wins."""


class TrainingMethod(Protocol):
    """What a method gives `run_epochs`.

    Attributes:
        name: its word in progress and log lines ("KD", "detector", "feature-mse", ...).
        networks: the networks it trains: put in train mode each epoch (batch norms as
            ``freeze_bn`` says), kept at the best epoch, returned in eval mode.
        step_keys: the parts of `step`'s losses recorded per optimiser step (None: all).
    """

    name: str
    networks: Sequence[torch.nn.Module]
    step_keys: Optional[tuple[str, ...]]

    def begin_epoch(self, epoch: int) -> None:
        """Called before each epoch (1-based), e.g. to draw the epoch's degradations."""

    def step(self, batch: dict) -> Optional[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """The loss to minimise on ``batch`` and its named parts (logged, averaged per epoch),
        or None to skip the batch (e.g. one tile, on which batch norm cannot train)."""

    def score(self, record: dict[str, Any]) -> Optional[float]:
        """After each epoch: add the selection metric to ``record`` and return the score to
        maximise (None: select the last epoch, `LAST_EPOCH`)."""


@dataclass
class LoopResult:
    """Per-epoch ``history`` (``epoch``, ``train_<part>`` means, the selection metric),
    ``selection`` (``criterion``, ``epoch``, ``value``) and per-step ``steps`` (``step``,
    fractional ``epoch``, the `TrainingMethod.step_keys` losses). The method's networks hold
    the selected epoch's weights, in eval mode, in the default memory order."""

    history: list[dict] = field(default_factory=list)
    selection: dict = field(default_factory=dict)
    steps: list[dict] = field(default_factory=list)


def run_epochs(
    method: TrainingMethod,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    criterion: str,
    poly_power: float = 0.9,
    freeze_bn: bool = True,
    channels_last: bool = True,
    progress: Optional[ProgressCallback] = None,
    cancelled: Optional[CancelCheck] = None,
    replicas: Replicas = ONE_PROCESS,
) -> LoopResult:
    """Train ``method`` for ``epochs`` over ``loader`` and keep its best epoch by
    `TrainingMethod.score` (named ``criterion`` in the selection record).

    ``channels_last``: the networks train in channels-last memory order (about twice as fast
    for depthwise and 1x1 convolutions on a CPU) and are returned in the default order.

    Raises:
        Cancelled: ``cancelled()`` returned True (checked before every step).
        ValueError: no optimiser step ran (every batch was skipped).
    """
    progress = progress or no_progress
    report = progress if replicas.is_main else no_progress
    if channels_last:
        for net in method.networks:
            net.to(memory_format=torch.channels_last)
    # after the memory order is set: DDP lays its gradient buckets out by the strides
    run_step = method.step if replicas.world_size == 1 else data_parallel_step(method)
    set_epoch = getattr(loader.sampler, "set_epoch", None)  # a data-parallel shard's shuffle
    total_steps = max(1, epochs * len(loader))
    tiles = len(loader.dataset)  # type: ignore[arg-type]
    batch_size = (loader.batch_size or 1) * replicas.world_size  # tiles per step, all ranks
    result = LoopResult()
    best_score, best = -np.inf, None
    step = 0
    for epoch in range(1, epochs + 1):
        method.begin_epoch(epoch)
        if set_epoch is not None:
            set_epoch(epoch)
        for net in method.networks:
            set_train_mode(net, freeze_bn)
        sums: dict[str, float] = {}
        n_batches = 0
        for i, batch in enumerate(loader, start=1):
            check_cancel(cancelled)
            poly_lr(optimizer, step, total_steps, poly_power)
            computed = run_step(batch)
            if computed is None:
                continue
            loss, parts = computed
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            values = {k: float(v.detach()) for k, v in parts.items()}
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            n_batches += 1
            step += 1
            keys = method.step_keys or tuple(values)
            entry = {"step": step, "epoch": epoch - 1 + i / len(loader)}
            result.steps.append({**entry, **{k: values[k] for k in keys if k in values}})
            report(
                step / total_steps,
                f"{method.name} epoch {epoch}/{epochs}, tile {min(i * batch_size, tiles)}/"
                f"{tiles}: loss {float(loss.detach()):.4f}",
            )
        replicas.sync_buffers(method.networks)
        sums, n_batches = replicas.reduce_sums(sums, n_batches)
        record = {"epoch": epoch, **{f"train_{k}": v / max(n_batches, 1) for k, v in sums.items()}}
        score = method.score(record)
        result.history.append(record)
        if score is None:
            score = epoch
        if score > best_score:
            best_score, best = score, (epoch, [cpu_state(net) for net in method.networks])
        message = ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k != "epoch")
        message = f"{method.name} epoch {epoch}/{epochs}: {message}"
        if replicas.is_main:
            log.info("%s", message)
        report(step / total_steps, message)
    if step == 0:
        raise ValueError("no training step ran: the dataset needs at least 2 tiles")
    epoch, states = best
    for net, state in zip(method.networks, states):
        net.load_state_dict(state)
        net.eval()
        if channels_last:
            net.to(memory_format=torch.contiguous_format)
    value = result.history[epoch - 1].get(criterion)
    result.selection = {"criterion": criterion, "epoch": epoch, "value": value}
    return result


__all__ = ["LAST_EPOCH", "LoopResult", "Replicas", "TrainingMethod", "run_epochs"]
