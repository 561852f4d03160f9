"""The `kdmsi` command line: train-kd, pseudo-labels, train-cd, evaluate, synth, detect, tile-grid,
train, train-hicd.

User errors (bad paths, foreign checkpoints, inconsistent datasets) end with one line on stderr
and exit status 2; a cancel (Ctrl+C) exits with 130. Neither leaves partial files behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

log = logging.getLogger("kdmsi")

EXIT_USAGE = 2
EXIT_CANCELLED = 130


class ProgressBar:
    """A tqdm bar over [0, 1] for the library's progress(fraction, message) callback: the
    stage's own count (e.g. "KD epoch 3/12, tile 40/100"), the elapsed time and the time
    left, estimated from the pace so far."""

    FORMAT = "{percentage:3.0f}%|{bar:20}| {elapsed}, {remaining} left · {desc}"

    def __init__(self, description: str):
        from tqdm import tqdm

        self._description = description
        self._bar = tqdm(
            total=1000, desc=description, leave=True, dynamic_ncols=True, bar_format=self.FORMAT
        )
        self._last_message = ""

    def __call__(self, fraction: float, message: str) -> None:
        if message != self._last_message:
            self._bar.set_description_str(f"{self._description}: {message}", refresh=False)
            self._last_message = message
        self._bar.update(max(0, int(round(fraction * 1000)) - self._bar.n))

    def close(self) -> None:
        self._bar.close()


def _run_with_bar(description: str, fn, *args, **kwargs):
    bar = ProgressBar(description)
    try:
        return fn(*args, progress=bar, **kwargs)
    finally:
        bar.close()


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _bounds(text: str) -> list[float]:
    values = _floats(text)
    if len(values) != 4:
        raise argparse.ArgumentTypeError("give xmin,ymin,xmax,ymax (four numbers)")
    return values


def _bounds_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bounds",
        type=_bounds,
        help="analyse only xmin,ymin,xmax,ymax (in the before raster's CRS); default: overlap",
    )


def _threshold(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def _check_new_file(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; choose another name or pass --overwrite")
    if not path.parent.exists():
        raise FileNotFoundError(f"folder {path.parent} does not exist; create it first")


def _report_dir(args, model_path: Path) -> Optional[Path]:
    """The training report folder (`--report`, default `<model stem>_report`), checked up
    front; None with `--no-report`."""
    from .geo.atomic import check_folder_target
    from .reports.page import require_report_dependencies
    from .reports.runs import default_report_dir

    if args.no_report:
        return None
    folder = Path(args.report) if args.report else default_report_dir(model_path)
    check_folder_target(folder, args.overwrite)
    require_report_dependencies()
    return folder


def _dataset(args, root, label_dir=None, augment=False, bands=None, normalisation=None):
    from .data.pairs import PairDataset

    return PairDataset(
        root,
        tile_size=args.tile_size,
        label_dir=label_dir,
        bands=bands if bands is not None else getattr(args, "bands", None),
        normalisation=normalisation,
        augment=augment,
    )


def cmd_train_kd(args) -> int:
    from .inference.msi import pick_device
    from .models.checkpoint import save_kd
    from .reports.runs import kd_report
    from .training import KDConfig, train_kd

    out = Path(args.out)
    _check_new_file(out, args.overwrite)
    report_dir = _report_dir(args, out)
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
    from .inference.msi import pick_device
    from .inference.pseudo_labels import generate_pseudo_labels
    from .models.checkpoint import load_checkpoint

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
    )
    log.info(
        "pseudo labels in %s: %s; %.1f%% of pixels changed",
        args.out,
        summary["threshold_description"],
        100 * summary["changed_pixel_fraction"],
    )
    return 0


def _norm(meta: dict):
    from .data.pairs import Normalisation

    return Normalisation.from_dict(meta["normalisation"])


def cmd_train_cd(args) -> int:
    from .inference.msi import pick_device
    from .models.checkpoint import save_detector
    from .reports.runs import cd_report
    from .reports.tiles import thin_steps
    from .training import CDConfig, train_detector

    out = Path(args.out)
    _check_new_file(out, args.overwrite)
    report_dir = _report_dir(args, out)
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
    save_detector(out, result.model, train.bands, train.normalisation, args.tile_size, training)
    sel = result.selection
    log.info("saved %s (selected epoch %s by %s)", out, sel["epoch"], sel["criterion"])
    if report_dir is not None:
        cd_report(report_dir, train, result, pseudo, pick_device(args.device), args.overwrite)
        log.info("training report: %s", report_dir / "index.html")
    return 0


def cmd_evaluate(args) -> int:
    from .inference.msi import pick_device
    from .metrics.change import format_table
    from .metrics.maps import KD_MAPS, collect_map_statistics, map_function, metrics_from_statistics
    from .models.checkpoint import load_checkpoint

    if args.ablation:
        return _evaluate_ablation(args)
    device = pick_device(args.device)
    functions, first_meta = {}, None
    wanted = [m.strip() for m in args.maps.split(",")] if args.maps else None
    if not args.model and not args.pseudo_labels:
        raise ValueError("give at least one --model or --pseudo-labels to evaluate")
    for path in args.model or []:
        _, meta = load_checkpoint(path)
        first_meta = first_meta or meta
        if meta["kind"] == "kd":
            teacher, _ = load_checkpoint(path, role="teacher", device=device)
            student, _ = load_checkpoint(path, role="student", device=device)
            for kind in wanted or KD_MAPS:
                if kind in KD_MAPS:
                    model = teacher if kind == "teacher-cam" else student
                    functions[kind] = map_function(kind, model, _floats(args.scales))
        else:
            detector, _ = load_checkpoint(path, device=device)
            functions["detector"] = map_function("detector", detector)
    if wanted:
        unknown = sorted(set(wanted) - set(functions))
        if unknown:
            raise ValueError(f"maps {unknown} are not available from the given model files")
    args.tile_size = first_meta["tile_size"] if first_meta else 256
    bands = first_meta["bands"] if first_meta else None
    norm = _norm(first_meta) if first_meta else None
    data = _dataset(args, args.data, bands=bands, normalisation=norm)
    if not data.has_masks:
        raise ValueError(f"{args.data} has no label/ masks for every image; cannot evaluate")
    rows = {}
    if functions:
        stats = _run_with_bar(
            "evaluate", collect_map_statistics, data, functions, device, args.batch_size
        )
        rows = metrics_from_statistics(stats, _threshold(args.threshold))
    if args.pseudo_labels:
        rows["pseudo-labels"] = evaluate_label_folder(data, Path(args.pseudo_labels))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows))
        for name, row in rows.items():
            if "threshold" in row:
                print(f"  {name}: threshold {row['threshold']:.3f} ({row['threshold_method']})")
    return 0


def _evaluate_ablation(args) -> int:
    """`evaluate --ablation`: the paper's ablation table of a KD model (+ detector)."""
    from .inference.msi import pick_device
    from .inference.thresholds import ThresholdChoice
    from .metrics.ablation import ablation_rows, ablation_statistics, format_ablation, save_ablation
    from .models.checkpoint import load_checkpoint, read_checkpoint

    device = pick_device(args.device)
    kd_path = detector_path = None
    for path in args.model or []:
        kind = read_checkpoint(path)["metadata"]["kind"]
        if kind == "kd":
            kd_path = path
        else:
            detector_path = path
    if kd_path is None:
        raise ValueError("--ablation needs the KD model (--model kd.kdmsi), plus the detector")
    out = Path(args.out) if args.out else None
    if out is not None:
        if not out.parent.is_dir():
            raise FileNotFoundError(f"folder {out.parent} does not exist; create it first")
        for name in ("ablation.md", "ablation.json"):  # answer before the long pass
            if (out / name).exists() and not args.overwrite:
                raise FileExistsError(f"{out / name} exists; choose another --out or --overwrite")
    teacher, meta = load_checkpoint(kd_path, role="teacher", device=device)
    student, _ = load_checkpoint(kd_path, role="student", device=device)
    detector, pseudo_source = None, None
    pseudo = None
    if args.pseudo_threshold is not None:
        pseudo, pseudo_source = (
            ThresholdChoice(args.pseudo_threshold, "given"),
            "--pseudo-threshold",
        )
    if detector_path:
        detector, det_meta = load_checkpoint(detector_path, device=device)
        stored = (det_meta.get("training") or {}).get("pseudo_labels") or {}
        if pseudo is None and (stored.get("threshold") or {}).get("value") is not None:
            pseudo = ThresholdChoice(stored["threshold"]["value"], "stored with the detector")
            pseudo_source = str(detector_path)
    if pseudo is None and args.pseudo_labels:
        info = Path(args.pseudo_labels).parent / "pseudo_labels.json"
        if info.is_file():
            value = json.loads(info.read_text())["threshold"]["value"]
            pseudo, pseudo_source = ThresholdChoice(value, "from pseudo_labels.json"), str(info)
    args.tile_size = meta["tile_size"]
    data = _dataset(args, args.data, bands=meta["bands"], normalisation=_norm(meta))
    if not data.has_masks:
        raise ValueError(f"{args.data} has no label/ masks for every image; cannot evaluate")
    scales = _floats(args.scales)
    stats = _run_with_bar(
        "ablation",
        ablation_statistics,
        data,
        teacher,
        student,
        detector,
        scales,
        device=device,
        batch_size=args.batch_size,
    )
    rows = ablation_rows(stats, pseudo, _threshold(args.threshold))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_ablation(rows))
    if out is not None:
        info = {
            "data": str(Path(args.data).resolve()),
            "tiles": len(data),
            "kd_model": str(Path(kd_path).resolve()),
            "detector": str(Path(detector_path).resolve()) if detector_path else None,
            "scales": scales,
            "map_threshold": args.threshold,
            "pseudo_label_threshold_source": pseudo_source or "chosen on this data (auto)",
        }
        md, js = save_ablation(out, rows, info, args.overwrite)
        log.info("ablation table saved to %s and %s", md, js)
    return 0


