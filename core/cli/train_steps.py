"""The step-by-step training verbs on tile datasets: train-kd, pseudo-labels, train-cd."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import (
    WEIGHTS_HELP,
    _check_new_file,
    _check_weights_file,
    _common_options,
    _dataset,
    _floats,
    _norm,
    _recipe_options,
    _report_dir,
    _report_options,
    _run_with_bar,
    _threshold,
    log,
)


def cmd_train_kd(args) -> int:
    from ..inference.msi import pick_device
    from ..models.checkpoint import save_kd
    from ..reports.runs import kd_report
    from ..training import KDConfig, train_kd

    out = Path(args.out)
    _check_new_file(out, args.overwrite)
    report_dir = _report_dir(args, out)
    _check_weights_file(args)
    train = _dataset(args, args.data)
    val = _dataset(args, args.val, bands=train.bands) if args.val else None
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
    log.info(
        "KD training on %d tiles (%d changed, %d unchanged)",
        len(train),
        train.labels.count(1),
        train.labels.count(0),
    )
    result = _run_with_bar("train-kd", train_kd, train, config, val)
    save_kd(
        out,
        result,
        train.bands,
        train.normalisation,
        args.tile_size,
        {"tiles": len(train), "dataset": str(Path(args.data).resolve())},
    )
    sel = result.selection
    log.info(
        "saved %s (selected epoch %s by %s = %s)", out, sel["epoch"], sel["criterion"], sel["value"]
    )
    if report_dir is not None:
        kd_report(report_dir, train, result, pick_device(args.device), args.overwrite)
        log.info("training report: %s", report_dir / "index.html")
    return 0


def cmd_pseudo_labels(args) -> int:
    from ..inference.msi import pick_device
    from ..inference.pseudo_labels import generate_pseudo_labels
    from ..models.checkpoint import load_checkpoint

    device = pick_device(args.device)
    student, meta = load_checkpoint(args.model, role="student", device=device)
    if meta["kind"] != "kd":
        raise ValueError(f"{args.model} is a {meta['kind']} model; pseudo labels need a KD model")
    args.tile_size = meta["tile_size"]
    data = _dataset(args, args.data, bands=meta["bands"], normalisation=_norm(meta))
    summary = _run_with_bar(
        "pseudo-labels",
        generate_pseudo_labels,
        student,
        data,
        args.out,
        threshold=_threshold(args.threshold),
        scales=_floats(args.scales),
        flip=not args.no_flip,
        device=device,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        record={"kd_model": str(Path(args.model).resolve())},
        feature_vote=args.feature_vote,
    )
    log.info(
        "pseudo labels in %s: %s; %.1f%% of pixels changed",
        args.out,
        summary["threshold_description"],
        100 * summary["changed_pixel_fraction"],
    )
    return 0


def cmd_train_cd(args) -> int:
    from ..inference.msi import pick_device
    from ..models.checkpoint import save_detector, thin_steps
    from ..reports.runs import cd_report
    from ..training import CDConfig, train_detector
    from ..training.calibration import calibrated_threshold

    out = Path(args.out)
    _check_new_file(out, args.overwrite)
    report_dir = _report_dir(args, out)
    _check_weights_file(args)
    labels = Path(args.labels)
    train = _dataset(args, args.data, label_dir=labels)
    if not train.has_masks:
        missing = [n for n, m in train.masks.items() if m is None][:5]
        raise ValueError(f"{labels} lacks label images for {missing}; run `kdmsi pseudo-labels`")
    val = _dataset(args, args.val, bands=train.bands) if args.val else None
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
    pseudo_info = labels.parent / "pseudo_labels.json"
    pseudo = json.loads(pseudo_info.read_text()) if pseudo_info.is_file() else None
    result = _run_with_bar("train-cd", train_detector, train, config, val)
    training = {
        "config": result.config,
        "history": result.history,
        "selection": result.selection,
        "steps": thin_steps(result.steps),
        "tiles": len(train),
        "labels": str(labels.resolve()),
        "pseudo_labels": pseudo,
    }
    device = pick_device(args.device)
    threshold, training["tag_check"] = calibrated_threshold(result.model.to(device), train, device)
    training["threshold"] = threshold
    result.model.cpu()
    save_detector(
        out, result.model, train.bands, train.normalisation, args.tile_size, training,
        threshold=threshold["value"],
    )  # fmt: skip
    sel = result.selection
    log.info(
        "saved %s (selected epoch %s by %s; threshold %.3f, %s)",
        out, sel["epoch"], sel["criterion"], threshold["value"], threshold["method"],
    )  # fmt: skip
    if report_dir is not None:
        cd_report(report_dir, train, result, pseudo, pick_device(args.device), args.overwrite)
        log.info("training report: %s", report_dir / "index.html")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add train-kd, pseudo-labels and train-cd to the `kdmsi` subcommands."""
    from .. import recipe
    from ..choices import BACKBONES, CAM_HEADS, DEFAULT_BACKBONE, DETECTOR_BACKBONES, FUSIONS

    p = sub.add_parser("train-kd", help="train teacher + student on image-level labels")
    p.add_argument("--data", required=True, help="dataset folder with A/, B/, label/ or labels.csv")
    p.add_argument("--val", help="validation dataset with pixel masks (model selection by IoU)")
    p.add_argument("--out", required=True, help="model file to write (.kdmsi)")
    p.add_argument("--backbone", choices=BACKBONES, default=DEFAULT_BACKBONE)
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
        help="efficientnet_lite0 (default: pretrained, offline), resnet50/34/18, "
        "mobilenet_v3_large",
    )
    p.add_argument("--weights", default=recipe.WEIGHTS, help=WEIGHTS_HELP)
    p.add_argument("--epochs", type=int, default=recipe.CD_EPOCHS)
    p.add_argument("--batch-size", type=int, default=recipe.BATCH_SIZE)
    p.add_argument("--lr", type=float, default=recipe.CD_LR)
    _recipe_options(p)
    p.add_argument("--seed", type=int, default=0)
    _common_options(p)
    _report_options(p)
    p.set_defaults(func=cmd_train_cd)
