"""`make demo`: the whole KD-MSI chain on built-in synthetic scenes, on CPU, in minutes.

Steps (each one the library function the matching `kdmsi` command calls, run in-process):
synthetic train/test tile sets -> train-kd -> pseudo-labels -> train-cd -> evaluate --ablation.
It ends with the ablation table (teacher CAM, student, student + MI, student + MSI, pseudo
labels, final detector) on held-out
scenes in `<out>/ablation/`, plus the pseudo labels against the training truth; the training
report (loss curves, threshold, sample tiles) is `<out>/report/index.html`, the KD step's own
report `<out>/kd_report/index.html`, and the timings `<out>/demo_metrics.json`.

The networks are the default recipe's (`kdmsi.recipe`): EfficientNet-Lite0 trunks that start
from the ImageNet weights installed with kdmsi (offline), trained on a CPU in minutes.
``--weights none`` shows what the same chain learns from random weights.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from . import recipe
from .choices import BACKBONES, DEFAULT_BACKBONE
from .cli.common import run_with_bar
from .cli.main import one_line
from .progress import Cancelled

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


def _step(title: str, timings: dict, fn, *args, **kwargs):
    """Run one step of the chain (a library function) with a progress bar, timed."""
    print(f"\n== {title}", flush=True)
    start = time.perf_counter()
    if "progress" in inspect.signature(fn).parameters:
        result = run_with_bar(title, fn, *args, **kwargs)
    else:
        result = fn(*args, **kwargs)
    timings[title] = round(time.perf_counter() - start, 1)
    return result


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
    ``seed + HELD_OUT_SEED_OFFSET`` and the next one. Each step is the library function the
    matching ``kdmsi`` command calls, with that command's defaults.
    """
    from .data.pairs import PairDataset
    from .data.synthetic import write_synthetic_dataset
    from .inference.maps import label_folder_metrics
    from .metrics.change import format_table
    from .reports.ablation import evaluate_ablation, format_ablation
    from .training import CDConfig, KDConfig
    from .training.folder_steps import (
        pseudo_labels_from_model,
        train_detector_on_folder,
        train_kd_on_folder,
    )

    check_demo_arguments(out, scenes, seed)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / DEMO_MARKER).write_text("written by python -m kdmsi.demo\n")
    train, test = out / "train", out / "test"
    kd, cd, pseudo = out / "kd.kdmsi", out / "detector.kdmsi", out / "pseudo"
    timings: dict[str, float] = {}
    start = time.perf_counter()
    _step(
        "synthetic training scenes", timings, write_synthetic_dataset, train, scenes,
        scene_size, tile_size, seed=seed,
    )  # fmt: skip
    _step(
        "synthetic held-out scenes", timings, write_synthetic_dataset, test, 2, scene_size,
        tile_size, seed=seed + HELD_OUT_SEED_OFFSET,
    )  # fmt: skip
    kd_config = KDConfig(backbone=backbone, weights=weights, epochs=kd_epochs)
    _step(
        "teacher + student (KD)", timings, train_kd_on_folder, train, kd, kd_config,
        tile_size=tile_size, report_dir=out / "kd_report",
    )  # fmt: skip
    _step(
        "MSI pseudo labels", timings, pseudo_labels_from_model, kd, train, pseudo,
        feature_vote=recipe.FEATURE_VOTE,
    )  # fmt: skip
    cd_config = CDConfig(backbone=backbone, weights=weights, epochs=cd_epochs)
    _step(
        "Siamese DeepLabV3+ on pseudo labels", timings, train_detector_on_folder, train,
        pseudo / "label", cd, cd_config, tile_size=tile_size, report_dir=out / "report",
    )  # fmt: skip
    rows = _step(
        "ablation on held-out scenes", timings, evaluate_ablation, [kd, cd], test,
        out / "ablation",
    )  # fmt: skip
    print(format_ablation(rows), flush=True)
    truth = PairDataset(train, tile_size=tile_size)
    rows = _step(
        "pseudo labels against the training truth", timings, label_folder_metrics, truth,
        pseudo / "label",
    )  # fmt: skip
    print(format_table({"pseudo-labels": rows}), flush=True)
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
    parser.add_argument(
        "--weights", default=recipe.WEIGHTS, help="imagenet (default), none, or a local .pth"
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="seed of the first training scene (another draw)"
    )
    parser.add_argument(
        "--backbone", default=DEFAULT_BACKBONE, choices=BACKBONES, help="the trunk of every network"
    )
    args = parser.parse_args(argv)
    try:
        check_demo_arguments(args.out, args.scenes, args.seed)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="kdmsi: %(message)s", force=True)
    try:
        run_demo(
            args.out, args.scenes, args.scene_size, args.tile_size, args.kd_epochs,
            args.cd_epochs, args.backbone, weights=args.weights, seed=args.seed,
        )  # fmt: skip
    except (Cancelled, KeyboardInterrupt):
        print("kdmsi demo: cancelled", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:  # the library's one-line errors, as the CLI shows them
        print(f"kdmsi demo: error: {one_line(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
