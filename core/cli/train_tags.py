"""The training verbs past the step-by-step chain: train (the whole chain from a tile layer
tagged changed 1/0) and train-hicd (the quality-robust student that `train --quality-robust`
also makes)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from .common import (
    WEIGHTS_HELP,
    _check_new_file,
    _check_weights_file,
    _common_options,
    _dataset,
    _norm,
    _recipe_options,
    _report_dir,
    _report_options,
    _threshold,
    backbone_help,
    log,
)
from .train_steps import data_parallel_run, dist_backend_option, run_on_replica


def detector_weights(weights: Optional[str], backbone: str, detector_backbone: str):
    """The detector's --weights: a weight file is made for --backbone only, so a different
    detector backbone starts from its ImageNet weights instead; names apply to both."""
    if detector_backbone != backbone and weights and Path(weights).is_file():
        return "imagenet"
    return weights


def cmd_train(args) -> int:
    from ..training import CDConfig, KDConfig
    from ..training.from_tags import TagTrainingConfig, train_from_tags

    detector_backbone = args.detector_backbone or args.backbone
    config = TagTrainingConfig(
        tile_size=args.tile_size,
        bands=args.bands,
        threshold=_threshold(args.threshold),
        quality_robust=args.quality_robust,
        warm_start=tuple(args.warm_start or ()),
        feature_vote=args.feature_vote,
        kd=KDConfig(
            backbone=args.backbone,
            fusion=args.fusion,
            weights=args.weights,
            head=args.cam_head,
            epochs=args.kd_epochs,
            batch_size=args.batch_size,
            optimizer=args.optimizer,
            lr=args.kd_lr,
            frozen_stages=args.frozen_stages,
            seed=args.seed,
            device=args.device,
        ),
        cd=CDConfig(
            backbone=detector_backbone,
            weights=detector_weights(args.weights, args.backbone, detector_backbone),
            epochs=args.cd_epochs,
            batch_size=args.batch_size,
            optimizer=args.optimizer,
            lr=args.cd_lr,
            frozen_stages=args.frozen_stages,
            seed=args.seed,
            device=args.device,
        ),
    )
    report_dir = _report_dir(args, Path(args.out))
    _check_weights_file(args)
    with data_parallel_run(args) as replicas:
        summary = run_on_replica(
            replicas,
            "train",
            train_from_tags,
            args.before,
            args.after,
            args.tiles,
            args.out,
            config,
            overwrite=args.overwrite,
            report_dir=report_dir,
            kd_out=args.kd_model,
        )
    log.info(
        "saved %s: %d changed / %d unchanged tiles, pseudo-label threshold %.3f (%s); trunk "
        "weights: teacher and student %s, detector %s",
        args.out,
        summary["tags"]["changed"],
        summary["tags"]["not_changed"],
        summary["pseudo_labels"]["threshold"]["value"],
        summary["pseudo_labels"]["threshold"]["method"],
        summary["weights"]["kd"],
        summary["weights"]["detector"],
    )
    return 0


def cmd_train_hicd(args) -> int:
    out = Path(args.out)
    _check_new_file(out, args.overwrite)
    with data_parallel_run(args) as replicas:
        return _train_hicd(args, out, replicas)


def _train_hicd(args, out: Path, replicas) -> int:
    """train-hicd's body: on every process of a data-parallel run, the main one writing."""
    from ..losses.hicd import HiCDLossConfig
    from ..models.checkpoint import load_checkpoint, save_detector
    from ..training import HiCDConfig, train_hicd

    teacher, meta = load_checkpoint(args.teacher)
    if meta["kind"] != "detector":
        raise ValueError(
            f"{args.teacher} is a {meta['kind']} model; --teacher needs a detector "
            "(from `kdmsi train-cd` or `kdmsi train`)"
        )
    args.tile_size = args.tile_size or meta["tile_size"]
    labels = Path(args.labels) if args.labels else None
    norm = _norm(meta)
    train = _dataset(args, args.data, label_dir=labels, bands=meta["bands"], normalisation=norm)
    if not train.has_masks:
        missing = [n for n, m in train.masks.items() if m is None][:5]
        raise ValueError(
            f"{args.data}: no mask for {missing}; give --labels (e.g. pseudo/label from "
            "`kdmsi pseudo-labels`) or a dataset with label/"
        )
    val = _dataset(args, args.val, bands=meta["bands"], normalisation=norm) if args.val else None
    loss = HiCDLossConfig(
        stages=tuple(s for s in args.stages.split(",") if s),
        use_self=not args.no_self,
        use_cross=not args.no_cross,
        use_cfd=not args.no_cfd,
        use_global=not args.no_global,
        distance=args.distance,
        tau=args.tau,
        lambda_sfd=args.lambda_sfd,
        lambda_cfd=args.lambda_cfd,
        lambda_global=args.lambda_global,
        global_pixels=args.global_pixels,
        queue_size=args.queue_size,
    )
    config = HiCDConfig(
        method=args.method,
        preset=args.preset,
        init=args.init,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        lambda_feat=args.lambda_feat,
        loss=loss,
        seed=args.seed,
        degrade_seed=args.seed,
        device=args.device,
    )
    result = run_on_replica(
        replicas, "train-hicd", train_hicd, teacher, train, config, val_dataset=val
    )
    if not replicas.is_main:
        return 0
    training = {
        "hicd": {
            "config": result.config,
            "history": result.history,
            "selection": result.selection,
        },
        "teacher": {"path": str(Path(args.teacher).resolve()), "training": meta.get("training")},
        "tiles": len(train),
        "dataset": str(Path(args.data).resolve()),
        "labels": str(labels.resolve()) if labels else None,
    }
    save_detector(
        out,
        result.model,
        train.bands,
        train.normalisation,
        args.tile_size,
        training,
        quality_robust=True,
        method=args.method,
    )
    sel = result.selection
    log.info(
        "saved quality-robust %s (%s, preset %s; epoch %s by %s)",
        out,
        args.method,
        args.preset,
        sel["epoch"],
        sel["criterion"],
    )
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add train and train-hicd to the `kdmsi` subcommands."""
    from .. import recipe
    from ..choices import BACKBONES, CAM_HEADS, DEFAULT_BACKBONE, DETECTOR_BACKBONES, FUSIONS

    p = sub.add_parser("train", help="train a detector from a tile layer tagged changed 1/0")
    p.add_argument("--before", required=True, help="before raster")
    p.add_argument("--after", required=True, help="after raster")
    p.add_argument("--tiles", required=True, help="tile layer with field changed (1/0/empty)")
    p.add_argument("--out", required=True, help="model file to write (.kdmsi)")
    p.add_argument("--kd-model", help="also keep the teacher and student (a KD model file, .kdmsi)")
    p.add_argument(
        "--backbone", choices=BACKBONES, default=DEFAULT_BACKBONE, help=backbone_help(BACKBONES)
    )
    p.add_argument(
        "--detector-backbone",
        choices=DETECTOR_BACKBONES,
        default=None,
        help="the detector's backbone (default: --backbone); " + backbone_help(DETECTOR_BACKBONES),
    )
    p.add_argument("--fusion", choices=FUSIONS, default="abs")
    p.add_argument("--cam-head", choices=CAM_HEADS, default=recipe.CAM_HEAD)
    p.add_argument("--weights", default=recipe.WEIGHTS, help=WEIGHTS_HELP)
    p.add_argument("--kd-epochs", type=int, default=recipe.KD_EPOCHS)
    p.add_argument("--cd-epochs", type=int, default=recipe.CD_EPOCHS)
    p.add_argument("--batch-size", type=int, default=recipe.BATCH_SIZE)
    p.add_argument("--kd-lr", type=float, default=recipe.KD_LR)
    p.add_argument("--cd-lr", type=float, default=recipe.CD_LR)
    _recipe_options(p)
    p.add_argument("--threshold", default="auto", help="pseudo-label threshold: auto or 0..1")
    p.add_argument(
        "--feature-vote",
        type=float,
        default=recipe.FEATURE_VOTE,
        help="weight of the pretrained features' vote in the pseudo labels, 0..1 (0: the "
        "student's MSI alone, as in the paper)",
    )
    p.add_argument(
        "--quality-robust",
        action="store_true",
        help="the two images differ in quality: also train a quality-robust student by "
        "feature distillation from the detector (see train-hicd)",
    )
    p.add_argument(
        "--warm-start",
        nargs="+",
        metavar="MODEL",
        help="re-run as tags are added: start from an earlier run's --out (the detector) "
        "and/or --kd-model (teacher and student) instead of ImageNet",
    )
    p.add_argument("--seed", type=int, default=0)
    _common_options(p)
    dist_backend_option(p)
    p.set_defaults(tile_size=None)  # the tagged tiles' own size (`read_tagged_windows`)
    _report_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "train-hicd",
        help="train a quality-robust detector (feature-MSE distillation by default, or HiCD) "
        "from a detector trained on clean pairs",
    )
    p.add_argument("--teacher", required=True, help="detector model file (train-cd, train)")
    p.add_argument("--data", required=True, help="dataset folder with A/, B/ (clean pairs)")
    p.add_argument("--labels", help="label folder (e.g. pseudo/label); default data/label")
    p.add_argument("--val", help="validation dataset with pixel masks (model selection by IoU)")
    p.add_argument("--out", required=True, help="model file to write (.kdmsi)")
    p.add_argument(
        "--method",
        choices=("feature-mse", "hicd", "direct"),
        default="feature-mse",
        help="distillation from the teacher (bench/results/hicd.md compares them)",
    )
    p.add_argument(
        "--preset",
        choices=("resolution", "single", "multi"),
        default="multi",
        help="degradation of the after images (see kdmsi.training.degrade)",
    )
    p.add_argument(
        "--init",
        choices=("teacher", "imagenet", "random"),
        default="teacher",
        help="start from the teacher, or a new network with an ImageNet or random trunk",
    )
    p.add_argument("--epochs", type=int, default=recipe.CD_EPOCHS)
    p.add_argument("--batch-size", type=int, default=recipe.BATCH_SIZE)
    p.add_argument("--lr", type=float, default=recipe.CD_LR, help="AdamW, as the detector")
    p.add_argument("--stages", default="low,high", help="encoder stages for SFD: low,high")
    p.add_argument("--no-self", action="store_true", help="drop the self-correlation term")
    p.add_argument("--no-cross", action="store_true", help="drop the cross-correlation term")
    p.add_argument("--no-cfd", action="store_true", help="drop change feature distillation")
    p.add_argument("--no-global", action="store_true", help="drop the global correlation term")
    p.add_argument("--distance", choices=("mse", "kl"), default="mse")
    p.add_argument("--tau", type=float, default=0.1, help="temperature of --distance kl")
    p.add_argument("--lambda-sfd", type=float, default=15.0)
    p.add_argument("--lambda-cfd", type=float, default=1.5)
    p.add_argument("--lambda-global", type=float, default=3.0)
    p.add_argument("--lambda-feat", type=float, default=3.0, help="weight of --method feature-mse")
    p.add_argument("--global-pixels", type=int, default=16, help="sampled pixels per image")
    p.add_argument("--queue-size", type=int, default=1024, help="teacher embeddings kept")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tile-size", type=int, default=None, help="default: the teacher's")
    _common_options(p, tile=False)
    dist_backend_option(p)
    p.set_defaults(func=cmd_train_hicd)
