"""Data-parallel training (`kdmsi.training.distributed`) on CPU with gloo and 2 processes: one
step on 2 ranks x batch B is one step on batch 2B, a torchrun run of the CLI writes one model
file that detect runs, and a rank that dies leaves no output behind."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import Dataset

from kdmsi.models import SiameseCAMNet, SiameseDeepLabV3Plus
from kdmsi.training.cd import DetectorMethod
from kdmsi.training.common import cpu_state, freeze_stages, make_optimizer
from kdmsi.training.distributed import ONE_PROCESS, Replicas, data_parallel, replica_loader
from kdmsi.training.kd import KDMethod, share_frozen_prefix
from kdmsi.training.loop import LAST_EPOCH, run_epochs

HERE = Path(__file__).resolve().parent
TILES, SIZE = 4, 32
KINDS = ("detector", "kd", "detector-bn")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


class Tiles(Dataset):
    """Fixed random tile pairs with masks and image labels (no augmentation, so that a tile
    gives the same gradient on whichever rank reads it)."""

    def __init__(self, n: int = TILES):
        g = torch.Generator().manual_seed(1)
        self.pre = torch.randn(n, 3, SIZE, SIZE, generator=g)
        self.post = torch.randn(n, 3, SIZE, SIZE, generator=g)
        self.mask = (torch.rand(n, SIZE, SIZE, generator=g) > 0.7).long()
        self.label = torch.tensor([float(i % 2) for i in range(n)])

    def __len__(self) -> int:
        return len(self.pre)

    def __getitem__(self, i: int) -> dict:
        keys = ("pre", "post", "mask", "label")
        return dict(zip(keys, (self.pre[i], self.post[i], self.mask[i], self.label[i])))


def one_step(kind: str, replicas: Replicas, batch_size: int) -> list[dict]:
    """The weights after one epoch of one optimiser step of the detector or KD method, from a
    random init (the same on every rank, as DDP also makes it). ``detector``: every batch norm
    and dropout frozen; ``detector-bn``: the head's batch norms train on batch statistics."""
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    if kind.startswith("detector"):
        model = SiameseDeepLabV3Plus("efficientnet_lite0", 3, None, head_channels=32)
        freeze_stages(model.trunk, None)
        if kind == "detector":
            _pin_eval(model)
        groups = model.param_groups(0.01, 1.0)
        method = DetectorMethod(model, cpu, replicas=replicas)
    else:
        teacher, student = (SiameseCAMNet("efficientnet_lite0", "abs", 3, None) for _ in "ts")
        shared = share_frozen_prefix(teacher, student, None)
        groups = teacher.param_groups(0.01, 1.0) + student.param_groups(0.01, 1.0)
        method = KDMethod(teacher, student, shared, 10.0, cpu, replicas=replicas)
    optimizer = make_optimizer(groups, "sgd", 0.9, 0.0)
    generator = torch.Generator().manual_seed(0)
    loader = replica_loader(Tiles(), batch_size, generator, replicas, seed=0)
    run_epochs(method, loader, optimizer, epochs=1, criterion=LAST_EPOCH, replicas=replicas)
    return [cpu_state(net) for net in method.networks]


def _pin_eval(model: torch.nn.Module) -> None:
    """Every batch norm and dropout in eval mode whatever ``train()`` asks: a batch norm on
    batch statistics sees B tiles per rank, not 2B (DDP does not synchronise them), and ASPP's
    dropout draws its masks per rank, so parity holds with both frozen only."""
    for module in model.modules():
        if isinstance(module, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.Dropout)):
            module.train = types.MethodType(lambda self, mode=True: self, module)
            module.training = False


