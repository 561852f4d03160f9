"""The training-free change map (`kdmsi detect --zero-shot`, issue 16) against naive
differencing, on the real regions, through the product's own detect path.

For every optical region of `real_regions.default_regions` the region is written as a
georeferenced raster pair (`real_regions.write_region`) and `kdmsi.detect.zero_shot.
detect_zero_shot` makes its polygons and its map, exactly as an analyst would run it. Printed
side by side, on the same pixels and scorer: naive differencing (mean absolute difference over
the bands) at its best threshold against the truth (an oracle), the zero-shot polygons at the
product's own threshold (`ZERO_SHOT_THRESHOLD`, no truth), the zero-shot map at its oracle
threshold, and at the threshold a leave-one-region-out choice would have made (the best
pooled constant over the other regions: how much the shipped constant owes to having seen the
region). Pooled figures sum TP, FP and FN over the regions, as `bench/real_pairs.py` does.

Usage::

    .venv/bin/python bench/zero_shot.py [--data ../shared/data/real] [--workdir /tmp/kdmsi-zs]
        [--markdown bench/results/zero_shot.md]

Skips cleanly (exit 0, one line) when the data folder is absent.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_regions import (  # noqa: E402 - the bench's own helper module, beside this file
    TUNING,
    best_threshold_counts,
    counts,
    default_regions,
    load_region,
    metrics,
    naive_difference,
    write_region,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
GRID = np.round(np.arange(0.20, 0.60, 0.01), 2)  # constants for the leave-one-out choice


def _raster(path: Path) -> np.ndarray:
    from osgeo import gdal

    return gdal.Open(str(path)).ReadAsArray()


def run_region(data: Path, region, folder: Path) -> dict:
    """Zero-shot detect on one region; its counts at the product's threshold, at the oracle,
    at every constant of `GRID`, and naive differencing's oracle counts."""
    from kdmsi.detect.zero_shot import detect_zero_shot

    paths = write_region(data, region, folder)
    start = time.perf_counter()
    result = detect_zero_shot(
        paths["before"],
        paths["after"],
        folder / "zero_shot.gpkg",
        folder / "zero_shot.tif",
        bands=list(region.bands) if region.bands else None,
        overwrite=True,
    )
    seconds = time.perf_counter() - start
    before, after, truth = load_region(data, region)
    score = np.nan_to_num(_raster(folder / "zero_shot.tif").astype(np.float32), nan=0.0)
    oracle_t, oracle = best_threshold_counts(score, truth)
    return {
        "region": region.name,
        "naive_oracle": best_threshold_counts(naive_difference(before, after), truth)[1],
        "own": counts(score >= result.threshold, truth),
        "oracle": oracle,
        "oracle_t": oracle_t,
        "grid": np.array([counts(score >= t, truth) for t in GRID]),
        "threshold": result.threshold,
        "polygons": result.polygon_count,
        "seconds": seconds,
        "pixels": truth.size,
    }


def leave_one_out(rows: list[dict]) -> list[np.ndarray]:
    """Per region: its counts at the constant with the best pooled IoU over the others."""
    out = []
    for k, row in enumerate(rows):
        others = sum(r["grid"] for j, r in enumerate(rows) if j != k)
        best = int(np.argmax([metrics(c)["cIoU"] for c in others]))
        out.append(row["grid"][best])
    return out


def table(rows: list[dict]) -> str:
    loo = leave_one_out(rows)
    lines = [
        "| region | naive diff, oracle | zero-shot, own threshold | zero-shot, oracle "
        "| zero-shot, leave-one-out | polygons | s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row, held in zip(rows, loo):
        cells = [
            f"{metrics(row['naive_oracle'])['cIoU']:.3f}",
            f"{metrics(row['own'])['cIoU']:.3f}",
            f"{metrics(row['oracle'])['cIoU']:.3f} (at {row['oracle_t']:.2f})",
            f"{metrics(held)['cIoU']:.3f}",
            str(row["polygons"]),
            f"{row['seconds']:.1f}",
        ]
        lines.append(f"| {row['region']} | " + " | ".join(cells) + " |")
    pooled = [sum(r[k] for r in rows) for k in ("naive_oracle", "own", "oracle")] + [sum(loo)]
    lines.append(
        "| **pooled** | " + " | ".join(f"**{metrics(c)['cIoU']:.3f}**" for c in pooled) + " | | |"
    )
    pixels = sum(r["pixels"] for r in rows)
    seconds = sum(r["seconds"] for r in rows)
    threshold = rows[0]["threshold"] if rows else float("nan")
    lines.append(
        f"\nown threshold {threshold:.2f}; `detect --zero-shot` took {seconds:.1f} s for "
        f"{pixels / 1e6:.1f} Mpx on this machine (trunk load, tiles, polygons)"
    )
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/kdmsi-zs"))
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"zero_shot: skipped, no data folder {args.data}")
        return 0
    rows = []
    for region in default_regions():
        if region.optical and region.side == TUNING:  # the constant is a choice: tuning side
            rows.append(run_region(args.data, region, args.workdir / region.name.replace("/", "_")))
            print(f"{region.name}: {rows[-1]['seconds']:.1f} s", file=sys.stderr)
    text = table(rows)
    print(text)
    if args.markdown:
        args.markdown.write_text(
            "# Zero-shot change map (`kdmsi detect --zero-shot`) vs naive differencing\n\n"
            "`.venv/bin/python bench/zero_shot.py`, 2 CPU cores; the optical regions of "
            "`bench/real_regions.py`.\n\n" + text + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
