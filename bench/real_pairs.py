"""Real-pair benchmark: the analyst's workflow, end to end, on ``../shared/data/real``.

For every region (`real_regions.default_regions`): GeoTIFFs of the pair and its truth; a tile
grid (`kdmsi tile-grid`); tags at image level only, derived from the mask as an analyst would
tag (changed when at least 0.5 % of a tile changed, unchanged when none did, untagged in
between); `kdmsi train` at its defaults (keeping the teacher and student with --kd-model);
`kdmsi detect` on the whole region; the polygons scored against the mask. Beside the final
detector, on the same scorer and pixels:

* naive differencing: mean absolute difference over the bands at its best threshold chosen
  against the truth (an oracle, so an upper bound of that baseline);
* "tags as the map": every pixel of every tile tagged changed (the trivial answer);
* teacher CAM, student (one scale), student + MSI over the whole region, each at the
  threshold `kdmsi` picks without truth from the tagged tiles (``auto``), with the best
  threshold against the truth in brackets;
* pseudo labels: what the detector trained on (MSI of each tagged tile above the stored
  threshold, changed tiles only), scored on the tagged tiles, with the best threshold.

Every stage runs in its own process (CLI or this file's ``--stage``), so its wall time and
peak memory (max RSS) are its own. Regions with fewer than two tiles of a tag are refused by
`kdmsi train`, as they would be for an analyst, and reported apart. Pooled figures sum TP, FP
and FN over the optical regions first. ``--cross`` then detects with the detector trained on the
LEVIR-CD crops on WHU and on the LEVIR 1024 px regions (reported apart, not pooled).

Usage::

    .venv/bin/python bench/real_pairs.py --workdir /tmp/kdmsi-real [--regions LEVIR-CD,WHU-CD]
        [--cross] [--markdown bench/results/real_pairs.md] [--train-args "--kd-epochs 8"]
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
from real_regions import (  # noqa: E402 - the bench's own helper module, beside this file
    NOT_SCORED,
    Region,
    best_threshold_counts,
    counts,
    default_regions,
    metrics,
    naive_difference,
    tagged_masks,
    tile_tags,
    write_region,
    write_tags,
)

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
HIST_BINS = 200
MAPS = ("teacher-cam", "student", "msi")
ROWS = (
    "naive (oracle)",
    "tags as the map",
    "teacher CAM",
    "student",
    "student + MSI",
    "pseudo labels, MSI alone",
    "pseudo labels",
    "final detector",
)


# --------------------------------------------------------------------------- stage processes


def run_stage(argv: list[str], log: Path) -> dict[str, Any]:
    """Run one stage as a child process: {'rc', 'wall_s', 'peak_mib', 'tail'}."""
    start = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
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


def stage_map(kind: str, kd_model: str, before: str, after: str, out: str, bands: str) -> None:
    """Worker: a whole-region map of ``kind`` (teacher-cam, student, msi) from a KD model,
    through the detect path (tiles, blending), written as a probability GeoTIFF."""
    from kdmsi.data.normalisation import Normalisation
    from kdmsi.detect.run import detect_with_predictor
    from kdmsi.inference.msi import (
        multiscale_sigmoid_inference,
        single_scale_probability,
        teacher_cam,
    )
    from kdmsi.models.checkpoint import load_checkpoint

    role = "teacher" if kind == "teacher-cam" else "student"
    model, meta = load_checkpoint(kd_model, role=role)
    predict = {
        "teacher-cam": lambda p, q: teacher_cam(model, p, q),
        "student": lambda p, q: single_scale_probability(model, p, q),
        "msi": lambda p, q: multiscale_sigmoid_inference(model, p, q),
    }[kind]
    detect_with_predictor(
        before,
        after,
        predict,
        Normalisation.from_dict(meta["normalisation"]),
        Path(out).with_suffix(".gpkg"),
        out,
        bands=[int(b) for b in bands.split(",")] if bands else None,
        tile_size=meta["tile_size"],  # as `kdmsi detect` runs a model
        overwrite=True,
    )


def stage_pseudo(
    kd_model: str, detector: str, before: str, after: str, tiles: str, out: str, bands: str
) -> None:
    """Worker: the MSI map of every tagged tile as `kdmsi train` computed it for the pseudo
    labels (same windows, stretch and normalisation), pasted into a float32 raster (NaN
    outside tagged tiles); the stored pseudo-label threshold goes into ``out``.json."""
    import torch

    from kdmsi.data.tagged import RasterTileDataset, read_tagged_windows
    from kdmsi.geo.align import align_pair
    from kdmsi.geo.stretch import pair_stretches
    from kdmsi.inference.feature_vote import zero_shot_tile_maps
    from kdmsi.inference.maps import collect_map_statistics, map_function
    from kdmsi.models.checkpoint import load_checkpoint, read_checkpoint

    student, meta = load_checkpoint(kd_model)
    summary = read_checkpoint(detector)["metadata"]["training"]
    chosen = [int(b) for b in bands.split(",")] if bands else None
    with align_pair(before, after, chosen) as pair:
        windows, size = read_tagged_windows(tiles, pair, meta["tile_size"])
        data = RasterTileDataset(pair, windows, pair_stretches(pair), _norm(meta), size)
        region = np.full((pair.height, pair.width), np.nan, np.float32)
        order = iter(range(len(data)))

        def paste(batch: dict, maps: dict) -> None:
            for prob in maps["msi"][:, 0].numpy():
                win = data.windows[next(order)]
                region[win.y : win.y + win.h, win.x : win.x + win.w] = prob[: win.h, : win.w]

        collect_map_statistics(
            data, {"msi": map_function("msi", student)}, torch.device("cpu"), 4, on_batch=paste
        )
        _write_float(out, region)
        if summary["pseudo_labels"].get("feature_vote"):  # the vote's second opinion, as trained
            changed = [i for i, label in enumerate(data.labels) if label == 1]
            distance = np.full((pair.height, pair.width), np.nan, np.float32)
            for index, values in zero_shot_tile_maps(data, changed).items():
                win = data.windows[index]
                distance[win.y : win.y + win.h, win.x : win.x + win.w] = values[: win.h, : win.w]
            _write_float(out.replace(".tif", "_vote.tif"), distance)
    Path(out + ".json").write_text(json.dumps(summary["pseudo_labels"]))


def _write_float(path: str, array: np.ndarray) -> None:
    from osgeo import gdal

    ds = gdal.GetDriverByName("GTiff").Create(
        path, array.shape[1], array.shape[0], 1, gdal.GDT_Float32
    )
    ds.GetRasterBand(1).WriteArray(array)
    ds = None


def _norm(meta: dict):
    from kdmsi.data.normalisation import Normalisation

    return Normalisation.from_dict(meta["normalisation"])


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


def _label_free_threshold(score: np.ndarray, tags, grid: int) -> float:
    """`kdmsi`'s ``auto`` threshold of a map from the tagged tiles' values (no truth)."""
    from kdmsi.inference.thresholds import ProbabilityHistograms, choose_threshold

    hists = ProbabilityHistograms()
    for (row, col), tag in tags.items():
        if tag is not None:
            tile = score[row * grid : (row + 1) * grid, col * grid : (col + 1) * grid]
            hists.add(np.nan_to_num(tile), tag)
    return choose_threshold(hists, "auto").value


def detect_stage(detector: Path, folder: Path, band_args: list[str]) -> dict[str, Any]:
    """`kdmsi detect` of ``detector`` on the pair in ``folder``: polygons and probabilities."""
    pair = ["--before", str(folder / "before.tif"), "--after", str(folder / "after.tif")]
    outputs = ["--out", str(folder / "detector.gpkg")]
    outputs += ["--probability", str(folder / "detector.tif")]
    argv = ["detect", *pair, "--model", str(detector), *outputs, "--runtime", "torch"]
    return run_stage(kdmsi(*argv, "--overwrite", *band_args), folder / "detect.log")


def run_region(
    region: Region,
    data: Path,
    work: Path,
    train_args: list[str],
    trained: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """Run the analyst's workflow on ``region`` (files in ``work``), then score it. With
    ``trained`` (the region's earlier result), its models are kept and only detect and the
    maps run again."""
    folder = work / region.name.replace("/", "_")
    band_args = ["--bands", _bands(region)] if region.bands else []
    grid_path = folder / "tiles.gpkg"
    paths = {k: folder / f"{k}.tif" for k in ("before", "after", "truth")}
    pair = ["--before", str(paths["before"]), "--after", str(paths["after"])]
    detector, kd_model = folder / "detector.kdmsi", folder / "kd.kdmsi"
    stages: dict[str, Any] = {}
    if trained is not None:
        stages["train"] = trained["stages"]["train"]
    else:
        write_region(data, region, folder)
        grid_args = ["--out", str(grid_path), "--tile-size", str(region.grid), "--overwrite"]
        subprocess.run(kdmsi("tile-grid", *pair, *grid_args), check=True)
        write_tags(grid_path, tile_tags(_raster(paths["truth"]), region.grid))
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
    if stages["train"]["rc"] == 0:
        stages["detect"] = detect_stage(detector, folder, band_args)
        for kind in MAPS:
            stages[kind] = run_stage(
                [
                    sys.executable,
                    __file__,
                    "--stage",
                    "map",
                    kind,
                    str(kd_model),
                    str(paths["before"]),
                    str(paths["after"]),
                    str(folder / f"{kind}.tif"),
                    _bands(region),
                ],
                folder / f"{kind}.log",
            )
        stages["pseudo"] = run_stage(
            [
                sys.executable,
                __file__,
                "--stage",
                "pseudo",
                str(kd_model),
                str(detector),
                str(paths["before"]),
                str(paths["after"]),
                str(grid_path),
                str(folder / "pseudo_msi.tif"),
                _bands(region),
            ],
            folder / "pseudo.log",
        )
    result = score_region(region, folder)
    result["stages"] = stages
    if stages["train"]["rc"] != 0:
        result["refused"] = " ".join(stages["train"]["tail"])[-300:]
    return result


def _bands(region: Region) -> str:
    return ",".join(str(b) for b in region.bands) if region.bands else ""


def _row(score: np.ndarray, truth: np.ndarray, chosen: np.ndarray, where=None) -> dict:
    """A table row: counts of the ``chosen`` decision, of the region's best threshold of
    ``score`` against the truth, and the truth-split histograms of ``score`` (for pooled
    best-threshold curves)."""
    scored = truth != NOT_SCORED if where is None else (truth != NOT_SCORED) & where
    edges = np.linspace(0.0, 1.0, HIST_BINS + 1)
    values, positive = np.clip(score[scored], 0.0, 1.0), truth[scored] == 1
    return {
        "counts": counts(chosen, truth, where).tolist(),
        "oracle": best_threshold_counts(score, truth, where)[1].tolist(),
        "hist_pos": np.histogram(values[positive], edges)[0].tolist(),
        "hist_neg": np.histogram(values[~positive], edges)[0].tolist(),
    }


def score_region(region: Region, folder: Path) -> dict[str, Any]:
    """Score what `run_region` left in ``folder`` (also used by ``--rescore``)."""
    truth = _raster(folder / "truth.tif")
    before, after = _raster(folder / "before.tif"), _raster(folder / "after.tif")
    before, after = (a[None] if a.ndim == 2 else a for a in (before, after))
    if region.bands:
        index = [b - 1 for b in region.bands]
        before, after = before[index], after[index]
    tags = tile_tags(truth, region.grid)
    changed_tiles, tagged = tagged_masks(tags, truth.shape, region.grid)
    naive = naive_difference(before, after)
    threshold, _ = best_threshold_counts(naive, truth)
    rows = {
        "naive (oracle)": {**_row(naive, truth, naive >= threshold), "threshold": threshold},
        "tags as the map": _row(changed_tiles.astype(np.float32), truth, changed_tiles),
    }
    result: dict[str, Any] = {
        "region": region.name,
        "optical": region.optical,
        "size": list(truth.shape),
        "grid": region.grid,
        "tags": [list(tags.values()).count(1), list(tags.values()).count(0)],
        "rows": rows,
    }
    detector = folder / "detector.kdmsi"
    if not (folder / "detector.tif").is_file():
        return result
    from kdmsi.models.checkpoint import read_checkpoint

    result["timing_s"] = read_checkpoint(detector)["metadata"]["training"].get("timing_s")
    polygons = _rasterize(folder / "detector.gpkg", folder / "truth.tif")
    rows["final detector"] = _row(np.nan_to_num(_raster(folder / "detector.tif")), truth, polygons)
    for kind, title in zip(MAPS, ("teacher CAM", "student", "student + MSI")):
        if not (folder / f"{kind}.tif").is_file():
            continue  # a cross-dataset run scores the detector only
        score = np.nan_to_num(_raster(folder / f"{kind}.tif"))
        value = _label_free_threshold(score, tags, region.grid)
        rows[title] = {**_row(score, truth, score > value), "threshold": value}
    if not (folder / "pseudo_msi.tif").is_file():
        return result
    msi = _raster(folder / "pseudo_msi.tif")
    stored = json.loads((folder / "pseudo_msi.tif.json").read_text())
    value = stored["threshold"]["value"]
    where = tagged & ~np.isnan(msi)
    pseudo = np.nan_to_num(msi) * changed_tiles
    chosen = pseudo > value
    weight = stored.get("feature_vote") or 0.0
    if weight and (folder / "pseudo_msi_vote.tif").is_file():  # as `kdmsi train` voted
        from kdmsi.inference.feature_vote import vote

        distance = np.nan_to_num(_raster(folder / "pseudo_msi_vote.tif"))
        chosen = vote(np.nan_to_num(msi), value, distance, weight) & changed_tiles
        rows["pseudo labels, MSI alone"] = {**_row(pseudo, truth, pseudo > value, where)}
    rows["pseudo labels"] = {**_row(pseudo, truth, chosen, where), "threshold": value}
    return result


CROSS_SOURCE = "LEVIR-CD"  # trained on the LEVIR crops ...
CROSS_TARGETS = ("WHU-CD", "LEVIR-1024/test_102", "LEVIR-1024/test_7", "LEVIR-1024/test_8")


def run_cross(source: Region, target: Region, work: Path) -> dict[str, Any]:
    """Detect on ``target`` with the detector trained on ``source`` (both run before, in
    ``work``): the region's pair and truth are reused, the detector row is scored."""
    home = work / target.name.replace("/", "_")
    folder = work / f"cross_{source.name}_to_{target.name}".replace("/", "_")
    folder.mkdir(exist_ok=True)
    for name in ("before.tif", "after.tif", "truth.tif"):
        if not (folder / name).exists():
            (folder / name).symlink_to((home / name).resolve())
    detector = work / source.name.replace("/", "_") / "detector.kdmsi"
    detect = detect_stage(detector, folder, [])
    (folder / "detector.kdmsi").unlink(missing_ok=True)
    (folder / "detector.kdmsi").symlink_to(detector.resolve())
    result = score_region(target, folder)
    result["region"] = f"{source.name} -> {target.name}"
    result["cross"] = True
    result["stages"] = {"detect": detect}
    return result


# ------------------------------------------------------------------------------------ tables


def _iou(c) -> float:
    return metrics(np.asarray(c))["cIoU"]


def _best_single_threshold(pos: np.ndarray, neg: np.ndarray) -> float:
    """The best change IoU of one threshold for all regions, from summed histograms."""
    tp = pos[::-1].cumsum()[::-1]
    fp = neg[::-1].cumsum()[::-1]
    fn = pos.sum() - tp
    return float((tp / np.maximum(tp + fp + fn, 1)).max())


def pooled(results: list[dict[str, Any]], optical: bool) -> dict[str, dict[str, float]]:
    """Pooled change IoU per row over the accepted regions of a kind (TP, FP, FN summed
    first): ``label_free``, ``region_best`` (each region at its best threshold against the
    truth) and ``one_best`` (one threshold against the truth for all regions)."""
    out: dict[str, dict[str, float]] = {}
    chosen = [
        r
        for r in results
        if r["optical"] == optical and not r.get("refused") and not r.get("cross")
    ]
    for row in ROWS:
        entries = [r["rows"][row] for r in chosen if row in r["rows"]]
        if not entries:
            continue
        total = {
            key: np.sum([np.asarray(e[key]) for e in entries], axis=0)
            for key in ("counts", "oracle", "hist_pos", "hist_neg")
        }
        out[row] = {
            "label_free": _iou(total["counts"]),
            "region_best": _iou(total["oracle"]),
            "one_best": _best_single_threshold(total["hist_pos"], total["hist_neg"]),
        }
    return out


def table(results: list[dict[str, Any]]) -> str:
    """Per-region change IoU of every row (region's best threshold against the truth in
    brackets), then the pooled rows over the accepted optical and other regions."""
    header = "| region | tags 1/0 | " + " | ".join(ROWS) + " | train s | train MiB |"
    lines = [header, "|---|---|" + "---:|" * (len(ROWS) + 2)]
    for r in results:
        cells = []
        for row in ROWS:
            entry = r["rows"].get(row)
            if entry is None:
                cells.append("–")
            elif row in ("naive (oracle)", "tags as the map"):
                cells.append(f"{_iou(entry['counts']):.3f}")
            else:
                cells.append(f"{_iou(entry['counts']):.3f} ({_iou(entry['oracle']):.3f})")
        train = r.get("stages", {}).get("train", {})
        name = r["region"] + (" (refused)" if r.get("refused") else "")
        lines.append(
            f"| {name} | {r['tags'][0]}/{r['tags'][1]} | "
            + " | ".join(cells)
            + f" | {train.get('wall_s', '–')} | {train.get('peak_mib', '–')} |"
        )
    for optical, label in ((True, "optical"), (False, "SAR + Landsat")):
        figures = pooled(results, optical)
        if not figures:
            continue
        for key, what in (
            ("label_free", f"**pooled, {label}**"),
            ("region_best", f"pooled, {label}: best threshold per region (oracle)"),
            ("one_best", f"pooled, {label}: best single threshold (oracle)"),
        ):
            cells = [f"{figures[row][key]:.3f}" if row in figures else "–" for row in ROWS]
            if key == "label_free":
                cells = [f"**{c}**" for c in cells]
            lines.append(f"| {what} | | " + " | ".join(cells) + " | | |")
    return "\n".join(lines)


def paper_metrics(results: list[dict[str, Any]]) -> str:
    """The paper's six metrics (%) of every row, pooled over the accepted optical regions."""
    chosen = [r for r in results if r["optical"] and not r.get("refused") and not r.get("cross")]
    keys = ("OA", "F1", "cIoU", "mIoU", "FP", "FN")
    lines = ["| pooled, optical | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for row in ROWS:
        entries = [r["rows"][row]["counts"] for r in chosen if row in r["rows"]]
        if entries:
            values = metrics(np.sum(entries, axis=0))
            lines.append(f"| {row} | " + " | ".join(f"{100 * values[k]:.2f}" for k in keys) + " |")
    return "\n".join(lines)


def report(results: list[dict[str, Any]]) -> str:
    """Both tables, as printed and written by ``--markdown``."""
    return table(results) + "\n\n" + paper_metrics(results)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/kdmsi-real"))
    parser.add_argument("--regions", help="comma-separated region names (default: all)")
    parser.add_argument("--train-args", default="", help="extra `kdmsi train` arguments")
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
    parser.add_argument("--stage", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage:
        {"map": stage_map, "pseudo": stage_pseudo}[args.stage[0]](*args.stage[1:])
        return 0
    if args.from_json:
        merged = [r for path in args.from_json for r in json.loads(path.read_text())]
        text = report(merged)
        print(text)
        if args.markdown:
            args.markdown.write_text(text + "\n")
        return 0
    if not args.data.is_dir():
        print(f"real-pair benchmark skipped: no data folder {args.data}")
        return 0
    regions = default_regions()
    if args.regions:
        wanted = args.regions.split(",")
        regions = [r for r in regions if r.name in wanted]
    args.workdir.mkdir(parents=True, exist_ok=True)
    saved = args.workdir / "results.json"
    results = []
    if args.rescore:
        before = {r["region"]: r for r in json.loads(saved.read_text())}
        for region in regions:
            if region.name in before:
                folder = args.workdir / region.name.replace("/", "_")
                result = score_region(region, folder)
                result["stages"] = before[region.name].get("stages", {})
                result["refused"] = before[region.name].get("refused")
                results.append(result)
    earlier = {r["region"]: r for r in json.loads(saved.read_text())} if args.reuse_training else {}
    for region in [] if args.rescore else regions:
        print(f"== {region.name}", flush=True)
        trained = earlier.get(region.name) if args.reuse_training else None
        if args.reuse_training and trained is None:
            continue  # not in the earlier run
        run = run_region(region, args.data, args.workdir, shlex.split(args.train_args), trained)
        results.append(run)
        saved.write_text(json.dumps(results, indent=1))
    if args.cross and not args.rescore:
        by_name = {r.name: r for r in default_regions()}
        for target in CROSS_TARGETS:
            print(f"== {CROSS_SOURCE} -> {target}", flush=True)
            results.append(run_cross(by_name[CROSS_SOURCE], by_name[target], args.workdir))
            saved.write_text(json.dumps(results, indent=1))
    if args.rescore:
        saved.write_text(json.dumps(results, indent=1))
    text = report(results)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
