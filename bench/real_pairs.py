"""Real-pair benchmark: the analyst's workflow, end to end, on ``../shared/data/real``.

The protocol (`real_regions.TUNING`, `real_regions.REPORTING`): regions are split, once and
for all, into a tuning side (every default was chosen there; choices may look at it) and a
reporting side (never looked at for a choice); the headline figure is the reporting side's.
``--side`` picks the regions (default: reporting).

For every region: GeoTIFFs of the pair and its truth; a tile grid (`kdmsi tile-grid`, at the
product's own default size with ``--grid auto``, the default, or at ``--grid N`` px); tags at
image level only, derived from the mask as an analyst would tag (changed when at least 0.5 %
of a tile changed, unchanged when none did, untagged in between); `kdmsi train` at its
defaults (keeping the teacher and student with --kd-model); `kdmsi detect` on the whole
region; the polygons scored against the mask. Beside the final detector, on the same scorer
and pixels:

* naive differencing: mean absolute difference over the bands at its best threshold chosen
  against the truth (an oracle, so an upper bound of that baseline);
* the zero-shot map (`kdmsi detect --zero-shot`): what the product offers with no tag;
* "tags as the map": every pixel of every tile tagged changed (the trivial answer);
* with ``--maps``: teacher CAM, student (one scale), student + MSI over the whole region,
  each at the threshold `kdmsi` picks without truth from the tagged tiles (``auto``), and the
  pseudo labels the detector trained on (MSI of each tagged tile above the stored threshold,
  changed tiles only), scored on the tagged tiles.

Per region and map it also keeps what an analyst sees without truth: the share of the region
marked changed (beside the true share) and the share of the pixels of tiles tagged *not
changed* that are marked.

Every stage runs in its own process (CLI or this file's ``--stage``), so its wall time and
peak memory (max RSS) are its own. Regions with fewer than two tiles of a tag are refused by
`kdmsi train`, as they would be for an analyst, and reported apart. Pooled figures sum TP, FP
and FN over the optical regions of a side. ``--cross`` then detects with the detector trained
on the LEVIR-CD crops on WHU and on the LEVIR 1024 px regions (tuning side, reported apart).

Usage::

    .venv/bin/python bench/real_pairs.py --workdir /tmp/kdmsi-real [--side reporting|tuning|all]
        [--grid auto|128] [--regions LEVIR-CD,WHU-CD] [--maps] [--cross]
        [--markdown table.md] [--train-args "--kd-epochs 8"]
    .venv/bin/python bench/real_pairs.py --from-json /tmp/kdmsi-real/results.json  # reprint

Skips cleanly (exit 0, one line) when the data folder is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_maps import map_rows, map_stages, stage_map, stage_pseudo  # noqa: E402
from real_regions import (  # noqa: E402 - the bench's own helper module, beside this file
    REPORTING,
    TUNING,
    Region,
    best_threshold_counts,
    default_regions,
    grid_for,
    naive_difference,
    tagged_masks,
    tile_tags,
    write_region,
    write_tags,
)
from real_tables import report, score_row  # noqa: E402 - beside this file

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


# --------------------------------------------------------------------------- stage processes


PRODUCT_ENV: Optional[dict[str, str]] = None
"""The child processes' environment with ``--product DIR`` (an earlier checkout's library
first on the path, for the previous default's figures); None: this checkout's."""


def run_stage(argv: list[str], log: Path) -> dict[str, Any]:
    """Run one stage as a child process: {'rc', 'wall_s', 'peak_mib', 'tail'}."""
    start = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=PRODUCT_ENV)
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    tail = log.read_text(errors="replace").strip().splitlines()[-3:]
    return {
        "rc": os.waitstatus_to_exitcode(status),
        "wall_s": round(wall, 1),
        "peak_mib": round(usage.ru_maxrss / 1024, 0),
        "tail": tail,
    }


def kdmsi(*args: str) -> list[str]:
    return [sys.executable, "-m", "kdmsi.cli", "-q", *args]


# ------------------------------------------------------------------------------ one region


def _raster(path: Path) -> np.ndarray:
    from osgeo import gdal

    return gdal.Open(str(path)).ReadAsArray()


def _rasterize(vector: Path, like: Path) -> np.ndarray:
    from osgeo import gdal, ogr

    ref = gdal.Open(str(like))
    mem = gdal.GetDriverByName("MEM").Create("", ref.RasterXSize, ref.RasterYSize, 1, gdal.GDT_Byte)
    mem.SetGeoTransform(ref.GetGeoTransform())
    mem.SetProjection(ref.GetProjection())
    source = ogr.Open(str(vector))
    gdal.RasterizeLayer(mem, [1], source.GetLayer(0), burn_values=[1])
    return mem.ReadAsArray().astype(bool)


def detect_stage(
    source: list[str], folder: Path, band_args: list[str], name: str = "detector"
) -> dict[str, Any]:
    """`kdmsi detect` (``source``: ``--model FILE`` or ``--zero-shot``) on the pair in
    ``folder``: ``name``.gpkg polygons and ``name``.tif probabilities."""
    pair = ["--before", str(folder / "before.tif"), "--after", str(folder / "after.tif")]
    outputs = ["--out", str(folder / f"{name}.gpkg")]
    outputs += ["--probability", str(folder / f"{name}.tif")]
    argv = ["detect", *pair, *source, *outputs, "--overwrite", *band_args]
    if source[0] == "--model":
        argv += ["--runtime", "torch"]
    return run_stage(kdmsi(*argv), folder / f"{name}.log")


def run_region(
    region: Region,
    data: Path,
    work: Path,
    train_args: list[str],
    options: argparse.Namespace,
    trained: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """Run the analyst's workflow on ``region`` (files in ``work``) on the tag grid of
    ``options.grid``, then score it. With ``trained`` (the region's earlier result), its
    models are kept and only detect and the maps run again."""
    folder = work / region.name.replace("/", "_")
    band_args = ["--bands", _bands(region)] if region.bands else []
    grid_path = folder / "tiles.gpkg"
    paths = {k: folder / f"{k}.tif" for k in ("before", "after", "truth")}
    pair = ["--before", str(paths["before"]), "--after", str(paths["after"])]
    detector, kd_model = folder / "detector.kdmsi", folder / "kd.kdmsi"
    stages: dict[str, Any] = {}
    if trained is not None:
        stages["train"] = trained["stages"]["train"]
        grid = trained["grid"]
    else:
        write_region(data, region, folder)
        truth = _raster(paths["truth"])
        grid = grid_for(truth.shape, options.grid)
        # explicit even for "auto" (the same size as the product's default), so that a run of
        # an earlier product with another default is tagged on the same grid
        grid_args = ["--out", str(grid_path), "--tile-size", str(grid), "--overwrite"]
        subprocess.run(kdmsi("tile-grid", *pair, *grid_args), check=True, env=PRODUCT_ENV)
        write_tags(grid_path, tile_tags(truth, grid))
        train_out = ["--out", str(detector), "--kd-model", str(kd_model), "--no-report"]
        stages["train"] = run_stage(
            kdmsi(
                "train",
                *pair,
                "--tiles",
                str(grid_path),
                *train_out,
                "--overwrite",
                *band_args,
                *train_args,
            ),  # fmt: skip
            folder / "train.log",
        )
    stages["zero-shot"] = detect_stage(["--zero-shot"], folder, band_args, "zero_shot")
    if stages["train"]["rc"] == 0:
        stages["detect"] = detect_stage(["--model", str(detector)], folder, band_args)
        if options.maps:
            maps = map_stages(_bands(region), folder, kd_model, detector, grid_path, run_stage)
            stages.update(maps)
    result = score_region(region, folder, grid)
    result["stages"] = stages
    result["grid_mode"] = options.grid
    if stages["train"]["rc"] != 0:
        result["refused"] = " ".join(stages["train"]["tail"])[-300:]
    return result


def _bands(region: Region) -> str:
    return ",".join(str(b) for b in region.bands) if region.bands else ""


def score_region(region: Region, folder: Path, grid: int) -> dict[str, Any]:
    """Score what `run_region` left in ``folder`` (also used by ``--rescore``)."""
    truth = _raster(folder / "truth.tif")
    before, after = _raster(folder / "before.tif"), _raster(folder / "after.tif")
    before, after = (a[None] if a.ndim == 2 else a for a in (before, after))
    if region.bands:
        index = [b - 1 for b in region.bands]
        before, after = before[index], after[index]
    tags = tile_tags(truth, grid)
    changed_tiles, tagged = tagged_masks(tags, truth.shape, grid)
    not_changed = tagged & ~changed_tiles
    naive = naive_difference(before, after)
    threshold, _ = best_threshold_counts(naive, truth)
    rows = {
        "naive (oracle)": {
            **score_row(naive, truth, naive >= threshold, None, not_changed),
            "threshold": threshold,
        },
        "tags as the map": score_row(
            changed_tiles.astype(np.float32), truth, changed_tiles, None, not_changed
        ),
    }
    result: dict[str, Any] = {
        "region": region.name,
        "side": region.side,
        "optical": region.optical,
        "size": list(truth.shape),
        "grid": grid,
        "tags": [list(tags.values()).count(1), list(tags.values()).count(0)],
        "rows": rows,
    }
    if (folder / "zero_shot.tif").is_file():
        polygons = _rasterize(folder / "zero_shot.gpkg", folder / "truth.tif")
        score = np.nan_to_num(_raster(folder / "zero_shot.tif"))
        rows["zero-shot map"] = score_row(score, truth, polygons, None, not_changed)
    detector = folder / "detector.kdmsi"
    if not (folder / "detector.tif").is_file():
        return result
    from kdmsi.models.checkpoint import read_checkpoint

    training = read_checkpoint(detector)["metadata"]["training"]
    result["timing_s"] = training.get("timing_s")
    result["tag_check"] = training.get("detector", {}).get("tag_check")
    polygons = _rasterize(folder / "detector.gpkg", folder / "truth.tif")
    score = np.nan_to_num(_raster(folder / "detector.tif"))
    rows["final detector"] = score_row(score, truth, polygons, None, not_changed)
    rows.update(map_rows(folder, truth, tags, grid, changed_tiles, tagged))
    return result


CROSS_SOURCE = "LEVIR-CD"  # trained on the LEVIR crops ...
CROSS_TARGETS = ("WHU-CD", "LEVIR-1024/test_102", "LEVIR-1024/test_7", "LEVIR-1024/test_8")


def run_cross(source: Region, target: Region, work: Path, grid: int) -> dict[str, Any]:
    """Detect on ``target`` with the detector trained on ``source`` (both run before, in
    ``work``): the region's pair and truth are reused, the detector row is scored."""
    home = work / target.name.replace("/", "_")
    folder = work / f"cross_{source.name}_to_{target.name}".replace("/", "_")
    folder.mkdir(exist_ok=True)
    for name in ("before.tif", "after.tif", "truth.tif"):
        if not (folder / name).exists():
            (folder / name).symlink_to((home / name).resolve())
    detector = work / source.name.replace("/", "_") / "detector.kdmsi"
    detect = detect_stage(["--model", str(detector)], folder, [])
    (folder / "detector.kdmsi").unlink(missing_ok=True)
    (folder / "detector.kdmsi").symlink_to(detector.resolve())
    result = score_region(target, folder, grid)
    result["region"] = f"{source.name} -> {target.name}"
    result["cross"] = True
    result["stages"] = {"detect": detect}
    return result


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/kdmsi-real"))
    parser.add_argument(
        "--side",
        choices=(REPORTING, TUNING, "all"),
        default=REPORTING,
        help="which side of the protocol to run (default: reporting, the headline)",
    )
    parser.add_argument(
        "--grid", default="auto", help="tag grid: auto (the product's default) or a size in px"
    )
    parser.add_argument("--regions", help="comma-separated region names (default: the side's)")
    parser.add_argument("--train-args", default="", help="extra `kdmsi train` arguments")
    parser.add_argument(
        "--maps", action="store_true", help="also the teacher, student, MSI and pseudo-label rows"
    )
    parser.add_argument("--cross", action="store_true", help="also the cross-dataset run")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    parser.add_argument(
        "--from-json", type=Path, nargs="+", help="reprint results.json files, merged"
    )
    parser.add_argument(
        "--rescore", action="store_true", help="score the workdir's files again, run nothing"
    )
    parser.add_argument(
        "--reuse-training",
        action="store_true",
        help="keep the workdir's trained models; run detect, the maps and the scoring again",
    )
    parser.add_argument(
        "--product",
        type=Path,
        help="run the product (every CLI and stage process) from this folder holding an "
        "earlier checkout's library as kdmsi/ (git archive REV core), e.g. for the "
        "previous default's figures",
    )
    parser.add_argument("--stage", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.product:
        global PRODUCT_ENV
        PRODUCT_ENV = {**os.environ, "PYTHONPATH": str(args.product.resolve())}
    if args.stage:
        {"map": stage_map, "pseudo": stage_pseudo}[args.stage[0]](*args.stage[1:])  # --maps
        return 0
    if args.grid != "auto" and not args.grid.isdigit():
        parser.error(f"--grid takes auto or a size in pixels, not {args.grid}")
    if args.from_json:
        merged = [r for path in args.from_json for r in json.loads(path.read_text())]
        return _print_report(merged, args.markdown)
    if not args.data.is_dir():
        print(f"real-pair benchmark skipped: no data folder {args.data}")
        return 0
    regions = [r for r in default_regions() if args.side in ("all", r.side)]
    if args.regions:
        wanted = args.regions.split(",")
        regions = [r for r in default_regions() if r.name in wanted]
    args.workdir.mkdir(parents=True, exist_ok=True)
    saved = args.workdir / "results.json"
    earlier = {}
    if args.rescore or args.reuse_training:
        earlier = {r["region"]: r for r in json.loads(saved.read_text())}
    results = []
    for region in regions:
        if args.rescore:
            if region.name in earlier:
                folder = args.workdir / region.name.replace("/", "_")
                result = score_region(region, folder, earlier[region.name]["grid"])
                for key in ("stages", "refused", "grid_mode"):
                    result[key] = earlier[region.name].get(key)
                results.append(result)
            continue
        print(f"== {region.name}", flush=True)
        trained = earlier.get(region.name)
        if args.reuse_training and trained is None:
            continue  # not in the earlier run
        train_args = shlex.split(args.train_args)
        results.append(run_region(region, args.data, args.workdir, train_args, args, trained))
        saved.write_text(json.dumps(results, indent=1))
    if args.cross and not args.rescore:
        by_name = {r.name: r for r in default_regions()}
        grids = {r["region"]: r["grid"] for r in results}
        for target in CROSS_TARGETS:
            print(f"== {CROSS_SOURCE} -> {target}", flush=True)
            work = args.workdir
            results.append(run_cross(by_name[CROSS_SOURCE], by_name[target], work, grids[target]))
            saved.write_text(json.dumps(results, indent=1))
    if args.rescore:
        saved.write_text(json.dumps(results, indent=1))
    return _print_report(results, args.markdown)


def _print_report(results: list[dict[str, Any]], markdown: Optional[Path]) -> int:
    text = report(results)
    print(text)
    if markdown:
        markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