def evaluate_label_folder(data, label_dir: Path) -> dict:
    """Metrics of a folder of 0/255 label images (e.g. pseudo labels) against `data`'s masks."""
    from .data.pairs import find_mask, read_image
    from .metrics.change import ConfusionCounts

    counts = ConfusionCounts()
    for name in data.pairs:
        pred_path, truth_path = find_mask(label_dir, name), data.masks[name]
        if pred_path is None:
            raise ValueError(f"{label_dir} has no label image for {name}")
        counts.update(read_image(pred_path)[0] > 0, read_image(truth_path)[0] > 0)
    return counts.metrics()


def cmd_synth(args) -> int:
    from .data.synthetic import make_scene, write_tile_dataset

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise FileExistsError(f"{out} is not empty; choose another folder or pass --overwrite")
    seeds = range(args.seed, args.seed + args.scenes)
    scenes = [make_scene(args.size, args.size, seed=s) for s in seeds]
    write_tile_dataset(scenes, out, tile_size=args.tile_size)
    log.info(
        "wrote %d scenes of %d px as %d px tiles to %s", args.scenes, args.size, args.tile_size, out
    )
    return 0


def _warn_quality(before: str, after: str, model: str) -> None:
    """Log a warning when the rasters differ in pixel size and the model is not robust to it;
    unreadable inputs are left to `detect_changes`, which names the problem."""
    from .detect.quality import quality_warning

    try:
        message = quality_warning(before, after, model)
    except (ValueError, OSError):  # CheckpointError, RasterInputError (no torch import here)
        return
    if message:
        log.warning("warning: %s", message)


