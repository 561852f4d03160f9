"""Detect speed and memory per backbone and runtime on synthetic raster pairs (`kdmsi detect`).

For every raster size x detector backbone x runtime it runs `kdmsi.detect.with_model.detect_changes`
in a fresh subprocess (so peak RSS is that run's alone) and prints one table row:

* tile pairs/s: tiles run / wall seconds of the whole detect call (align, stretch, tile loop,
  probability GeoTIFF, polygons);
* forward share: seconds inside the model's forward (`run_batch`) / wall seconds, and in
  brackets / seconds of the tile loop alone (without polygonizing, whose cost follows how
  ragged the change map is: a random-init network's map is noise-like, so it costs more
  there than with a trained model's compact changes);
* outside ms/tile: (wall - forward) / tiles, i.e. everything the detect path adds per tile in
  wall time; ``reader CPU`` is the background reader thread's CPU time per tile, which runs
  while the model does (on 2 cores it competes with the model's threads);
* peak RSS (VmHWM) of the subprocess, and its RSS before the detect call (imports done).

Models: random-initialised Siamese DeepLabV3+ detectors with the head `kdmsi train` gives
them (`kdmsi.recipe`: ASPP and decoder 128 channels wide), saved with
`kdmsi.models.checkpoint.save_detector` (weights do not change the cost). Runtime ``torch`` runs the
``.kdmsi`` file (``--runtime torch``); ``onnx`` runs the ``.onnx`` file written beforehand by
`kdmsi.runtime.onnx_export.export_onnx` (as `kdmsi export-onnx` does), so that process never imports
torch; ``auto`` runs the ``.kdmsi`` file as `kdmsi detect` does by default: on grids of 256
tiles or more (``--max-tiles 300``) it exports the model, times both runtimes and keeps the
export and the choice (`kdmsi.runtime.onnx_cache`, here in the workdir's ``onnx-cache``, emptied at
the start), so ``--runtimes auto,auto`` shows a first run and a run that finds the export kept.
A ``numpy`` row per size runs the same path at full size with a cheap stand-in model
(sigmoid of the mean |post - pre|, numpy): the detect path's own cost and memory.

``--max-tiles N`` (default 96): a raster whose grid has more tiles is run on a full-width strip
of its first tile rows (``bounds``), enough rows for N tiles; every per-tile figure comes from
that strip and the whole-raster time is extrapolated (tiles / tile pairs per s, printed as
"est. full"). Memory does not grow with the raster's height in this path (tile-row buffers,
polygons streamed from disk), so the strip's peak RSS stands for the whole raster; the
``numpy`` rows and a full run (``--max-tiles 0``) check that. A full 16k^2 resnet50 run takes
hours on 2 cores.

Pairs: 3-band uint8 GeoTIFFs (tiled 256, EPSG:32633, 0.5 m), written block by block from one
2048^2 `kdmsi.data.synthetic.make_scene` rotated/flipped per block (`detect_bench.write_pair`).
Each run first calls `kdmsi.detect.process_tuning.tune_process_for_detect`, as `kdmsi detect`
does (GDAL cache 32 MB, OMP_WAIT_POLICY=PASSIVE, freed arrays returned to the system).

Usage::

    nice -n 5 .venv/bin/python bench/detect_speed.py --workdir /tmp/kdmsi-speed \\
        [--sizes 2048,8192,16384] [--backbones resnet18,resnet50] [--runtimes torch,onnx] \\
        [--max-tiles 96] [--markdown bench/results/detect_speed.md]
    .venv/bin/python bench/detect_speed.py --device cuda --precisions fp32,bf16,fp16 \\
        --runtimes torch --batch-size 32 --no-numpy  # on a GPU machine
    .venv/bin/python bench/detect_speed.py --from-runs /tmp/kdmsi-speed/runs.jsonl  # reprint

Figures depend on the machine and on what else runs on it; compare within one run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

TILE, OVERLAP, BATCH = 256, 64, 4


# ------------------------------------------------------------------------------ worker side


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return -1


def numpy_runner(pre: np.ndarray, post: np.ndarray) -> np.ndarray:
    """A cheap stand-in model: [n, C, T, T] pairs -> [n, T, T] sigmoid(8 (mean|d| - 0.6))."""
    d = np.abs(post - pre).mean(axis=1)
    return (1.0 / (1.0 + np.exp(-8.0 * (d - 0.6)))).astype(np.float32)


def strip_bounds(before: Path, max_tiles: int) -> tuple[Optional[list[float]], int]:
    """Bounds of the full-width strip of tile rows holding >= ``max_tiles`` tiles (None: the
    whole raster), and the number of tiles that run."""
    from osgeo import gdal

    from kdmsi.geo.tiling import tile_starts

    ds = gdal.Open(str(before))
    width, height, gt = ds.RasterXSize, ds.RasterYSize, ds.GetGeoTransform()
    per_row = len(tile_starts(width, TILE, OVERLAP))
    rows = len(tile_starts(height, TILE, OVERLAP))
    if max_tiles <= 0 or per_row * rows <= max_tiles:
        return None, per_row * rows
    n = math.ceil(max_tiles / per_row)
    strip_px = TILE + (n - 1) * (TILE - OVERLAP)
    bounds = [gt[0], gt[3] + strip_px * gt[5], gt[0] + width * gt[1], gt[3]]
    return bounds, per_row * n


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One measured detect run in this fresh process."""
    from kdmsi.detect.process_tuning import tune_process_for_detect
    from kdmsi.detect.with_model import detect_changes
    from kdmsi.detect.with_runner import detect_with_runner

    tune_process_for_detect()  # as `kdmsi detect` does
    bounds = spec["bounds"]
    out = Path(spec["out"])
    kept_export = False
    if spec["runtime"] == "torch":
        import torch  # noqa: F401 - counted in the baseline

        import kdmsi.models  # noqa: F401
    if spec["runtime"] == "auto":  # imports torch itself, unless the export is kept
        from kdmsi.runtime import onnx_cache

        key = onnx_cache.export_key(spec["model"], TILE, BATCH, None, True)
        kept_export = onnx_cache.lookup(key) is not None
    rss_before = _status_kb("VmRSS")
    batch = spec.get("batch", BATCH)
    kwargs = dict(tile_size=TILE, overlap_px=OVERLAP, batch_size=batch, overwrite=True)
    if spec["runtime"] == "numpy":
        from kdmsi.data.normalisation import Normalisation

        result = detect_with_runner(
            spec["before"],
            spec["after"],
            numpy_runner,
            Normalisation.default(3),
            out / "changes.gpkg",
            threshold=0.5,
            bounds=bounds,
            **kwargs,
        )
    else:
        result = detect_changes(
            spec["before"],
            spec["after"],
            spec["model"],
            out / "changes.gpkg",
            device=spec.get("device", "cpu"),
            runtime=spec["runtime"],
            precision=spec.get("precision", "fp32"),
            bounds=bounds,
            **kwargs,
        )
    return {
        **spec,
        "width": result.width,
        "height": result.height,
        "tiles": result.tiles,
        "tiles_computed": result.tiles_computed,
        "polygons": result.polygon_count,
        "timing_s": result.timing_s,
        "runtime_used": result.runtime,
        "rss_before_kb": rss_before,
        "peak_kb": _status_kb("VmHWM"),
        "torch_imported": "torch" in sys.modules,
        "kept_export": kept_export,
    }