def _parity_rank(rank: int, port: int, out: str) -> None:
    """One of the two spawned processes: the environment torchrun would give, then one step
    of each method through `data_parallel`, the DDP path of `run_epochs`."""
    env = {"RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": 2, "LOCAL_WORLD_SIZE": 2}
    os.environ.update({k: str(v) for k, v in env.items()})
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    with data_parallel("gloo", "cpu") as replicas:
        assert replicas == Replicas(rank, 2)
        states = {kind: one_step(kind, replicas, TILES // 2) for kind in KINDS}
    torch.save(states, Path(out) / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _max_diff(a: list[dict], b: list[dict]) -> float:
    """The largest difference between the states of two lists of networks."""
    return max(
        float((x[k].double() - y[k].double()).abs().max())
        for x, y in zip(a, b)
        for k in x
        if x[k].numel()
    )


def test_two_ranks_of_batch_b_step_as_one_of_batch_2b(tmp_path):
    mp.spawn(_parity_rank, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for kind in KINDS:  # the replicas stay identical, running statistics too
        assert _max_diff(ranks[0][kind], ranks[1][kind]) == 0.0, kind
    for kind in ("detector", "kd"):
        reference = one_step(kind, ONE_PROCESS, TILES)
        assert _max_diff(ranks[0][kind], reference) <= 1e-5, kind
    torch.manual_seed(0)
    start = [cpu_state(SiameseDeepLabV3Plus("efficientnet_lite0", 3, None, head_channels=32))]
    assert _max_diff(ranks[0]["detector"], start) > 1e-4  # the step did move the weights


def test_fewer_tiles_than_ranks_times_batch_are_refused_in_one_line():
    with pytest.raises(ValueError) as caught:
        replica_loader(Tiles(3), 2, torch.Generator(), Replicas(1, 2), seed=0)
    message = str(caught.value)
    assert "\n" not in message and "3 training tiles" in message and "at least 4" in message
    assert len(replica_loader(Tiles(3), 2, torch.Generator(), ONE_PROCESS, 0).dataset) == 3


@pytest.fixture(scope="module")
def tiles(tmp_path_factory) -> Path:
    from kdmsi.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("dist") / "data", 1, 128, SIZE)


def _train_cd(data: Path, out: Path) -> list[str]:
    return [
        "train-cd", "--data", str(data), "--labels", str(data / "label"), "--out", str(out),
        "--weights", "none", "--epochs", "1", "--batch-size", "2", "--tile-size", str(SIZE),
        "--no-report", "--device", "cpu", "--dist-backend", "gloo",
    ]  # fmt: skip


def _libuv_missing() -> bool:
    """Whether this PyTorch lacks libuv (Debian 13's python3-torch 2.6): its torchrun then
    cannot start, as its rendezvous store asks for libuv whatever USE_LIBUV says."""
    from torch.distributed import TCPStore

    try:
        TCPStore("127.0.0.1", 0, is_master=True, use_libuv=True)
    except RuntimeError as exc:
        return "libuv" in str(exc)
    return False


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    if _libuv_missing():
        pytest.skip("this PyTorch is built without libuv: its torchrun cannot start")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        TORCHRUN + args, capture_output=True, text=True, timeout=180, env=env, cwd=HERE
    )


def test_torchrun_train_cd_writes_one_model_that_detect_runs(tiles, tmp_path):
    from detect_helpers import scene, write_raster

    from kdmsi.detect.with_model import detect_changes

    out = tmp_path / "out" / "cd.kdmsi"
    out.parent.mkdir()
    kdmsi = Path(sys.executable).with_name("kdmsi")
    run = _torchrun(["--no-python", str(kdmsi), *_train_cd(tiles, out)])
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(p.name for p in out.parent.iterdir()) == ["cd.kdmsi"]
    assert run.stderr.count("saved ") == 1  # rank 0 alone logs (and writes)
    pre, post = scene(64, 64)
    before = write_raster(tmp_path / "before.tif", pre)
    after = write_raster(tmp_path / "after.tif", post)
    result = detect_changes(before, after, out, tmp_path / "changes.gpkg", device="cpu")
    assert (tmp_path / "changes.gpkg").is_file() and result is not None


def test_a_rank_that_dies_fails_the_run_and_leaves_no_file(tiles, tmp_path):
    out = tmp_path / "out" / "cd.kdmsi"
    out.parent.mkdir()
    run = _torchrun([str(HERE / "dist_dying_rank.py"), *_train_cd(tiles, out)])
    assert run.returncode != 0
    assert re.search(r"rank\s*:\s*1\b", run.stderr + run.stdout), run.stderr[-3000:]
    assert re.search(r"exitcode\s*:\s*3\b", run.stderr + run.stdout)
    assert list(out.parent.iterdir()) == []  # no model file, no temporary file


class LabelledTiles(Tiles):
    """`Tiles` with the image labels pseudo labels need (masks all scored)."""

    @property
    def labels(self) -> list[int]:
        return [int(v) for v in self.label]


def _msi(replicas: Replicas) -> tuple:
    from kdmsi.inference.pseudo_labels import msi_pseudo_labels

    torch.manual_seed(0)
    student = SiameseCAMNet("efficientnet_lite0", "abs", 3, "imagenet")
    with torch.no_grad():  # the CAM head starts at zero (a flat map): give it a random one
        for module in student.modules():
            if isinstance(module, torch.nn.Conv2d) and module.out_channels == 1:
                module.weight.normal_(0.0, 1.0)
    return msi_pseudo_labels(
        student, LabelledTiles(7), "otsu", (1.0, 1.5), True, "cpu", 2, replicas=replicas
    )


def _msi_rank(rank: int, port: int, out: str) -> None:
    env = {"RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": 2, "LOCAL_WORLD_SIZE": 2}
    os.environ.update({k: str(v) for k, v in env.items()})
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    with data_parallel("gloo", "cpu") as replicas:
        masks, choice = _msi(replicas)
    torch.save({"masks": masks, "threshold": choice.value}, Path(out) / f"msi{rank}.pt")


def test_sharded_pseudo_labels_equal_one_process(tmp_path):
    """Each rank runs MSI on its shard (4 and 3 of 7 tiles); the gathered masks and the
    threshold from the summed histograms are those of one process."""
    mp.spawn(_msi_rank, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    masks, choice = _msi(ONE_PROCESS)
    assert sum(int((m == 1).sum()) for m in masks) > 0  # not an empty map: the order shows
    for rank in (0, 1):
        saved = torch.load(tmp_path / f"msi{rank}.pt", weights_only=False)
        assert saved["threshold"] == choice.value
        assert len(saved["masks"]) == len(masks) == 7
        assert all((a == b).all() for a, b in zip(saved["masks"], masks))


def test_a_verb_that_is_not_data_parallel_is_refused_under_torchrun(tmp_path, monkeypatch, capsys):
    from kdmsi.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    out = tmp_path / "labels"
    argv = ["pseudo-labels", "--model", "kd.kdmsi", "--data", "d", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "pseudo-labels runs in one process, not under torchrun" in err and "\n" not in err
    assert not out.exists()
