"""The verbs on tile datasets with ground truth: evaluate (with --ablation) and synth."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import _common_options, _dataset, _floats, _norm, _run_with_bar, _threshold, log


def cmd_evaluate(args) -> int:
    from ..inference.maps import (
        KD_MAPS,
        collect_map_statistics,
        map_function,
        metrics_from_statistics,
    )
    from ..inference.msi import pick_device
    from ..metrics.change import format_table
    from ..models.checkpoint import load_checkpoint

    if args.ablation:
        return _evaluate_ablation(args)
    device = pick_device(args.device)
    functions, first_meta, fixed = {}, None, {}
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
            detector, det_meta = load_checkpoint(path, device=device)
            functions["detector"] = map_function("detector", detector)
            fixed["detector"] = stored_detector_threshold(det_meta)
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
        rows = metrics_from_statistics(stats, _threshold(args.threshold), fixed)
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


def stored_detector_threshold(meta: dict):
    """The threshold a detector file records, read as `kdmsi detect` reads it
    (`kdmsi.runtime.load.model_threshold`), as a `ThresholdChoice` naming how it was chosen
    (calibrated at training, `kdmsi.training.calibration`)."""
    from ..inference.thresholds import ThresholdChoice
    from ..runtime.load import DEFAULT_THRESHOLD, model_threshold

    if meta.get("threshold") is None:
        return ThresholdChoice(DEFAULT_THRESHOLD, "argmax")
    training = meta.get("training") or {}
    calibration = (training.get("detector") or {}).get("threshold") or training.get("threshold")
    method = (calibration or {}).get("method")
    return ThresholdChoice(
        model_threshold(meta["threshold"]), f"stored: {method}" if method else "stored"
    )


def _evaluate_ablation(args) -> int:
    """`evaluate --ablation`: the paper's ablation table of a KD model (+ detector)."""
    from ..inference.msi import pick_device
    from ..inference.thresholds import ThresholdChoice
    from ..models.checkpoint import load_checkpoint, read_checkpoint
    from ..reports.ablation import (
        ablation_rows,
        ablation_statistics,
        format_ablation,
        save_ablation,
    )

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
    detector, pseudo_source, detector_threshold = None, None, None
    pseudo = None
    if args.pseudo_threshold is not None:
        pseudo, pseudo_source = (
            ThresholdChoice(args.pseudo_threshold, "given"),
            "--pseudo-threshold",
        )
    if detector_path:
        detector, det_meta = load_checkpoint(detector_path, device=device)
        detector_threshold = stored_detector_threshold(det_meta)
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
    rows = ablation_rows(stats, pseudo, _threshold(args.threshold), detector_threshold)
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
    from ..data.pairs import find_mask, read_image
    from ..metrics.change import ConfusionCounts

    counts = ConfusionCounts()
    for name in data.pairs:
        pred_path, truth_path = find_mask(label_dir, name), data.masks[name]
        if pred_path is None:
            raise ValueError(f"{label_dir} has no label image for {name}")
        counts.update(read_image(pred_path)[0] > 0, read_image(truth_path)[0] > 0)
    return counts.metrics()


def cmd_synth(args) -> int:
    from ..data.synthetic import make_scene, write_tile_dataset

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


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add evaluate and synth to the `kdmsi` subcommands."""

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
    _common_options(p, tile=False)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("synth", help="write a synthetic tile dataset with ground truth")
    p.add_argument("--out", required=True)
    p.add_argument("--scenes", type=int, default=4)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tile-size", type=int, default=256)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_synth)
