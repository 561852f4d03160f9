"""`make demo`: the whole KD-MSI chain on built-in synthetic scenes, on CPU, in minutes.

Steps (each one the `kdmsi` CLI, run in-process): synthetic train/test tile sets ->
train-kd -> pseudo-labels -> train-cd -> evaluate --ablation. It ends with the ablation table
(teacher CAM, student, student + MI, student + MSI, pseudo labels, final detector) on held-out
scenes in `<out>/ablation/`, plus the pseudo labels against the training truth; the training
report (loss curves, threshold, sample tiles) is `<out>/report/index.html`, the KD step's own
report `<out>/kd_report/index.html`, and the timings `<out>/demo_metrics.json`.

The networks are the default recipe's (`kdmsi.recipe`): EfficientNet-Lite0 trunks that start
from the ImageNet weights installed with kdmsi (offline), trained on a CPU in minutes.
``--weights none`` shows what the same chain learns from random weights.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from . import recipe
from .choices import DEFAULT_BACKBONE
from .cli import main as kdmsi

DEMO_SCENES = 12
"""Training scenes (16 tiles of 128 px each). With 6, the KD networks saw too few tiles to
localise (student 18 %, detector 34 % IoU on the held-out scenes); with 12 the student reaches
34 % and the detector 70 % (README, "make demo"), in 5.5 to 7 minutes on 2 cores."""
HELD_OUT_SEED_OFFSET = 999
DEMO_MARKER = ".kdmsi-demo"
"""Written first into the demo's folder: a later run replaces only a folder that has it (or
an earlier demo's ``demo_metrics.json``), never somebody's files."""


def check_demo_arguments(out: Path, scenes: int, seed: int) -> None:
    """Raise ValueError (one line) unless the scene count and seed can be drawn and ``out`` is
    absent, empty, or an earlier demo's folder (which the demo replaces)."""
    if not 1 <= scenes < HELD_OUT_SEED_OFFSET:
        raise ValueError(f"--scenes must be 1..{HELD_OUT_SEED_OFFSET - 1}, got {scenes}")
    if seed < 0:
        raise ValueError(f"--seed must be 0 or more, got {seed}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; give a folder for the demo's outputs")
    earlier = (out / DEMO_MARKER).is_file() or (out / "demo_metrics.json").is_file()
    if out.is_dir() and any(out.iterdir()) and not earlier:
        raise ValueError(
            f"{out} holds other files and the demo replaces its folder; give a new or empty one"
        )


def _step(title: str, argv: list[str], timings: dict) -> None:
    print(f"\n== {title}\n$ kdmsi {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    status = kdmsi(argv)
    timings[title] = round(time.perf_counter() - start, 1)
    if status != 0:
        raise SystemExit(status)


def run_demo(
    out: Path,
    scenes: int = DEMO_SCENES,
    scene_size: int = 512,
    tile_size: int = 128,
    kd_epochs: int = recipe.KD_EPOCHS,
    cd_epochs: int = recipe.CD_EPOCHS,
    backbone: str = DEFAULT_BACKBONE,
    weights: str = recipe.WEIGHTS,
    seed: int = 1,
) -> dict:
    """Run the chain into `out` (replaced when an earlier demo's, `check_demo_arguments`) and
    return {'timings_s', 'settings'}.

    The training scenes have seeds ``seed`` .. ``seed + scenes - 1``, the two held-out scenes
    ``seed + HELD_OUT_SEED_OFFSET`` and the next one.
    """
    check_demo_arguments(out, scenes, seed)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / DEMO_MARKER).write_text("written by python -m kdmsi.demo\n")
    train, test = out / "train", out / "test"
    kd, cd, pseudo = out / "kd.kdmsi", out / "detector.kdmsi", out / "pseudo"
    size, tile = ["--size", str(scene_size)], ["--tile-size", str(tile_size)]
    extra = ["--weights", weights]
    timings: dict[str, float] = {}
    start = time.perf_counter()
    _step(
        "synthetic training scenes",
        ["synth", "--out", str(train), "--scenes", str(scenes), "--seed", str(seed), *size, *tile],
        timings,
    )
    _step(
        "synthetic held-out scenes",
        [
            "synth",
            "--out",
            str(test),
            "--scenes",
            "2",
            "--seed",
            str(seed + HELD_OUT_SEED_OFFSET),
            *size,
            *tile,
        ],
        timings,
    )
    _step(
        "teacher + student (KD)",
        [
            "train-kd",
            "--data",
            str(train),
            "--out",
            str(kd),
            "--backbone",
            backbone,
            "--epochs",
            str(kd_epochs),
            *tile,
            *extra,
        ],
        timings,
    )
    _step(
        "MSI pseudo labels",
        ["pseudo-labels", "--model", str(kd), "--data", str(train), "--out", str(pseudo)],
        timings,
    )
    _step(
        "Siamese DeepLabV3+ on pseudo labels",
        [
            "train-cd",
            "--data",
            str(train),
            "--labels",
            str(pseudo / "label"),
            "--out",
            str(cd),
            "--backbone",
            backbone,
            "--epochs",
            str(cd_epochs),
            "--report",
            str(out / "report"),
            *tile,
            *extra,
        ],
        timings,
    )
    _step(
        "ablation on held-out scenes",
        [
            "evaluate",
            "--ablation",
            "--model",
            str(kd),
            "--model",
            str(cd),
            "--data",
            str(test),
            "--out",
            str(out / "ablation"),
        ],
        timings,
    )
    _step(
        "pseudo labels against the training truth",
        [
            "evaluate",
            "--data",
            str(train),
            "--pseudo-labels",
            str(pseudo / "label"),
        ],
        timings,
    )
    timings["total"] = round(time.perf_counter() - start, 1)
    summary = {
        "timings_s": timings,
        "settings": {
            "scenes": scenes,
            "scene_size": scene_size,
            "tile_size": tile_size,
            "kd_epochs": kd_epochs,
            "cd_epochs": cd_epochs,
            "backbone": backbone,
            "weights": weights,
            "seed": seed,
        },
    }
    (out / "demo_metrics.json").write_text(json.dumps(summary, indent=2))
    print(f"\nDemo finished in {timings['total']:.0f} s; outputs in {out}", flush=True)
    print(f"Training report: {(out / 'report' / 'index.html').resolve()}", flush=True)
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kdmsi.demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", default="demo_out", type=Path)
    parser.add_argument("--scenes", type=int, default=DEMO_SCENES, help="training scenes")
    parser.add_argument("--scene-size", type=int, default=512)
    parser.add_argument("--tile-size", type=int, default=128)
    parser.add_argument("--kd-epochs", type=int, default=recipe.KD_EPOCHS)
    parser.add_argument("--cd-epochs", type=int, default=recipe.CD_EPOCHS)
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    parser.add_argument(
        "--weights", default=recipe.WEIGHTS, help="imagenet (default), none, or a local .pth"
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="seed of the first training scene (another draw)"
    )
    args = parser.parse_args(argv)
    try:
        check_demo_arguments(args.out, args.scenes, args.seed)
    except ValueError as exc:
        parser.error(str(exc))
    run_demo(
        args.out,
        args.scenes,
        args.scene_size,
        args.tile_size,
        args.kd_epochs,
        args.cd_epochs,
        args.backbone,
        weights=args.weights,
        seed=args.seed,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
