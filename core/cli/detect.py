"""The verbs on georeferenced rasters: detect, export-onnx, evaluate-detection, tile-grid."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..recipe import DEFAULT_BANDS
from .common import _bounds_argument, _common_options, _floats, _ints, log, run_with_bar


def _warn_quality(before: str, after: str, model: str) -> None:
    """Log a warning when the rasters differ in pixel size and the model is not robust to it;
    unreadable inputs are left to `detect_changes`, which names the problem."""
    from ..detect.quality import quality_warning

    try:
        message = quality_warning(before, after, model)
    except (ValueError, OSError):  # CheckpointError, RasterInputError (no torch import here)
        return
    if message:
        log.warning("warning: %s", message)


def cmd_detect(args) -> int:
    from ..detect.checks import check_outputs
    from ..detect.outputs import no_change_message
    from ..detect.process_tuning import tune_process_for_detect
    from ..runtime.onnx_model import is_onnx_path

    tune_process_for_detect()  # before torch is imported; GDAL_CACHEMAX, when set, wins
    # before the bar appears (outputs against inputs: `check_cli_options`, already run)
    check_outputs(args.out, args.probability, args.overwrite)
    common = dict(
        tile_size=args.tile_size,
        overlap_px=args.overlap,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        threshold=args.threshold,
        min_area_m2=args.min_area,
        simplify_m=args.simplify,
        bands=args.bands,
        bounds=args.bounds,
        overwrite=args.overwrite,
    )
    if args.zero_shot:
        from ..detect.zero_shot import detect_zero_shot

        if args.scales or args.no_flip or args.runtime == "onnx":
            raise ValueError(
                "--zero-shot runs the pretrained trunk with torch: drop --scales, --no-flip "
                "and --runtime onnx, which apply to a model file"
            )
        result = run_with_bar(
            "detect", detect_zero_shot, args.before, args.after, args.out, args.probability,
            **common,
        )  # fmt: skip
    else:
        from ..detect.with_model import detect_changes

        if not is_onnx_path(args.model):  # an ONNX model runs without importing torch
            _warn_quality(args.before, args.after, args.model)
        result = run_with_bar(
            "detect",
            detect_changes,
            args.before,
            args.after,
            args.model,
            args.out,
            args.probability,
            runtime=args.runtime,
            scales=_floats(args.scales) if args.scales else None,
            flip=not args.no_flip,
            **common,
        )
    if result.polygon_count == 0:  # an empty map is a result, but say so loudly
        log.warning("warning: %s", no_change_message(result.threshold))
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
    from ..runtime.onnx_export import export_onnx

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
    from ..detect.process_tuning import tune_process_for_detect
    from ..detect.reference import evaluate_model

    tune_process_for_detect()
    evaluation = run_with_bar(
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
    if not args.suggest:
        from ..geo.tile_layer import make_tile_grid

        if args.model or args.tags_from:
            raise ValueError("--model and --tags-from rank the tiles: add --suggest")
        out = make_tile_grid(
            args.before, args.after, args.out, args.tile_size, args.overwrite, bounds=args.bounds
        )
        log.info("tile grid written to %s; set its 'changed' field to 1 or 0 per tile", out)
        return 0
    from ..detect.suggest import check_suggested_grid, make_suggested_tile_grid

    options = dict(
        tags_from=args.tags_from,
        model=args.model,
        bands=args.bands,
        bounds=args.bounds,
        device=args.device,
        overwrite=args.overwrite,
    )
    check_suggested_grid(args.before, args.after, args.out, args.tile_size, **options)
    out, suggestions = run_with_bar(
        "tile-grid",
        make_suggested_tile_grid,
        args.before,
        args.after,
        args.out,
        args.tile_size,
        **options,
    )
    first = ", ".join(f"row {r} col {c}" for r, c in suggestions.first(5)) or "none left"
    log.info(
        "tile grid written to %s, ranked by %s (suggest_rank 1 first; tag first: %s); set its "
        "'changed' field to 1 or 0 per tile",
        out,
        suggestions.source,
        first,
    )
    return 0


def map_options(p: argparse.ArgumentParser, threshold_help: str) -> None:
    """The options of a model's map and its polygons, shared by detect and detect-batch."""
    from ..runtime.onnx_model import RUNTIMES

    p.add_argument(
        "--tile-size", type=int, default=None, help="default: the model's training tile size"
    )
    p.add_argument("--overlap", type=int, default=None, help="tile overlap in pixels (default 64)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--threshold", type=float, default=None, help=threshold_help)
    p.add_argument("--min-area", type=float, default=0.0, help="drop polygons smaller (m²)")
    p.add_argument("--simplify", type=float, default=0.0, help="simplify tolerance (m)")
    p.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="auto",
        help="auto: ONNX Runtime when installed and faster on this CPU (timed on big rasters; "
        "the export and the choice are kept in ~/.cache/kdmsi/onnx, or $KDMSI_CACHE_DIR, for "
        "the next run), torch on a GPU; onnx needs onnxruntime",
    )


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add detect, export-onnx, evaluate-detection and tile-grid to the `kdmsi` subcommands."""
    from .. import recipe
    from ..choices import PRECISIONS

    p = sub.add_parser("detect", help="change polygons between two georeferenced rasters")
    p.add_argument("--before", required=True, help="reference raster (defines the output grid)")
    p.add_argument("--after", required=True, help="later raster (warped onto the before grid)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model", help="model file: .kdmsi from train / train-cd / train-kd, or .onnx"
    )
    source.add_argument(
        "--zero-shot",
        action="store_true",
        help="no model: the pretrained trunk's feature distance between the dates, with a "
        "threshold chosen without truth (a first map before any tile is tagged)",
    )
    p.add_argument("--out", required=True, help="change polygons (.gpkg, .shp, .geojson, .fgb)")
    p.add_argument("--probability", help="also write the change probability GeoTIFF (.tif)")
    _bounds_argument(p)
    map_options(p, "0..1; default: the model's, else 0.5 (--zero-shot: 0.39)")
    p.add_argument(
        "--bands",
        type=_ints,
        default=None,
        help=f"1-based, e.g. 4,3,2; default: the model's (--zero-shot: {DEFAULT_BANDS})",
    )
    p.add_argument("--scales", default=None, help="MSI scales of a KD model, e.g. 0.5,1,1.5,2")
    p.add_argument("--no-flip", action="store_true", help="KD model: no flip averaging")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="bf16/fp16: mixed precision with torch (for GPUs; fp16 on CUDA only)",
    )
    _common_options(p, tile=False)
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
    p.add_argument("--bands", type=_ints, help="1-based, e.g. 4,3,2; default: the model's")
    _bounds_argument(p)
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=cmd_evaluate_detection)

    p = sub.add_parser("tile-grid", help="a tile polygon layer to tag as changed (1) or not (0)")
    p.add_argument("--before", required=True)
    p.add_argument("--after", required=True)
    p.add_argument("--out", required=True, help="tile layer (.gpkg recommended)")
    p.add_argument(
        "--tile-size",
        type=int,
        default=None,
        help="tile side in px (default: from the raster, the largest of "
        f"{', '.join(map(str, recipe.GRID_TILE_SIZES))} that gives at least "
        f"{recipe.MIN_GRID_TILES} tiles to tag)",
    )
    _bounds_argument(p)
    p.add_argument(
        "--suggest",
        action="store_true",
        help="rank the tiles to tag (fields change_score, suggest, suggest_rank): by the "
        "zero-shot map, or with --model by what the model is least sure about",
    )
    p.add_argument("--model", help="with --suggest: a trained model file (.kdmsi or .onnx)")
    p.add_argument(
        "--tags-from", help="with --suggest: an earlier grid of the same tiles; its tags are kept"
    )
    p.add_argument(
        "--bands",
        type=_ints,
        default=None,
        help=f"with --suggest: 1-based; default: {DEFAULT_BANDS}",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, cuda:1")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=cmd_tile_grid)