def cmd_detect(args) -> int:
    from .detect.pipeline import check_outputs, detect_changes, tune_process_for_detect
    from .runtime.onnx_runner import is_onnx_path

    tune_process_for_detect()  # before torch is imported; GDAL_CACHEMAX, when set, wins
    check_outputs(args.out, args.probability, args.overwrite)  # answer before the bar appears
    if not is_onnx_path(args.model):  # an ONNX model runs without importing torch
        _warn_quality(args.before, args.after, args.model)
    result = _run_with_bar(
        "detect",
        detect_changes,
        args.before,
        args.after,
        args.model,
        args.out,
        args.probability,
        tile_size=args.tile_size,
        overlap_px=args.overlap,
        batch_size=args.batch_size,
        device=args.device,
        runtime=args.runtime,
        precision=args.precision,
        threshold=args.threshold,
        min_area_m2=args.min_area,
        simplify_m=args.simplify,
        bands=args.bands,
        scales=_floats(args.scales) if args.scales else None,
        flip=not args.no_flip,
        bounds=args.bounds,
        overwrite=args.overwrite,
    )
    outputs = str(result.vector_path)
    if result.probability_path is not None:
        outputs += f" and {result.probability_path}"
    log.info(
        "%d change polygons (threshold %.3g) -> %s; %d x %d px in %.1f s on %s (%s)",
        result.polygon_count,
        result.threshold,
        outputs,
        result.width,
        result.height,
        result.timing_s["total"],
        result.device,
        result.runtime,
    )
    return 0