def export_models(
    folder: Path, backbones: list[str], runtimes: list[str], trained: Optional[str] = None
) -> dict[str, Path]:
    """Random-init detector checkpoints (and ONNX exports) per backbone; name -> path. A
    ``trained`` detector file replaces the random one of its backbone."""
    import torch

    from kdmsi import recipe
    from kdmsi.data.normalisation import Normalisation
    from kdmsi.models import SiameseDeepLabV3Plus
    from kdmsi.models.checkpoint import read_checkpoint, save_detector
    from kdmsi.runtime.onnx_export import export_onnx

    paths: dict[str, Path] = {}
    trained_backbone = (
        read_checkpoint(trained)["metadata"]["model"]["backbone"] if trained else None
    )
    for backbone in backbones:
        if backbone == trained_backbone:
            paths[f"{backbone}/torch"] = Path(trained)
            if "onnx" in runtimes:
                paths[f"{backbone}/onnx"] = export_onnx(
                    trained,
                    folder / f"{backbone}_trained.onnx",
                    tile_size=TILE,
                    batch_size=BATCH,
                    overwrite=True,
                )
            continue
        torch.manual_seed(0)
        net = SiameseDeepLabV3Plus(  # the head `kdmsi train` gives every backbone now
            backbone,
            in_channels=3,
            head_channels=recipe.DETECTOR_HEAD_CHANNELS,
            separable=recipe.DETECTOR_SEPARABLE,
        )
        ckpt = save_detector(
            folder / f"{backbone}.kdmsi", net, [1, 2, 3], Normalisation.default(3), TILE
        )
        paths[f"{backbone}/torch"] = ckpt
        if "onnx" in runtimes:
            paths[f"{backbone}/onnx"] = export_onnx(
                ckpt, folder / f"{backbone}.onnx", batch_size=BATCH, overwrite=True
            )
    return {k: str(v) for k, v in paths.items()}


