"""Data-parallel training across the processes torchrun starts (PyTorch DDP).

One job: turn torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``) into a process group and a `Replicas`,
and give the training loop what data parallelism changes: each process's shard of the tiles
(`replica_loader`, a `DistributedSampler` with the config seed on every rank), one gradient
all-reduce per step (`data_parallel_step`, DDP) and sums of the selection metrics over
shards of the held-out tiles (`Replicas.shard`, `Replicas.reduce_sums`,
`Replicas.sum_array`).

Without torchrun (``WORLD_SIZE`` unset or 1) every function here is the single-process
path: nothing of ``torch.distributed`` is imported and the loaders, seeds and outputs are
those of a plain run.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ..options import check_dist_backend
from .common import train_loader

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Replicas:
    """Which of the data-parallel processes of one run this is (one process by default)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """The process that reports progress, logs and writes files."""
        return self.rank == 0

    def reduce_sums(self, sums: dict[str, float], count: int) -> tuple[dict[str, float], int]:
        """The loss sums and batch count over every process (as they are with one)."""
        if self.world_size == 1:
            return sums, count
        values = self.sum_array(np.array([*sums.values(), float(count)], dtype=np.float64))
        *totals, total_count = values.tolist()
        return dict(zip(sums, totals)), int(total_count)

    def sum_array(self, values: np.ndarray) -> np.ndarray:
        """``values`` summed over every process (float64; exact for counts below 2**53)."""
        if self.world_size == 1:
            return values
        import torch.distributed as dist

        total = torch.from_numpy(np.asarray(values, dtype=np.float64).copy())
        dist.all_reduce(total)
        return total.numpy()

    def gather(self, value: Any) -> list:
        """``value`` of every process, in rank order (pickled; e.g. the MSI maps of each
        process's shard, `kdmsi.inference.pseudo_labels.msi_pseudo_labels`)."""
        if self.world_size == 1:
            return [value]
        import torch.distributed as dist

        values: list = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def shard(self, dataset: Dataset) -> Dataset:
        """This process's share of an evaluation set (every ``world_size``-th item from
        ``rank``; shares may differ by one item, as sums over them need no padding)."""
        if self.world_size == 1:
            return dataset
        return Subset(dataset, list(range(self.rank, len(dataset), self.world_size)))  # type: ignore[arg-type]

    def sync_buffers(self, networks: Sequence[torch.nn.Module]) -> None:
        """Rank 0's buffers (batch-norm running statistics) on every process. DDP broadcasts
        them at the start of each forward, so after an epoch's last step each rank holds the
        statistics of its own last batch; the selection metric, the epoch kept and the pseudo
        labels made from it must see one network on every rank."""
        if self.world_size == 1:
            return
        import torch.distributed as dist

        for net in networks:
            for buffer in net.buffers():
                dist.broadcast(buffer, src=0)

    def barrier(self) -> None:
        """Wait for every process (e.g. until the main one has written the outputs)."""
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()


ONE_PROCESS = Replicas()
"""The `Replicas` of a plain run (the default of every training function)."""


def world_size_from_env() -> int:
    """torchrun's ``WORLD_SIZE`` (1 when unset: a plain run)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


@contextmanager
def data_parallel(backend: str = "auto", device: str = "auto") -> Iterator[Replicas]:
    """The `Replicas` of this process for the body of a training command.

    Under torchrun (``WORLD_SIZE`` > 1) the process group is started here (``backend``:
    ``auto`` is nccl when training on CUDA, else gloo; ``device``: the command's --device,
    auto puts rank r on ``cuda:LOCAL_RANK``), the non-main ranks log only warnings, and on the
    way out every rank waits for the others (so that the main one's outputs are written
    before the run ends) and the group is destroyed. After an error there is no wait: the
    other ranks stop when torchrun ends them.

    Raises:
        ValueError: a backend or device that cannot work with the others.
    """
    backend = check_dist_backend(backend)
    if world_size_from_env() <= 1:
        yield ONE_PROCESS
        return
    import torch.distributed as dist

    replicas = _start(backend, device)
    finished = False
    try:
        yield replicas
        finished = True
    finally:
        try:
            if finished:
                dist.barrier()
        finally:
            dist.destroy_process_group()


def _start(backend: str, device: str) -> Replicas:
    """Join the process group torchrun's environment describes."""
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), world_size_from_env()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    requested = str(device).strip().lower()
    cuda = torch.cuda.is_available() and requested.startswith(("auto", "cuda"))
    if cuda and requested.startswith("cuda:") and local_world > 1:
        raise ValueError(
            f"--device {device} puts every process of this machine on one GPU: use --device "
            "auto or cuda (each process then takes the GPU numbered by its LOCAL_RANK)"
        )
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    if backend == "nccl" and not cuda:
        raise ValueError(
            "--dist-backend nccl needs training on CUDA GPUs; use --dist-backend gloo (or "
            "auto) to train on CPUs"
        )
    if cuda and requested in ("auto", "cuda"):
        torch.cuda.set_device(local_rank)  # pick_device's "cuda" is then this rank's GPU
    try:
        dist.init_process_group(backend, rank=rank, world_size=world)
    except RuntimeError as exc:
        if "libuv" not in str(exc):
            raise
        # a PyTorch built without libuv (Debian's python3-torch): its plain TCP store
        os.environ["USE_LIBUV"] = "0"
        dist.init_process_group(backend, rank=rank, world_size=world)
    if rank != 0:  # one process tells the story; the others speak only of trouble
        logging.getLogger().setLevel(logging.WARNING)
    log.info("data-parallel training: %d processes, backend %s", world, backend)
    return Replicas(rank, world)


