"""The verbs on tile datasets with ground truth: evaluate (with --ablation) and synth."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import _common_options, _dataset, _floats, _norm, _threshold, run_with_bar


def cmd_evaluate(args) -> int:
    from ..inference.maps import (
        KD_MAPS,
        collect_map_statistics,
        label_folder_metrics,
        map_function,
        metrics_from_statistics,
    )
    from ..inference.msi import pick_device
    from ..metrics.change import format_table
    from ..models.checkpoint import load_checkpoint
    from ..runtime.load import stored_threshold

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
            fixed["detector"] = stored_threshold(det_meta)
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
        stats = run_with_bar(
            "evaluate", collect_map_statistics, data, functions, device, args.batch_size
        )
        rows = metrics_from_statistics(stats, _threshold(args.threshold), fixed)
    if args.pseudo_labels:
        rows["pseudo-labels"] = label_folder_metrics(data, Path(args.pseudo_labels))
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
    from ..reports.ablation import evaluate_ablation, format_ablation

    rows = run_with_bar(
        "ablation", evaluate_ablation, args.model or [], args.data, args.out,
        scales=_floats(args.scales), threshold=_threshold(args.threshold),
        pseudo_threshold=args.pseudo_threshold, pseudo_labels=args.pseudo_labels,
        device=args.device, batch_size=args.batch_size, overwrite=args.overwrite,
    )  # fmt: skip
    print(json.dumps(rows, indent=2) if args.json else format_ablation(rows))
    return 0


def cmd_synth(args) -> int:
    from ..data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(
        args.out, args.scenes, args.size, args.tile_size, seed=args.seed, overwrite=args.overwrite
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