# ------------------------------------------------------------------------------ parent side


def run_subprocess(args: list[str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, *args], check=False, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"worker {args[:2]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def figures(run: dict[str, Any]) -> dict[str, Any]:
    t = run["timing_s"]
    tiles = max(run["tiles"], 1)
    wall, forward = t["total"], t.get("predict", 0.0)
    return {
        "pairs_per_s": tiles / wall,
        "forward_share": forward / wall,
        "loop_forward_share": forward / max(t["tiles"], 1e-9),
        "outside_ms": 1000 * (wall - forward) / tiles,
        "loop_outside_ms": 1000 * (t["tiles"] - forward) / tiles,
        "reader_cpu_ms": 1000 * t.get("reader_cpu", 0.0) / tiles,
        "peak_mib": run["peak_kb"] / 1024,
        "base_mib": run["rss_before_kb"] / 1024,
        "wall_s": wall,
    }


HEADER = (
    "| raster | model | runtime | tiles run | tile pairs/s | forward share (loop only) | "
    "outside ms/tile "
    "(loop only) | reader CPU ms/tile | peak RSS MiB (before detect) | wall s (est. full) |"
)
RULE = "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"


def table_row(run: dict[str, Any]) -> str:
    f = figures(run)
    full_tiles = run["full_tiles"]
    wall = f"{f['wall_s']:.0f}"
    if run["bounds"] is not None:
        wall += f" ({full_tiles / f['pairs_per_s']:,.0f})"
    model = run["backbone"] if run["runtime"] != "numpy" else "numpy stand-in"
    if run.get("trained"):
        model += " (trained)"
    share = (
        f"{f['forward_share']:.3f} ({f['loop_forward_share']:.3f})"
        if run["runtime"] != "numpy"
        else "-"
    )
    runtime = run["runtime_used"]
    if run.get("device", "cpu") != "cpu" and run["runtime"] != "numpy":
        runtime += f" {run['device']} {run.get('precision', 'fp32')} batch {run.get('batch')}"
    if run["runtime"] == "auto":
        runtime = f"auto: {runtime}" + (" (kept export)" if run.get("kept_export") else "")
    return (
        f"| {run['size']}² | {model} | {runtime} | {run['tiles']:,}"
        f"{'' if run['bounds'] is None else f' of {full_tiles:,}'} | {f['pairs_per_s']:.2f} | "
        f"{share} | {f['outside_ms']:.2f} ({f['loop_outside_ms']:.2f}) | "
        f"{f['reader_cpu_ms']:.2f} | {f['peak_mib']:,.0f} ({f['base_mib']:,.0f}) | {wall} |"
    )


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2048,8192,16384")
    parser.add_argument("--backbones", default="efficientnet_lite0,resnet50")
    parser.add_argument("--runtimes", default="torch,onnx", help="torch, onnx, auto (and/or numpy)")
    parser.add_argument("--max-tiles", type=int, default=96, help="0: always the full raster")
    parser.add_argument("--no-numpy", action="store_true", help="skip the numpy stand-in rows")
    parser.add_argument("--workdir", help="pairs and models are kept there (default: temp)")
    parser.add_argument("--device", default="cpu", help="torch rows: cpu, cuda")
    parser.add_argument(
        "--precisions", default="fp32", help="torch rows, e.g. fp32,bf16,fp16 (autocast)"
    )
    parser.add_argument("--batch-size", type=int, default=BATCH, help="tiles per forward pass")
    parser.add_argument("--markdown", help="also write the table to this file")
    parser.add_argument(
        "--from-runs", help="only print (and --markdown) the table of a runs.jsonl of a workdir"
    )
    parser.add_argument(
        "--trained",
        help="a trained detector (.kdmsi) to run instead of the random one of its backbone "
        "(its change map, hence the polygons' cost, is realistic)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--export", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.export:
        folder, backbones, runtimes, trained = args.export
        models = export_models(
            Path(folder), backbones.split(","), runtimes.split(","), trained or None
        )
        print(json.dumps(models))
        return 0
    if args.from_runs:
        lines = Path(args.from_runs).read_text().splitlines()
        table = [HEADER, RULE, *(table_row(json.loads(line)) for line in lines if line.strip())]
        print("\n".join(table))
        if args.markdown:
            Path(args.markdown).write_text("\n".join(table) + "\n")
        return 0

    sys.path.insert(0, str(Path(__file__).parent))
    from detect_bench import write_pair

    sizes = [int(s) for s in args.sizes.split(",")]
    backbones = [b for b in args.backbones.split(",") if b]
    runtimes = [r for r in args.runtimes.split(",") if r]
    root = Path(args.workdir or tempfile.mkdtemp(prefix="kdmsi-speed-"))
    root.mkdir(parents=True, exist_ok=True)
    # auto's kept exports (kdmsi.runtime.onnx_cache) in a folder of this run, empty at the start:
    # the
    # first auto row of a model exports, a repeated one (--runtimes auto,auto) finds it kept
    cache = root / "onnx-cache"
    shutil.rmtree(cache, ignore_errors=True)
    os.environ["KDMSI_CACHE_DIR"] = str(cache)
    print(f"kdmsi detect speed: {os.cpu_count()} CPUs, tile {TILE} overlap {OVERLAP} batch {BATCH}")
    models = run_subprocess(
        ["--export", str(root), ",".join(backbones), ",".join(runtimes), args.trained or ""]
    )
    rows: list[str] = []
    print(HEADER)
    print(RULE)
    for size in sizes:
        folder = root / f"pair_{size}"
        if not (folder / "after.tif").is_file():
            folder.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            write_pair(size, folder)
            print(f"[wrote the {size}^2 pair in {time.perf_counter() - start:.0f} s]", flush=True)
        before, after = folder / "before.tif", folder / "after.tif"
        precisions = args.precisions.split(",")
        runs = [
            (b, r, p)
            for b in backbones
            for r in runtimes
            if r != "numpy"
            for p in (precisions if r == "torch" else ["fp32"])
        ]
        if not args.no_numpy or "numpy" in runtimes:
            runs.append(("-", "numpy", "fp32"))
        for backbone, runtime, precision in runs:
            max_tiles = 0 if runtime == "numpy" else args.max_tiles
            bounds, tiles = strip_bounds(before, max_tiles)
            _, full_tiles = strip_bounds(before, 0)
            spec = {
                "size": size,
                "backbone": backbone,
                "trained": bool(args.trained) and models.get(f"{backbone}/torch") == args.trained,
                "runtime": runtime,
                # auto runs the .kdmsi file as `kdmsi detect` does (torch, or an ONNX export)
                "model": models.get(f"{backbone}/{'torch' if runtime == 'auto' else runtime}"),
                "before": str(before),
                "after": str(after),
                "bounds": bounds,
                "full_tiles": full_tiles,
                "out": str(root / f"out_{size}_{backbone}_{runtime}_{precision}"),
                "device": args.device if runtime == "torch" else "cpu",
                "precision": precision,
                "batch": args.batch_size,
            }
            Path(spec["out"]).mkdir(parents=True, exist_ok=True)
            run = run_subprocess(["--worker", json.dumps(spec)])
            row = table_row(run)
            rows.append(row)
            print(row, flush=True)
            with open(root / "runs.jsonl", "a") as fh:
                fh.write(json.dumps(run) + "\n")
    if args.markdown:
        Path(args.markdown).write_text("\n".join([HEADER, RULE, *rows]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