def replica_loader(
    dataset: Dataset,
    batch_size: int,
    generator: torch.Generator,
    replicas: Replicas,
    seed: int,
) -> DataLoader:
    """The training loader of this process: `common.train_loader` in a plain run; under
    torchrun, this rank's shard of ``dataset`` (`DistributedSampler`, shuffled with ``seed``
    and the epoch alike on every rank, ``drop_last`` so that no tile is repeated to pad a
    shard) with augmentation and dropout drawn from ``seed + rank`` (call it after the
    networks are built: their init stays that of ``seed``, the same on every rank). Every rank
    gets as many batches of the same sizes, so a step skipped on one (a batch of one tile) is
    skipped on all.

    Raises:
        ValueError: fewer tiles than processes x batch size (some rank would have no batch).
    """
    if replicas.world_size == 1:
        return train_loader(dataset, batch_size, generator)
    from torch.utils.data.distributed import DistributedSampler

    needed = replicas.world_size * batch_size
    if len(dataset) < needed:  # type: ignore[arg-type]
        raise ValueError(
            f"{len(dataset)} training tiles are too few for {replicas.world_size} processes "  # type: ignore[arg-type]
            f"of batch {batch_size}: at least {needed} are needed; use fewer processes "
            "(--nproc-per-node) or a smaller --batch-size"
        )
    _seed_augmentation(dataset, seed + replicas.rank)
    torch.manual_seed(seed + replicas.rank)  # dropout: each rank its own masks
    sampler = DistributedSampler(
        dataset,
        num_replicas=replicas.world_size,
        rank=replicas.rank,
        shuffle=True,
        seed=seed,
        drop_last=True,
    )
    return train_loader(dataset, batch_size, generator, sampler=sampler)


def _seed_augmentation(dataset: Dataset, seed: int) -> None:
    """Give the dataset that augments (under `Subset` and wrapper datasets) a generator of its
    own seeded with ``seed``, so that ranks do not flip and rotate their tiles in lockstep."""
    node: Any = dataset
    while node is not None:
        if isinstance(vars(node).get("_rng"), np.random.Generator):
            node._rng = np.random.default_rng(seed)
            return
        node = vars(node).get("dataset")


class _StepModule(torch.nn.Module):
    """A method's trainable networks as one module whose ``forward`` is one training step.

    DDP all-reduces the gradients of the parameters its module's forward used; the KD step
    runs the networks through ``start`` and ``forward_from`` rather than their ``forward``,
    so the networks are wrapped once, together, with the step as the forward."""

    def __init__(self, method: Any, networks: Sequence[torch.nn.Module]):
        super().__init__()
        self.networks = torch.nn.ModuleList(networks)
        self.method = method  # not a Module: not registered, not part of the state

    def forward(self, batch: dict) -> Optional[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        return self.method.step(batch)


def data_parallel_step(method: Any) -> torch.nn.Module:
    """A module called as ``step(batch)`` in place of ``method.step(batch)``, whose backward
    all-reduces (averages) the gradients over the processes (DDP): with equal batch sizes
    one step on N processes x batch B is one step on batch N x B. Only networks with
    trainable parameters are wrapped (a frozen teacher stays outside); frozen parameters are
    not reduced, and rank 0's parameters and buffers (frozen batch-norm statistics too) are
    broadcast at construction, so every rank starts from the same weights.

    Call after the networks are in their training memory order: DDP lays its gradient
    buckets out by the parameters' strides at construction."""
    from torch.nn.parallel import DistributedDataParallel

    trainable = [n for n in method.networks if any(p.requires_grad for p in n.parameters())]
    if not trainable:
        raise ValueError(f"{method.name}: no network has trainable parameters")
    device = next(p for p in trainable[0].parameters() if p.requires_grad).device
    ids = None
    if device.type == "cuda":
        ids = [device.index if device.index is not None else torch.cuda.current_device()]
    return DistributedDataParallel(_StepModule(method, trainable), device_ids=ids)


__all__ = [
    "ONE_PROCESS",
    "Replicas",
    "data_parallel",
    "data_parallel_step",
    "replica_loader",
    "world_size_from_env",
]