def cmd_export_onnx(args) -> int:
    from .runtime.onnx_export import export_onnx

    out = export_onnx(
        args.model,
        args.out,
        tile_size=args.tile_size,
        batch_size=args.batch_size,
        overlap_px=args.overlap,
        scales=_floats(args.scales),
        flip=not args.no_flip,
        opset=args.opset,
        verify=not args.no_verify,
        overwrite=args.overwrite,
    )
    log.info("wrote %s; run it with `kdmsi detect --model %s`", out, out)
    return 0


def cmd_evaluate_detection(args) -> int:
    from .detect.pipeline import limit_gdal_cache
    from .metrics.reference import evaluate_model

    limit_gdal_cache()
    evaluation = _run_with_bar(
        "evaluate",
        evaluate_model,
        args.before,
        args.after,
        args.model,
        args.reference,
        threshold=args.threshold,
        tile_size=args.tile_size,
        overlap_px=args.overlap,
        batch_size=args.batch_size,
        device=args.device,
        bands=args.bands,
        bounds=args.bounds,
    )
    if args.json:
        row = {"model": str(args.model), "reference": str(args.reference)}
        row.update(threshold=evaluation.threshold, pixels=evaluation.pixels)
        row.update(evaluation.metrics)
        print(json.dumps(row, indent=2))
    else:
        print(evaluation.table(Path(args.model).name))
    return 0


def cmd_tile_grid(args) -> int:
    from .detect.pipeline import make_tile_grid

    out = make_tile_grid(
        args.before, args.after, args.out, args.tile_size, args.overwrite, bounds=args.bounds
    )
    log.info("tile grid written to %s; set its 'changed' field to 1 or 0 per tile", out)
    return 0


def detector_weights(weights: Optional[str], backbone: str, detector_backbone: str):
    """The detector's --weights: a weight file is made for --backbone only, so a different
    detector backbone starts from its ImageNet weights instead; names apply to both."""
    if detector_backbone != backbone and weights and Path(weights).is_file():
        return "imagenet"
    return weights


