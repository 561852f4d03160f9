"""The training section of `bench/scale_out.py`: `kdmsi train-cd` in one process and under
torchrun with 1 and 2 processes (gloo, CPU), the all-reduce's share and the DDP equality check.

Per configuration the command runs twice, with 1 and with ``EPOCHS`` epochs; the difference of
the two wall times over ``EPOCHS - 1`` is the seconds of one epoch of the training loop, free
of process start, imports, model building, threshold calibration and saving. All runs keep the
global batch (``GLOBAL_BATCH`` tiles per optimiser step: per-rank batch = global / ranks), so
every configuration takes the same optimiser steps and TN measures the same work.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TILE, SCENES, SCENE_SIZE = 128, 6, 512  # 96 tiles of 128 px
GLOBAL_BATCH, EPOCHS = 8, 4
ALLREDUCE_REPEATS = 20


def _command(data: Path, out: Path, epochs: int, batch: int) -> list[str]:
    return [
        "train-cd", "--data", str(data), "--labels", str(data / "label"), "--out", str(out),
        "--epochs", str(epochs), "--batch-size", str(batch), "--tile-size", str(TILE),
        "--no-report", "--device", "cpu", "--overwrite",
    ]  # fmt: skip


def _wall(prefix: list[str], args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    run = subprocess.run(prefix + args, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(prefix + args)} failed:\n{run.stderr[-2000:]}")
    return time.perf_counter() - start


def _epoch_seconds(prefix: list[str], data: Path, out: Path, batch: int, env: dict) -> float:
    short = _wall(prefix, _command(data, out, 1, batch), env)
    long = _wall(prefix, _command(data, out, EPOCHS, batch), env)
    return (long - short) / (EPOCHS - 1)


def _trainable_parameters() -> int:
    """Trainable parameters of the detector train-cd builds (the all-reduced gradients)."""
    from kdmsi import recipe
    from kdmsi.models import SiameseDeepLabV3Plus
    from kdmsi.training.common import freeze_stages

    model = SiameseDeepLabV3Plus(
        "efficientnet_lite0", 3, None, head_channels=recipe.DETECTOR_HEAD_CHANNELS
    )
    freeze_stages(model.trunk, None)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _allreduce_rank(rank: int, port: int, numel: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    grads = torch.randn(numel)
    dist.all_reduce(grads)  # warm-up: connections
    start = time.perf_counter()
    for _ in range(ALLREDUCE_REPEATS):
        dist.all_reduce(grads)
    seconds = (time.perf_counter() - start) / ALLREDUCE_REPEATS
    if rank == 0:
        Path(out).write_text(str(seconds))
    dist.destroy_process_group()


def _allreduce_seconds(numel: int, folder: Path) -> float:
    import torch.multiprocessing as mp

    sys.path.insert(0, str(REPO / "tests" / "training"))
    from test_distributed import _free_port

    out = folder / "allreduce.txt"
    mp.spawn(_allreduce_rank, args=(_free_port(), numel, str(out)), nprocs=2, join=True)
    return float(out.read_text())


def _parity(folder: Path) -> dict[str, float]:
    """`tests/training/test_distributed.py`'s check: one step on 2 ranks x batch B against 1
    rank x batch 2B, max |weight difference| per method."""
    import torch
    import torch.multiprocessing as mp

    sys.path.insert(0, str(REPO / "tests" / "training"))
    from test_distributed import (
        ONE_PROCESS,
        TILES,
        _free_port,
        _max_diff,
        _parity_rank,
        one_step,
    )

    mp.spawn(_parity_rank, args=(_free_port(), str(folder)), nprocs=2, join=True)
    ranks = torch.load(folder / "rank0.pt")
    return {k: _max_diff(ranks[k], one_step(k, ONE_PROCESS, TILES)) for k in ("detector", "kd")}


def train_section(workdir: Path) -> dict[str, Any]:
    from kdmsi.data.synthetic import write_synthetic_dataset

    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "data"
    if not (data / "label").is_dir():
        write_synthetic_dataset(data, SCENES, SCENE_SIZE, TILE, overwrite=True)
    tiles = len(list((data / "A").iterdir()))
    kdmsi = str(Path(sys.executable).with_name("kdmsi"))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    one_thread = {**env, "OMP_NUM_THREADS": "1"}
    ranks = [[*torchrun, "--nproc-per-node", str(n), "--no-python", kdmsi] for n in (1, 2)]
    runs = [
        ("kdmsi train-cd, one process (every core)", 1, [kdmsi], env),
        ("torchrun, 1 process (1 thread)", 1, ranks[0], one_thread),
        ("torchrun, 2 processes (1 thread each)", 2, ranks[1], one_thread),
    ]
    rows = []
    for label, ranks, prefix, run_env in runs:
        seconds = _epoch_seconds(prefix, data, workdir / "cd.kdmsi", GLOBAL_BATCH // ranks, run_env)
        rows.append({"run": label, "processes": ranks, "epoch_s": seconds})
    steps = tiles // GLOBAL_BATCH
    numel = _trainable_parameters()
    allreduce = _allreduce_seconds(numel, workdir)
    parity = _parity(workdir)
    return {
        "rows": rows,
        "tiles": tiles,
        "steps": steps,
        "numel": numel,
        "allreduce_s": allreduce,
        "parity": parity,
    }


def train_table(result: dict[str, Any]) -> str:
    rows, steps, tiles = result["rows"], result["steps"], result["tiles"]
    t1 = rows[1]["epoch_s"]
    lines = [
        f"Training, `kdmsi train-cd` on {tiles} synthetic tiles of {TILE} px, EfficientNet-Lite0 "
        f"detector (ImageNet), global batch {GLOBAL_BATCH} ({steps} optimiser steps per epoch), "
        "gloo on CPU; one epoch of the loop (start, imports and saving excluded):",
        "",
        "| run | processes | s per epoch | steps/s | tiles/s | scaling efficiency T1 / (N x TN) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        efficiency = f"{t1 / (r['processes'] * r['epoch_s']):.2f}" if r is not rows[0] else "-"
        lines.append(
            f"| {r['run']} | {r['processes']} | {r['epoch_s']:.2f} | {steps / r['epoch_s']:.2f} | "
            f"{tiles / r['epoch_s']:.1f} | {efficiency} |"
        )
    share = result["allreduce_s"] * steps / rows[2]["epoch_s"]
    parity = result["parity"]
    verdict = "PASS" if max(parity.values()) <= 1e-5 else "FAIL"
    lines += [
        "",
        f"All-reduce: {result['numel']:,} trainable gradients, {1000 * result['allreduce_s']:.1f} "
        f"ms per gloo all-reduce on 2 processes = {100 * share:.1f} % of the 2-process epoch.",
        "",
        "Equality (one step on 2 ranks x batch 2 vs 1 rank x batch 4, max |weight difference|): "
        + ", ".join(f"{k} {v:.1e}" for k, v in parity.items())
        + f" (<= 1e-5) -> {verdict}",
    ]
    return "\n".join(lines)
