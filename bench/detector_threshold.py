"""The detector threshold's bound from the tiles tagged *not changed*, chosen on the tuning side.

Reads a `real_pairs.py` work folder (its ``results.json`` and, per region, the detector's
probability raster, the truth and the tag grid) and re-thresholds each region's map with
`kdmsi.training.calibration.detector_threshold` at several values of ``not_changed_target``
(the share of the pixels of the tiles tagged not changed that the threshold may mark; None:
the earlier rule, min(0.5, the pseudo labels' share)). The histograms are those of the whole
region's detect map over the tagged tiles, a stand-in for `kdmsi train`'s pass over its
training windows; the label share is the one the run stored. Pooled change IoU, marked share
and the share marked inside tiles tagged not changed are printed per target.

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

TARGETS = (None, 0.002, 0.005, 0.01, 0.02, 0.05)


def _raster(path: Path) -> np.ndarray:
    from osgeo import gdal

    return gdal.Open(str(path)).ReadAsArray()


def region_rows(folder: Path, grid: int) -> Optional[dict]:
    """Per target: [TP, FP, FN, TN], marked [n, all], not-changed marked [n, all]."""
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
    for target in TARGETS:
        value = detector_threshold(hists, label_share, not_changed_target=target)["value"]
        chosen = prob > value
        rows[str(target)] = {
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
        "| not-changed target | pooled change IoU | marked % | true % | in 'not changed' % | "
        + " | ".join(per_region)
        + " |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(per_region),
    ]
    for target in map(str, TARGETS):
        total = np.sum([rows[target]["counts"] for rows in per_region.values()], axis=0)
        marked = np.sum([rows[target]["marked"] for rows in per_region.values()], axis=0)
        inside = np.sum([rows[target]["not_changed"] for rows in per_region.values()], axis=0)
        true = (total[0] + total[2]) / max(total.sum(), 1)
        cells = [
            f"{metrics(np.asarray(rows[target]['counts']))['cIoU']:.3f} "
            f"@{rows[target]['value']:.2f}"
            for rows in per_region.values()
        ]
        lines.append(
            f"| {target} | {metrics(total)['cIoU']:.3f} | {100 * marked[0] / marked[1]:.1f} "
            f"| {100 * true:.1f} | {100 * inside[0] / max(inside[1], 1):.2f} | "
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