def cmd_train(args) -> int:
    from .training import CDConfig, KDConfig
    from .training.from_tags import TagTrainingConfig, train_from_tags

    detector_backbone = args.detector_backbone or args.backbone
    config = TagTrainingConfig(
        tile_size=args.tile_size,
        bands=args.bands,
        threshold=_threshold(args.threshold),
        quality_robust=args.quality_robust,
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
    summary = _run_with_bar(
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
    from .losses.hicd import HiCDLossConfig
    from .models.checkpoint import load_checkpoint, save_detector
    from .training import HiCDConfig, train_hicd

    out = Path(args.out)
    _check_new_file(out, args.overwrite)
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
    result = _run_with_bar("train-hicd", train_hicd, teacher, train, config, val_dataset=val)
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


def build_parser() -> argparse.ArgumentParser:
    from . import __version__, recipe
    from .choices import (
        BACKBONES,
        CAM_HEADS,
        DEFAULT_BACKBONE,
        DETECTOR_BACKBONES,
        FUSIONS,
        OPTIMIZERS,
        PRECISIONS,
    )
    from .runtime.onnx_runner import RUNTIMES

    weights_help = (
        "trunk weights: imagenet (default; EfficientNet-Lite0's install with kdmsi, ResNets' "
        "are downloaded once by torchvision), none (random), or a local .pth file"
    )

    def recipe_options(p):
        p.add_argument(
            "--optimizer", choices=OPTIMIZERS, default=recipe.OPTIMIZER, help="optimiser"
        )
        p.add_argument(
            "--frozen-stages",
            type=int,
            default=None,
            help="trunk parts (stem, stages) kept at their pretrained weights; default: up to "
            "output stride 8",
        )

    parser = argparse.ArgumentParser(
        prog="kdmsi", description="Weakly supervised change detection (KD-MSI)"
    )
    parser.add_argument("--version", action="version", version=f"kdmsi {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)

    def report_options(p):
        p.add_argument(
            "--report", help="training report folder (HTML); default: <model stem>_report"
        )
        p.add_argument("--no-report", action="store_true", help="write no training report")

    def common(p, tile=True):
        p.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, cuda:1")
        p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
        if tile:
            p.add_argument("--tile-size", type=int, default=256)
            p.add_argument("--bands", type=_ints, default=None, help="1-based, e.g. 1,2,3")

    p = sub.add_parser("train-kd", help="train teacher + student on image-level labels")
    p.add_argument("--data", required=True, help="dataset folder with A/, B/, label/ or labels.csv")
    p.add_argument("--val", help="validation dataset with pixel masks (model selection by IoU)")
    p.add_argument("--out", required=True, help="model file to write (.kdmsi)")
    p.add_argument("--backbone", choices=BACKBONES, default=DEFAULT_BACKBONE)
    p.add_argument("--fusion", choices=FUSIONS, default="abs")
    p.add_argument("--cam-head", choices=CAM_HEADS, default=recipe.CAM_HEAD)
    p.add_argument("--weights", default=recipe.WEIGHTS, help=weights_help)
    p.add_argument("--epochs", type=int, default=recipe.KD_EPOCHS)
    p.add_argument("--batch-size", type=int, default=recipe.BATCH_SIZE)
    p.add_argument("--lr", type=float, default=recipe.KD_LR)
    recipe_options(p)
    p.add_argument("--kd-weight", type=float, default=10.0, help="lambda of L_cls + lambda L_kd")
    p.add_argument("--holdout", type=float, default=0.1, help="held-out share without --val")
    p.add_argument("--seed", type=int, default=0)
    common(p)
    report_options(p)
    p.set_defaults(func=cmd_train_kd)

    p = sub.add_parser("pseudo-labels", help="MSI pseudo labels from a KD model")
    p.add_argument("--model", required=True, help="KD model file from train-kd")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="output folder (label/ + pseudo_labels.json)")
    p.add_argument("--threshold", default="auto", help="auto, otsu, unchanged-quantile, or 0..1")
    p.add_argument("--scales", default="0.5,1,1.5,2")
    p.add_argument("--no-flip", action="store_true")
    p.add_argument("--batch-size", type=int, default=4)
    common(p, tile=False)
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
    p.add_argument("--weights", default=recipe.WEIGHTS, help=weights_help)
    p.add_argument("--epochs", type=int, default=recipe.CD_EPOCHS)
    p.add_argument("--batch-size", type=int, default=recipe.BATCH_SIZE)
    p.add_argument("--lr", type=float, default=recipe.CD_LR)
    recipe_options(p)
    p.add_argument("--seed", type=int, default=0)
    common(p)
    report_options(p)
    p.set_defaults(func=cmd_train_cd)

    p = sub.add_parser("evaluate", help="metrics of model maps against pixel masks")
    p.add_argument("--model", action="append", help="model file (repeatable)")
    p.add_argument("--data", required=True, help="dataset with label/ masks")
    p.add_argument("--maps", help="subset of teacher-cam,student,mi,msi,detector")
    p.add_argument("--threshold", default="auto", help="auto, otsu, unchanged-quantile, or 0..1")
    p.add_argument("--scales", default="0.5,1,1.5,2")
    p.add_argument("--pseudo-labels", help="also score this folder of label images")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--json", action="store_true", help="print metrics as JSON")
    p.add_argument(
        "--ablation",
        action="store_true",
        help="the paper's ablation: teacher CAM, student, + MI, + MSI, pseudo labels, detector",
    )
    p.add_argument("--out", help="with --ablation: folder for ablation.md and ablation.json")
    p.add_argument(
        "--pseudo-threshold",
        type=float,
        help="with --ablation: pseudo-label threshold (default: the one stored with the "
        "detector, else pseudo_labels.json beside --pseudo-labels, else chosen on --data)",
    )
    common(p, tile=False)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("synth", help="write a synthetic tile dataset with ground truth")
    p.add_argument("--out", required=True)
    p.add_argument("--scenes", type=int, default=4)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tile-size", type=int, default=256)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("detect", help="change polygons between two georeferenced rasters")
    p.add_argument("--before", required=True, help="reference raster (defines the output grid)")
    p.add_argument("--after", required=True, help="later raster (warped onto the before grid)")
    p.add_argument(
        "--model",
        required=True,
        help="model file: .kdmsi from train-cd / train-kd, or .onnx from export-onnx",
    )
    p.add_argument("--out", required=True, help="change polygons (.gpkg, .shp, .geojson, .fgb)")
    p.add_argument("--probability", help="also write the change probability GeoTIFF (.tif)")
    _bounds_argument(p)
    p.add_argument(
        "--tile-size", type=int, default=None, help="default: the model's training tile size"
    )
    p.add_argument("--overlap", type=int, default=None, help="tile overlap in pixels (default 64)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument(
        "--threshold", type=float, default=None, help="0..1; default: the model's, else 0.5"
    )
    p.add_argument("--min-area", type=float, default=0.0, help="drop polygons smaller (m²)")
    p.add_argument("--simplify", type=float, default=0.0, help="simplify tolerance (m)")
    p.add_argument("--bands", type=_ints, default=None, help="1-based, e.g. 4,3,2")
    p.add_argument("--scales", default=None, help="MSI scales of a KD model, e.g. 0.5,1,1.5,2")
    p.add_argument("--no-flip", action="store_true", help="KD model: no flip averaging")
    p.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="auto",
        help="auto: ONNX Runtime when installed and faster on this CPU (timed on big rasters; "
        "the export and the choice are kept in ~/.cache/kdmsi/onnx, or $KDMSI_CACHE_DIR, for "
        "the next run), torch on a GPU; onnx needs onnxruntime",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="bf16/fp16: mixed precision with torch (for GPUs; fp16 on CUDA only)",
    )
    common(p, tile=False)
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("export-onnx", help="export a model file to ONNX for ONNX Runtime")
    p.add_argument("model", help="model file (.kdmsi)")
    p.add_argument("out", help="ONNX file to write (.onnx)")
    p.add_argument(
        "--tile-size", type=int, default=None, help="fixed tile size (default: the model's)"
    )
    p.add_argument("--batch-size", type=int, default=4, help="fixed batch (detect pads the last)")
    p.add_argument("--overlap", type=int, default=None, help="recorded default overlap (px)")
    p.add_argument("--scales", default="0.5,1,1.5,2", help="MSI scales of a KD model")
    p.add_argument("--no-flip", action="store_true", help="KD model: no flip averaging")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime check")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=cmd_export_onnx)

    p = sub.add_parser(
        "evaluate-detection",
        help="run a model on a raster pair and score it against a mask raster or polygons",
    )
    p.add_argument("--before", required=True)
    p.add_argument("--after", required=True)
    p.add_argument("--model", required=True, help="model file (.kdmsi)")
    p.add_argument(
        "--reference", required=True, help="mask raster (> 0: change) or change polygons"
    )
    p.add_argument("--threshold", type=float, help="default: the model's")
    p.add_argument("--tile-size", type=int, help="default: the model's training tile size")
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="auto")
    p.add_argument("--bands", type=_ints, help="1-based bands of both rasters, e.g. 1,2,3")
    _bounds_argument(p)
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=cmd_evaluate_detection)

    p = sub.add_parser("tile-grid", help="a tile polygon layer to tag as changed (1) or not (0)")
    p.add_argument("--before", required=True)
    p.add_argument("--after", required=True)
    p.add_argument("--out", required=True, help="tile layer (.gpkg recommended)")
    p.add_argument("--tile-size", type=int, default=256)
    _bounds_argument(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=cmd_tile_grid)

    p = sub.add_parser("train", help="train a detector from a tile layer tagged changed 1/0")
    p.add_argument("--before", required=True, help="before raster")
    p.add_argument("--after", required=True, help="after raster")
    p.add_argument("--tiles", required=True, help="tile layer with field changed (1/0/empty)")
    p.add_argument("--out", required=True, help="model file to write (.kdmsi)")
    p.add_argument("--kd-model", help="also keep the teacher and student (a KD model file, .kdmsi)")
    p.add_argument("--backbone", choices=BACKBONES, default=DEFAULT_BACKBONE)
    p.add_argument(
        "--detector-backbone",
        choices=DETECTOR_BACKBONES,
        default=None,
        help="the detector's backbone (default: --backbone)",
    )
    p.add_argument("--fusion", choices=FUSIONS, default="abs")
    p.add_argument("--cam-head", choices=CAM_HEADS, default=recipe.CAM_HEAD)
    p.add_argument("--weights", default=recipe.WEIGHTS, help=weights_help)
    p.add_argument("--kd-epochs", type=int, default=recipe.KD_EPOCHS)
    p.add_argument("--cd-epochs", type=int, default=recipe.CD_EPOCHS)
    p.add_argument("--batch-size", type=int, default=recipe.BATCH_SIZE)
    p.add_argument("--kd-lr", type=float, default=recipe.KD_LR)
    p.add_argument("--cd-lr", type=float, default=recipe.CD_LR)
    recipe_options(p)
    p.add_argument("--threshold", default="auto", help="pseudo-label threshold: auto or 0..1")
    p.add_argument(
        "--quality-robust",
        action="store_true",
        help="the two images differ in quality: also train a HiCD student (see train-hicd)",
    )
    p.add_argument("--seed", type=int, default=0)
    common(p)
    p.set_defaults(tile_size=None)  # the tagged tiles' own size (`read_tagged_windows`)
    report_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "train-hicd",
        help="train a quality-robust detector (HiCD) from a detector trained on clean pairs",
    )
    p.add_argument("--teacher", required=True, help="detector model file (train-cd, train)")
    p.add_argument("--data", required=True, help="dataset folder with A/, B/ (clean pairs)")
    p.add_argument("--labels", help="label folder (e.g. pseudo/label); default data/label")
    p.add_argument("--val", help="validation dataset with pixel masks (model selection by IoU)")
    p.add_argument("--out", required=True, help="model file to write (.kdmsi)")
    p.add_argument("--method", choices=("hicd", "feature-mse", "direct"), default="hicd")
    p.add_argument(
        "--preset",
        choices=("resolution", "single", "multi"),
        default="multi",
        help="degradation of the after images (see kdmsi.training.degrade)",
    )
    p.add_argument("--init", choices=("teacher", "random"), default="teacher")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.003)
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
    common(p, tile=False)
    p.set_defaults(func=cmd_train_hicd)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `kdmsi` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="kdmsi: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    from .progress import Cancelled
    from .runtime.onnx_runner import keep_triton_out

    keep_triton_out()  # kdmsi never compiles kernels; see its docstring
    try:
        return args.func(args)
    except (Cancelled, KeyboardInterrupt):
        print("kdmsi: cancelled; no partial output was kept", file=sys.stderr)
        return EXIT_CANCELLED
    # CheckpointError, DatasetError, BackboneError, RuntimeUnavailable... are ValueErrors (not
    # imported here: they would import torch, which an ONNX model's detect never needs)
    except (ValueError, OSError, MemoryError) as exc:
        print(f"kdmsi {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
