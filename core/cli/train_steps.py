"""The step-by-step training verbs on tile datasets: train-kd, pseudo-labels, train-cd.

The training verbs (these and those of `train_tags`) also run data-parallel under torchrun
(``torchrun --nproc-per-node N --no-python kdmsi train-cd ...``): `data_parallel_run` starts
the process group around the verb's body, and only the main process shows the bar.
"""

from __future__ import annotations

import argparse
from contextlib import AbstractContextManager
from pathlib import Path

from .common import (
    WEIGHTS_HELP,
    _check_weights_file,
    _common_options,
    _floats,
    _recipe_options,
    _report_options,
    _report_path,
    _threshold,
    backbone_help,
    run_with_bar,
)


def data_parallel_run(args) -> AbstractContextManager:
    """The verb's `kdmsi.training.distributed.Replicas`: one process, or under torchrun the
    process group (``--dist-backend``, ``--device``), waited on and ended on the way out."""
    from ..training.distributed import data_parallel

    return data_parallel(args.dist_backend, args.device)


def run_on_replica(replicas, description: str, fn, *args, **kwargs):
    """``fn(*args, replicas=replicas, **kwargs)`` with the progress bar on the main process,
    and without one on the others (one bar per run, not one per process)."""
    if replicas.is_main:
        return run_with_bar(description, fn, *args, replicas=replicas, **kwargs)
    return fn(*args, progress=None, replicas=replicas, **kwargs)


def dist_backend_option(p: argparse.ArgumentParser) -> None:
    """``--dist-backend`` of the training verbs (used only under torchrun)."""
    from ..options import DIST_BACKENDS

    p.add_argument(
        "--dist-backend",
        choices=DIST_BACKENDS,
        default="auto",
        help="process-group backend under torchrun: auto (nccl on CUDA, else gloo), gloo, nccl",
    )


def cmd_train_kd(args) -> int:
    from ..training import KDConfig
    from ..training.folder_steps import train_kd_on_folder

    out = Path(args.out)  # checked with the report folder by train_kd_on_folder, up front
    report_dir = _report_path(args, out)
    _check_weights_file(args)
    config = KDConfig(
        backbone=args.backbone,
        fusion=args.fusion,
        weights=args.weights,
        head=args.cam_head,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        frozen_stages=args.frozen_stages,
        kd_weight=args.kd_weight,
        holdout_fraction=args.holdout,
        seed=args.seed,
        device=args.device,
    )
    with data_parallel_run(args) as replicas:
        run_on_replica(
            replicas, "train-kd", train_kd_on_folder, args.data, out, config,
            tile_size=args.tile_size, bands=args.bands, val=args.val, report_dir=report_dir,
            overwrite=args.overwrite,
        )  # fmt: skip
    return 0


def cmd_pseudo_labels(args) -> int:
    from ..training.folder_steps import pseudo_labels_from_model

    run_with_bar(
        "pseudo-labels", pseudo_labels_from_model, args.model, args.data, args.out,
        threshold=_threshold(args.threshold), scales=_floats(args.scales),
        flip=not args.no_flip, feature_vote=args.feature_vote, device=args.device,
        batch_size=args.batch_size, overwrite=args.overwrite,
    )  # fmt: skip
    return 0


def cmd_train_cd(args) -> int:
    from ..training import CDConfig
    from ..training.folder_steps import train_detector_on_folder

    out = Path(args.out)  # checked with the report folder by train_detector_on_folder
    report_dir = _report_path(args, out)
    _check_weights_file(args)
    config = CDConfig(
        backbone=args.backbone,
        weights=args.weights,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        frozen_stages=args.frozen_stages,
        seed=args.seed,
        device=args.device,
    )
    with data_parallel_run(args) as replicas:
        run_on_replica(
            replicas, "train-cd", train_detector_on_folder, args.data, args.labels, out, config,
            tile_size=args.tile_size, bands=args.bands, val=args.val, report_dir=report_dir,
            overwrite=args.overwrite,
        )  # fmt: skip
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add train-kd, pseudo-labels and train-cd to the `kdmsi` subcommands."""
    from .. import recipe
    from ..choices import BACKBONES, CAM_HEADS, DEFAULT_BACKBONE, DETECTOR_BACKBONES, FUSIONS

    p = sub.add_parser("train-kd", help="train teacher + student on image-level labels")
    p.add_argument("--data", required=True, help="dataset folder with A/, B/, label/ or labels.csv")
    p.add_argument("--val", help="validation dataset with pixel masks (model selection by IoU)")
    p.add_argument("--out", required=True, help="model file to write (.kdmsi)")
    p.add_argument(
        "--backbone", choices=BACKBONES, default=DEFAULT_BACKBONE, help=backbone_help(BACKBONES)
    )
    p.add_argument("--fusion", choices=FUSIONS, default="abs")
    p.add_argument("--cam-head", choices=CAM_HEADS, default=recipe.CAM_HEAD)
    p.add_argument("--weights", default=recipe.WEIGHTS, help=WEIGHTS_HELP)
    p.add_argument("--epochs", type=int, default=recipe.KD_EPOCHS)
    p.add_argument("--batch-size", type=int, default=recipe.BATCH_SIZE)
    p.add_argument("--lr", type=float, default=recipe.KD_LR)
    _recipe_options(p)
    p.add_argument("--kd-weight", type=float, default=10.0, help="lambda of L_cls + lambda L_kd")
    p.add_argument("--holdout", type=float, default=0.1, help="held-out share without --val")
    p.add_argument("--seed", type=int, default=0)
    _common_options(p)
    dist_backend_option(p)
    _report_options(p)
    p.set_defaults(func=cmd_train_kd)

    p = sub.add_parser("pseudo-labels", help="MSI pseudo labels from a KD model")
    p.add_argument("--model", required=True, help="KD model file from train-kd")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="output folder (label/ + pseudo_labels.json)")
    p.add_argument("--threshold", default="auto", help="auto, otsu, unchanged-quantile, or 0..1")
    p.add_argument(
        "--feature-vote",
        type=float,
        default=recipe.FEATURE_VOTE,
        help="weight of the pretrained features' vote, 0..1 (0: MSI alone, as in the paper)",
    )
    p.add_argument("--scales", default="0.5,1,1.5,2")
    p.add_argument("--no-flip", action="store_true")
    p.add_argument("--batch-size", type=int, default=4)
    _common_options(p, tile=False)
    p.set_defaults(func=cmd_pseudo_labels)

    p = sub.add_parser("train-cd", help="train the Siamese DeepLabV3+ detector on pseudo labels")
    p.add_argument("--data", required=True)
    p.add_argument("--labels", required=True, help="label folder (e.g. pseudo/label)")
    p.add_argument("--val", help="validation dataset with pixel masks")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--backbone",
        choices=DETECTOR_BACKBONES,
        default=DEFAULT_BACKBONE,
        help=backbone_help(DETECTOR_BACKBONES),
    )
    p.add_argument("--weights", default=recipe.WEIGHTS, help=WEIGHTS_HELP)
    p.add_argument("--epochs", type=int, default=recipe.CD_EPOCHS)
    p.add_argument("--batch-size", type=int, default=recipe.BATCH_SIZE)
    p.add_argument("--lr", type=float, default=recipe.CD_LR)
    _recipe_options(p)
    p.add_argument("--seed", type=int, default=0)
    _common_options(p)
    dist_backend_option(p)
    _report_options(p)
    p.set_defaults(func=cmd_train_cd)
