"""Tagging curve (issue 16): detector change IoU against the number of tags, when the analyst
tags in the suggested order versus in random order.

For each region (default: LEVIR-CD, 240 tiles of 64 px, the product's default grid;
`real_regions.default_regions`), tags
come from the mask as in `bench/real_pairs.py` (changed: >= 0.5 % of the tile changed,
unchanged: none did, untagged in between: a tile the order reaches but the analyst cannot tag
is skipped and not counted). Orders:

- ``suggested``: `kdmsi tile-grid --suggest` before any tag (the zero-shot order);
- ``active``: the suggested order for the first step, then after each training the order of
  `kdmsi tile-grid --suggest --model` with the detector just trained (least sure first);
- ``random``: three random orders (seeds 0, 1, 2), mean and spread.

At each tag count (10, 20, 40, 80 by default) `kdmsi train` runs at its defaults on a grid
holding only those tags, `detect` maps the whole region, and its polygons' pixels are scored
against the mask (change IoU). A run `train` refuses (fewer than two tiles of a class) scores 0.

Usage::

    .venv/bin/python bench/tagging_curve.py [--regions LEVIR-CD] [--counts 10,20,40,80]
        [--workdir /tmp/kdmsi-curve] [--markdown bench/results/tagging_curve.md]

Skips cleanly (exit 0, one line) when the data folder is absent.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_regions import (  # noqa: E402 - the bench's own helper module, beside this file
    counts,
    default_regions,
    grid_for,
    metrics,
    tile_tags,
    write_region,
    write_tags,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
RANDOM_SEEDS = (0, 1, 2)


def _raster(path: Path) -> np.ndarray:
    from osgeo import gdal

    return gdal.Open(str(path)).ReadAsArray()


def first_tags(order: list, truth_tags: dict, count: int, already: Optional[dict] = None) -> dict:
    """The tags an analyst following ``order`` has after ``count`` tags (tiles the mask leaves
    in between are skipped), on top of ``already``."""
    tags = dict(already or {})
    for cell in order:
        if len(tags) >= count:
            break
        if cell not in tags and truth_tags.get(cell) is not None:
            tags[cell] = truth_tags[cell]
    return tags


def train_and_score(
    paths: dict, grid: int, tags: dict, folder: Path, truth: np.ndarray, vote: Optional[float]
) -> dict:
    """`kdmsi train` on a fresh grid holding ``tags``, detect, score; 0 when refused."""
    from kdmsi.detect.with_model import detect_changes
    from kdmsi.geo.tile_layer import make_tile_grid
    from kdmsi.training.from_tags import TagTrainingConfig, train_from_tags

    folder.mkdir(parents=True, exist_ok=True)
    grid_path = make_tile_grid(paths["before"], paths["after"], folder / "tiles.gpkg", grid, True)
    changed, unchanged = write_tags(grid_path, tags)
    row = {"tags": len(tags), "changed": changed, "unchanged": unchanged}
    start = time.perf_counter()
    try:
        config = TagTrainingConfig()
        if vote is not None:  # --feature-vote; None: the product's default
            config.feature_vote = vote
        train_from_tags(paths["before"], paths["after"], grid_path, folder / "detector.kdmsi",
                        config, overwrite=True)  # fmt: skip
    except ValueError as exc:  # too few tags of a class, degenerate pseudo labels
        row.update(cIoU=0.0, refused=" ".join(str(exc).split())[:200])
        return row
    row["train_s"] = round(time.perf_counter() - start, 1)
    result = detect_changes(
        paths["before"], paths["after"], folder / "detector.kdmsi", folder / "changes.gpkg",
        folder / "detector.tif", overwrite=True,
    )  # fmt: skip
    score = _raster(folder / "detector.tif")
    row["cIoU"] = metrics(counts(score >= result.threshold, truth))["cIoU"]
    return row


def suggested_order(paths: dict, grid: int, tags: dict, model: Optional[Path]) -> list:
    from kdmsi.detect.suggest import suggest_tiles

    suggestions = suggest_tiles(paths["before"], paths["after"], grid, tags=tags, model=model)
    ranked = sorted((s.rank, c) for c, s in suggestions.tiles.items() if s.rank is not None)
    return [cell for _, cell in ranked]


def run_region(data: Path, region, work: Path, steps: list[int], vote: Optional[float]) -> dict:
    folder = work / region.name.replace("/", "_")
    paths = write_region(data, region, folder)
    truth = _raster(paths["truth"])
    grid = grid_for(truth.shape, "auto")  # the product's default grid
    truth_tags = tile_tags(truth, grid)
    cells = sorted(truth_tags)
    curves: dict[str, list[dict]] = {}
    zero_shot = suggested_order(paths, grid, {}, None)
    curves["suggested"] = [
        train_and_score(
            paths,
            grid,
            first_tags(zero_shot, truth_tags, n),
            folder / f"suggested_{n}",
            truth,
            vote,
        )
        for n in steps
    ]
    print(f"{region.name} suggested: {[r['cIoU'] for r in curves['suggested']]}", flush=True)
    tags: dict = {}
    active = []
    for k, n in enumerate(steps):
        model = folder / f"active_{steps[k - 1]}" / "detector.kdmsi" if k else None
        usable = model is not None and model.is_file()
        order = suggested_order(paths, grid, tags, model if usable else None)
        tags = first_tags(order, truth_tags, n, tags)
        active.append(train_and_score(paths, grid, tags, folder / f"active_{n}", truth, vote))
    curves["active"] = active
    print(f"{region.name} active: {[r['cIoU'] for r in active]}", flush=True)
    for seed in RANDOM_SEEDS:
        order = cells[:]
        random.Random(seed).shuffle(order)
        curves[f"random_{seed}"] = [
            train_and_score(
                paths,
                grid,
                first_tags(order, truth_tags, n),
                folder / f"random{seed}_{n}",
                truth,
                vote,
            )
            for n in steps
        ]
        print(f"{region.name} random {seed}: {[r['cIoU'] for r in curves[f'random_{seed}']]}")
    return {"region": region.name, "steps": steps, "tiles": len(cells), "curves": curves}


def table(results: list[dict]) -> str:
    lines = []
    for res in results:
        steps = res["steps"]
        lines += [
            f"### {res['region']} ({res['tiles']} tiles)\n",
            "| order | " + " | ".join(f"{n} tags" for n in steps) + " |",
            "|---|" + "---:|" * len(steps),
        ]
        for name in ("suggested", "active"):
            cells = [_cell(r) for r in res["curves"][name]]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        randoms = [res["curves"][f"random_{s}"] for s in RANDOM_SEEDS]
        cells = []
        for k in range(len(steps)):
            values = np.array([curve[k]["cIoU"] for curve in randoms])
            cells.append(f"{values.mean():.3f} ± {values.std():.3f}")
        lines.append("| random (3 orders) | " + " | ".join(cells) + " |")
        lines.append("\n(changed/unchanged tags in brackets; 0 with a note: `train` refused)\n")
    return "\n".join(lines)


def _cell(row: dict) -> str:
    text = f"{row['cIoU']:.3f} ({row['changed']}/{row['unchanged']})"
    return text + (" refused" if row.get("refused") else "")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/kdmsi-curve"))
    parser.add_argument("--regions", default="LEVIR-CD")
    parser.add_argument("--counts", default="10,20,40,80")
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--feature-vote", type=float, help="default: the product's")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"tagging_curve: skipped, no data folder {args.data}")
        return 0
    steps = [int(v) for v in args.counts.split(",")]
    wanted = args.regions.split(",")
    results = []
    for region in default_regions():
        if region.name in wanted:
            results.append(run_region(args.data, region, args.workdir, steps, args.feature_vote))
            (args.workdir / "results.json").write_text(json.dumps(results, indent=1))
    text = table(results)
    print(text)
    if args.markdown:
        vote = "" if args.feature_vote is None else f" --feature-vote {args.feature_vote}"
        args.markdown.write_text(
            "# Tagging curve: suggested vs random tag order\n\n"
            f"`.venv/bin/python bench/tagging_curve.py --regions {args.regions} --counts "
            f"{args.counts}{vote}`, 2 CPU cores, `kdmsi train` at its defaults.\n\n" + text + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
