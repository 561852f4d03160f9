"""Training cost per tile pair of each backbone, for
`kdmsi.runtime.speed.expected_training_seconds`.

Times, on random 256 px tiles with the default recipe (`kdmsi.recipe`: frozen early stages,
frozen batch norms, channels-last, AdamW): one KD step (teacher + student, shared frozen
prefix), one MSI pass (4 scales x 2 flips, as the pseudo labels run it) and one detector step,
each per tile pair (batch 8, best of ``--repeats``). The figures of 2 quiet cores are kept in
`kdmsi.runtime.speed.REFERENCE_TRAIN_SECONDS`; print them again with this script after a change.

``--tagged N`` instead times the whole `kdmsi train` at its defaults, in a child process, on
a synthetic georeferenced pair cut into a grid of N tiles of ``--tile`` px (`kdmsi tile-grid`),
every tile tagged from the scene's truth (changed when >= 0.5 % of it changed): the figure the
README gives for "100 tagged 256 px tiles".

Usage::

    .venv/bin/python bench/train_speed.py [--backbones efficientnet_lite0,resnet18] [--tile 256]
    .venv/bin/python bench/train_speed.py --tagged 100 [--workdir /tmp/kdmsi-train-time]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from kdmsi.choices import DETECTOR_BACKBONES


def _best(fn, repeats: int) -> float:
    fn()  # warm-up: kernel selection, allocator
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _detector_step(backbone: str, cd, x: torch.Tensor):
    """One training step of the recipe's detector on the batch ``x`` (a closure)."""
    from kdmsi.models import SiameseDeepLabV3Plus
    from kdmsi.training.common import freeze_stages, make_optimizer, set_train_mode

    detector = SiameseDeepLabV3Plus(
        backbone, head_channels=cd.head_channels, separable=cd.separable
    )
    freeze_stages(detector.trunk, cd.frozen_stages)
    detector.to(memory_format=torch.channels_last)
    set_train_mode(detector, cd.freeze_bn)
    optimizer = make_optimizer(detector.param_groups(cd.lr), cd.optimizer, 0.9, 1e-4)
    target = torch.randint(0, 2, (x.shape[0], x.shape[-2], x.shape[-1]))

    def step():
        loss = torch.nn.functional.cross_entropy(detector(x, x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def measure(backbone: str, tile: int, batch: int, repeats: int) -> dict[str, float]:
    """Seconds per tile pair: {'kd_step', 'msi', 'cd_step'}."""
    from kdmsi.inference.msi import multiscale_sigmoid_inference
    from kdmsi.losses.kd import kd_loss
    from kdmsi.models import SiameseCAMNet
    from kdmsi.models.batchnorm_fold import for_inference
    from kdmsi.training import CDConfig, KDConfig
    from kdmsi.training.common import make_optimizer, set_train_mode
    from kdmsi.training.kd import share_frozen_prefix
    from kdmsi.trunk_registry import TRUNKS

    torch.manual_seed(0)
    x = torch.randn(batch, 3, tile, tile).contiguous(memory_format=torch.channels_last)
    cd = CDConfig(backbone=backbone, weights=None)
    cd_step = _detector_step(backbone, cd, x)
    if TRUNKS[backbone].detector_only:  # no KD networks
        return {"cd_step": _best(cd_step, repeats) / batch}
    kd = KDConfig(backbone=backbone, weights=None)
    labels = torch.ones(batch)
    teacher = SiameseCAMNet(backbone, head=kd.head)
    student = SiameseCAMNet(backbone, head=kd.head)
    parts = share_frozen_prefix(teacher, student, kd.frozen_stages)
    for net in (teacher, student):
        net.to(memory_format=torch.channels_last)
        set_train_mode(net, kd.freeze_bn)
    groups = teacher.param_groups(kd.lr) + student.param_groups(kd.lr)
    optimizer = make_optimizer(groups, kd.optimizer, kd.momentum, kd.weight_decay)

    def kd_step():
        with torch.no_grad():
            state = teacher.start(x, x, parts)
        loss = kd_loss(teacher.forward_from(state), student.forward_from(state), labels)
        optimizer.zero_grad()
        loss["total"].backward()
        optimizer.step()

    folded = for_inference(copy.deepcopy(student).eval())  # as the pseudo labels run it
    one = x[:4]

    def msi():
        multiscale_sigmoid_inference(folded, one, one)

    return {
        "kd_step": _best(kd_step, repeats) / batch,
        "msi": _best(msi, repeats) / len(one),
        "cd_step": _best(cd_step, repeats) / batch,
    }


def end_to_end(tagged: int, tile: int, workdir: Path) -> float:
    """Wall seconds of `kdmsi train` (defaults) on ``tagged`` tagged tiles of ``tile`` px."""
    import math
    import subprocess
    import sys

    from osgeo import gdal, ogr

    from kdmsi.data.synthetic import make_scene

    side = math.isqrt(tagged)
    rows = math.ceil(tagged / side)
    workdir.mkdir(parents=True, exist_ok=True)
    scene = make_scene(rows * tile, side * tile, seed=3)
    paths = {name: workdir / f"{name}.tif" for name in ("before", "after")}
    for name, image in (("before", scene.pre), ("after", scene.post)):
        ds = gdal.GetDriverByName("GTiff").Create(
            str(paths[name]), image.shape[2], image.shape[1], image.shape[0], gdal.GDT_Byte
        )
        ds.SetGeoTransform(scene.geotransform)
        ds.SetProjection(scene.crs_wkt)
        ds.WriteRaster(0, 0, image.shape[2], image.shape[1], image.tobytes())
        ds = None
    cli = [sys.executable, "-m", "kdmsi.cli"]
    pair = ["--before", str(paths["before"]), "--after", str(paths["after"])]
    grid = workdir / "tiles.gpkg"
    subprocess.run(
        [
            *cli,
            "-q",
            "tile-grid",
            *pair,
            "--out",
            str(grid),
            "--tile-size",
            str(tile),
            "--overwrite",
        ],
        check=True,
    )
    source = ogr.Open(str(grid), update=1)
    layer = source.GetLayer(0)
    count = {0: 0, 1: 0}
    for feature in layer:
        r, c = feature["row"], feature["col"]
        share = scene.change[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile].mean()
        tag = int(share >= 0.005)
        if sum(count.values()) < tagged:
            feature.SetField("changed", tag)
            count[tag] += 1
            layer.SetFeature(feature)
    source = None
    print(f"{count[1]} changed and {count[0]} unchanged tiles of {tile} px", flush=True)
    out = ["--out", str(workdir / "model.kdmsi"), "--overwrite"]  # report too, as by default
    start = time.perf_counter()
    subprocess.run([*cli, "train", *pair, "--tiles", str(grid), *out], check=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default=",".join(DETECTOR_BACKBONES), help="default: all")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tagged", type=int, help="time `kdmsi train` on this many tiles")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/kdmsi-train-time"))
    args = parser.parse_args()
    if args.tagged:
        seconds = end_to_end(args.tagged, args.tile, args.workdir)
        print(f"kdmsi train, {args.tagged} tagged tiles of {args.tile} px: {seconds:.0f} s")
        return 0
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, tile {args.tile}")
    print("| backbone | KD step s/tile | MSI s/tile | detector step s/tile |")
    print("|---|---:|---:|---:|")
    found = {}
    for backbone in args.backbones.split(","):
        found[backbone] = f = measure(backbone, args.tile, args.batch, args.repeats)
        cells = [f"{f[k]:.3f}" if k in f else "–" for k in ("kd_step", "msi", "cd_step")]
        print(f"| {backbone} | " + " | ".join(cells) + " |", flush=True)
    print({k: {n: round(v, 3) for n, v in f.items()} for k, f in found.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
