"""Past one process: 1 vs 2 processes on this machine, for training (torchrun + PyTorch DDP)
and for `kdmsi detect-batch` (Dask), with the equality checks in the same run.

Training (``--train``): `kdmsi train-cd` on a synthetic tile folder (`kdmsi.data.synthetic`,
64 px tiles, the default EfficientNet-Lite0 detector, ImageNet weights) as one plain process
(the baseline: today's command, with every core) and under ``torchrun --nproc-per-node 1|2``
(gloo; one torch thread per rank, as torchrun sets OMP_NUM_THREADS=1). Figures: optimiser
steps per second of the training loop (the epochs' wall time from the model file's history
timing, process start and model loading excluded), samples per second, scaling efficiency
T1 / (N x TN) against the 1-rank torchrun run on the same global batch, and the all-reduce
share (the seconds of one gloo all-reduce of the trainable gradients, timed apart on 2 ranks,
x steps / the 2-rank loop's seconds). Equality: `tests/training/test_distributed.py`'s check
(one optimiser step on 2 ranks x batch B = 1 rank x batch 2B, max |w| difference).

Detect (``--detect``): ``--pairs`` synthetic pairs of ``--size`` px (`detect_bench.write_pair`)
with a random-init EfficientNet-Lite0 detector (the head `kdmsi train` gives it): each pair by
`detect_changes` in one fresh process (the baseline: today's `kdmsi detect`, torch on every
core), then `detect_batch` on a local cluster of 1 and 2 workers (one thread each; started
before the clock, so the figures are the work's, not the cluster's start). Figures: tile pairs
per second (of the pairs' grids; row blocks run their halo tile rows twice, see "tiles run"),
pairs per hour, peak RSS per process (VmHWM; the workers' asked of them at the end).
Equality: every pair of every run, and one pair cut into 4 row blocks, against the one-process
probability raster (max |difference|) and polygons (count and total area).

Usage::

    nice -n 5 .venv/bin/python bench/scale_out.py --workdir /tmp/kdmsi-scale \\
        [--train] [--detect] [--pairs 4] [--size 2048] [--markdown bench/results/scale_out.md]

Figures depend on the machine and on what else runs on it; compare within one run.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench's own helpers

from detect_bench import write_pair  # noqa: E402
from detect_speed import export_models  # noqa: E402

TILE, OVERLAP = 256, 64
BACKBONE = "efficientnet_lite0"


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss, not inherited from the parent that
    forked it, as Dask's worker processes are)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _pairs(workdir: Path, count: int, size: int) -> list[tuple[str, Path, Path]]:
    """``count`` copies of one synthetic pair (the cost per tile is what is measured)."""
    import shutil

    first = workdir / "p0"
    first.mkdir(parents=True, exist_ok=True)
    before, after = write_pair(size, first)
    pairs = [("p0", before, after)]
    for i in range(1, count):
        folder = workdir / f"p{i}"
        folder.mkdir(exist_ok=True)
        pairs.append((f"p{i}", *(Path(shutil.copy(p, folder)) for p in (before, after))))
    return pairs


def _compare(prob_a: Path, prob_b: Path, vec_a: Path, vec_b: Path) -> tuple[float, bool]:
    """Max |difference| of two probability rasters; polygons equal in count and total area."""
    import fiona
    from osgeo import gdal

    a = gdal.Open(str(prob_a)).ReadAsArray()
    b = gdal.Open(str(prob_b)).ReadAsArray()
    areas = []
    for path in (vec_a, vec_b):
        with fiona.open(str(path)) as src:
            areas.append([f["properties"]["area_m2"] for f in src])
    same = len(areas[0]) == len(areas[1]) and bool(np.isclose(sum(areas[0]), sum(areas[1])))
    return float(np.abs(a - b).max()), same


def detect_section(workdir: Path, count: int, size: int, workers: list[int]) -> dict[str, Any]:
    """One-process detect vs detect-batch on 1..N workers, with the equality checks."""
    import distributed

    from kdmsi.detect.batch import detect_batch
    from kdmsi.detect.batch_pairs import PairJob
    from kdmsi.detect.batch_tasks import BatchSettings
    from kdmsi.detect.blocks import block_tiles, row_blocks
    from kdmsi.geo.tiling import tile_grid

    workdir.mkdir(parents=True, exist_ok=True)
    model = Path(export_models(workdir, [BACKBONE], ["torch"])[f"{BACKBONE}/torch"])
    pairs = _pairs(workdir, count, size)
    tiles = len(tile_grid(size, size, TILE, OVERLAP)) * count
    rows, checks = [], []
    single = workdir / "single"
    single.mkdir(exist_ok=True)
    seconds, rss = _one_process(pairs, model, single)
    rows.append(_row("kdmsi detect, one process", 1, tiles, tiles, count, seconds, [rss]))
    jobs = [PairJob(name, before, after, model) for name, before, after in pairs]
    runs = [(n, BatchSettings(runtime="torch", device="cpu"), jobs) for n in workers]
    split = BatchSettings(runtime="torch", device="cpu", block_rows=max(TILE, size // 4))
    runs.append((max(workers), split, jobs[:1]))
    for n, settings, batch in runs:
        out = workdir / f"batch-{n}-{settings.block_rows}"
        out.mkdir(exist_ok=True)
        with distributed.LocalCluster(
            n_workers=n, threads_per_worker=1, dashboard_address=None,
            silence_logs=logging.CRITICAL,
        ) as cluster, distributed.Client(cluster) as client:  # fmt: skip
            start = time.perf_counter()
            outcomes = detect_batch(
                batch, out, settings, scheduler=cluster.scheduler_address, overwrite=True
            )
            seconds = time.perf_counter() - start
            rss = list(client.run(_peak_rss_mb).values())
        assert all(o.status == "done" for o in outcomes), outcomes
        blocks = "" if settings is not split else ", 4 row blocks"
        label = f"detect-batch, {n} worker{'s' if n > 1 else ''}{blocks}"
        ran = sum(
            block_tiles(size, size, TILE, OVERLAP, rows_)
            for rows_ in row_blocks(size, TILE, OVERLAP, settings.block_rows)
        ) * len(batch)  # fmt: skip
        rows.append(_row(label, n, tiles * len(batch) // count, ran, len(batch), seconds, rss))
        for job in batch:
            diff, same = _compare(
                single / f"{job.name}_probability.tif", job.probability(out),
                single / f"{job.name}.gpkg", job.vector(out),
            )  # fmt: skip
            checks.append({"run": label, "pair": job.name, "max_abs_diff": diff, "polygons": same})
    return {"rows": rows, "checks": checks, "tiles_per_pair": tiles // count, "size": size}


def _one_process(pairs: list, model: Path, out: Path) -> tuple[float, float]:
    """Every pair by `detect_changes` in one fresh process (today's `kdmsi detect`, torch on
    every core): (seconds, peak RSS in MB)."""
    code = (
        "import json, sys, time\n"
        "from pathlib import Path\n"
        "from kdmsi.detect.process_tuning import tune_process_for_detect\n"
        "tune_process_for_detect()\n"
        "from kdmsi.detect.with_model import detect_changes\n"
        "pairs, model, out = json.loads(sys.argv[1])\n"
        "start = time.perf_counter()\n"
        "for name, before, after in pairs:\n"
        "    detect_changes(before, after, model, Path(out) / f'{name}.gpkg',\n"
        "        Path(out) / f'{name}_probability.tif', runtime='torch', device='cpu',\n"
        "        overwrite=True)\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
        "print(json.dumps([time.perf_counter() - start, int(hwm.split()[1]) / 1024]))\n"
    )
    spec = json.dumps([[[n, str(b), str(a)] for n, b, a in pairs], str(model), str(out)])
    run = subprocess.run(
        [sys.executable, "-c", code, spec], capture_output=True, text=True, check=True
    )
    seconds, rss = json.loads(run.stdout.strip().splitlines()[-1])
    return seconds, rss


def _row(
    label: str, n: int, tiles: int, ran: int, pairs: int, seconds: float, rss: list[float]
) -> dict:
    """``tiles``: the pairs' grids; ``ran``: tiles run (row blocks run their halo twice)."""
    return {
        "run": label,
        "processes": n,
        "tiles": tiles,
        "tiles_run": ran,
        "seconds": round(seconds, 1),
        "tile_pairs_per_s": round(tiles / seconds, 2),
        "pairs_per_hour": round(pairs * 3600 / seconds, 1),
        "peak_rss_mb": round(max(rss)),
    }


