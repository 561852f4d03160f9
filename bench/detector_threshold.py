"""The detector threshold's bound from the tiles tagged *not changed*, chosen on the tuning side.

Reads a `real_pairs.py` work folder (its ``results.json`` and, per region, the detector's
probability raster, the truth and the tag grid) and re-thresholds each region's map with
`kdmsi.training.calibration.detector_threshold` under several rules (`RULES`): the share of
the pseudo labels the detector is calibrated to mark, whether that rule may raise the
threshold above 0.5, and ``not_changed_target``, the share of the pixels of the tiles tagged
not changed the threshold may mark (the earlier rule: min(0.5, the pseudo labels' share)).
The histograms are those of the whole region's detect map over the tagged tiles, which is what
`kdmsi train` reads too (`kdmsi.training.tagged_map`); the label share is the one the run
stored. Pooled change IoU, marked share and the share marked inside tiles tagged not changed
are printed per target.

Only regions of the tuning side may be read for this choice (`real_regions.TUNING`); the
script refuses a folder that holds a reporting-side region.

Usage::

    .venv/bin/python bench/detector_threshold.py /tmp/kdmsi-real-tuning [--markdown out.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_regions import TUNING, counts, metrics, tagged_masks, tile_tags  # noqa: E402

# (name, share_factor, capped at 0.5, not-changed target, how high that bound may raise it)
# of `detector_threshold`
RULES = (
    ("earlier: min(0.5, label share)", 1.0, True, None, 0.9),
    ("min(0.5, label share), not-changed 1 %", 1.0, True, 0.01, 0.9),
    ("min(0.5, label share), not-changed 2 %", 1.0, True, 0.02, 0.9),
    ("min(0.5, label share), not-changed 5 %", 1.0, True, 0.05, 0.9),
    ("min(0.5, label share), not-changed 1 % up to 0.5", 1.0, True, 0.01, 0.5),
    ("min(0.5, label share), not-changed 2 % up to 0.5", 1.0, True, 0.02, 0.5),
    ("label share", 1.0, False, None, 0.9),
    ("0.75 x label share", 0.75, False, None, 0.9),
    ("0.5 x label share", 0.5, False, None, 0.9),
    ("0.75 x label share, not-changed 2 %", 0.75, False, 0.02, 0.9),
)


def _raster(path: Path) -> np.ndarray:
    from osgeo import gdal

    return gdal.Open(str(path)).ReadAsArray()


def region_rows(folder: Path, grid: int) -> Optional[dict]:
    """Per rule: [TP, FP, FN, TN], marked [n, all], not-changed marked [n, all]."""
    from kdmsi.models.checkpoint import read_checkpoint
    from kdmsi.training.calibration import detector_threshold
    from kdmsi.training.tag_check import TileHistograms

    if not (folder / "detector.tif").is_file():
        return None
    truth = _raster(folder / "truth.tif")
    prob = np.nan_to_num(_raster(folder / "detector.tif"))
    stored = read_checkpoint(folder / "detector.kdmsi")["metadata"]["training"]["detector"]
    label_share = stored["threshold"]["label_share"]
    tags = tile_tags(truth, grid)
    hists = TileHistograms()
    for (row, col), tag in tags.items():
        if tag is not None:
            hists.add(prob[row * grid : (row + 1) * grid, col * grid : (col + 1) * grid], tag)
    changed, tagged = tagged_masks(tags, truth.shape, grid)
    not_changed = tagged & ~changed
    rows = {}
    for name, factor, capped, target, limit in RULES:
        value = detector_threshold(
            hists, label_share, not_changed_target=target, share_factor=factor, capped=capped,
            not_changed_limit=limit,
        )["value"]  # fmt: skip
        chosen = prob > value
        rows[name] = {
            "value": value,
            "counts": counts(chosen, truth).tolist(),
            "marked": [int(chosen[truth != 255].sum()), int((truth != 255).sum())],
            "not_changed": [int(chosen[not_changed].sum()), int(not_changed.sum())],
        }
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    results = json.loads((args.workdir / "results.json").read_text())
    sides = {r.get("side", TUNING) for r in results}
    if sides != {TUNING}:
        print(f"{args.workdir} holds regions of another side ({sides}): tuning side only")
        return 2
    per_region = {}
    for r in results:
        if r.get("refused") or r.get("cross") or not r["optical"]:
            continue
        rows = region_rows(args.workdir / r["region"].replace("/", "_"), r["grid"])
        if rows is not None:
            per_region[r["region"]] = rows
    lines = [
        "| rule | pooled change IoU | marked % | true % | worst marked / true "
        "| in 'not changed' % | " + " | ".join(per_region) + " |",
        "|---|---:|---:|---:|---:|---:|" + "---:|" * len(per_region),
    ]
    for name, *_ in RULES:
        chosen = [rows[name] for rows in per_region.values()]
        total = np.sum([row["counts"] for row in chosen], axis=0)
        marked = np.sum([row["marked"] for row in chosen], axis=0)
        inside = np.sum([row["not_changed"] for row in chosen], axis=0)
        true = (total[0] + total[2]) / max(total.sum(), 1)
        worst = max(
            (row["marked"][0] / row["marked"][1])
            / max((row["counts"][0] + row["counts"][2]) / sum(row["counts"]), 1e-9)
            for row in chosen
        )
        cells = [
            f"{metrics(np.asarray(row['counts']))['cIoU']:.3f} @{row['value']:.2f}"
            for row in chosen
        ]
        lines.append(
            f"| {name} | {metrics(total)['cIoU']:.3f} | {100 * marked[0] / marked[1]:.1f} "
            f"| {100 * true:.1f} | {worst:.1f} | {100 * inside[0] / max(inside[1], 1):.2f} | "
            + " | ".join(cells)
            + " |"
        )
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