def detect_table(result: dict[str, Any]) -> str:
    base = result["rows"][0]["tile_pairs_per_s"]
    lines = [
        f"Detect, {result['size']} px pairs ({result['tiles_per_pair']} tiles of {TILE} px each), "
        "random-init EfficientNet-Lite0 detector, CPU:",
        "",
        "| run | processes | tiles run | tile pairs/s | vs one process | pairs/hour | peak RSS "
        "per process (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['run']} | {r['processes']} | {r['tiles_run']} | {r['tile_pairs_per_s']:.2f} | "
            f"{r['tile_pairs_per_s'] / base:.2f}x | {r['pairs_per_hour']:.0f} | "
            f"{r['peak_rss_mb']} |"
        )
    worst = max(c["max_abs_diff"] for c in result["checks"])
    same = all(c["polygons"] for c in result["checks"])
    verdict = "PASS" if worst <= 1e-6 and same else "FAIL"
    lines += [
        "",
        f"Equality with one-process detect ({len(result['checks'])} outputs): max |probability "
        f"difference| {worst:.1e} (<= 1e-6), polygons equal in count and area: {same} "
        f"-> {verdict}",
    ]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--train", action="store_true", help="run the training section")
    parser.add_argument("--detect", action="store_true", help="run the detect section")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--markdown", type=Path, help="also write the tables here")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    both = not (args.train or args.detect)
    tables = []
    if args.train or both:
        from scale_out_train import train_section, train_table

        tables.append(train_table(train_section(args.workdir / "train")))
        print(tables[-1], flush=True)
    if args.detect or both:
        tables.append(
            detect_table(detect_section(args.workdir / "detect", args.pairs, args.size, [1, 2]))
        )
        print(tables[-1], flush=True)
    if args.markdown:
        args.markdown.write_text("\n\n".join(tables) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
