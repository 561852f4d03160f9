"""Throughput and memory of the detect path (`kdmsi.detect.with_model`) on synthetic raster pairs.

For each run (raster size, model) it prints, from one fresh subprocess per run:

* end-to-end pixels per second of `detect_with_predictor` / `detect_changes` (align, read,
  stretch, normalise, model, stitch, probability GeoTIFF, polygonize, vector output), as a
  ratio of the model's own forward throughput on the same tiles (the same windows, prepared
  the same way, only the forward timed; for big grids a sample of tiles, scaled to the grid);
* peak resident memory (VmHWM) of that subprocess, next to its RSS just before the detect
  call and the size the whole raster pair / probability map would take in memory. The runs
  use GDAL_CACHEMAX=256 MB, as `kdmsi detect` does unless GDAL_CACHEMAX is set (GDAL's
  default cache, 5 % of the RAM, fills up on big rasters and dominates the figure otherwise).

Default runs: 1024^2 with a random-init ResNet-18 DeepLabV3+ detector (tiles 256, batch 4),
1024^2 and 16384^2 with the cheap "oracle" model (|post - pre| smoothed over 5 x 5 px, a few
element-wise torch ops), because a ResNet over 16k^2 px takes hours on a 2-core CPU. Every
figure line names its model. The pairs are written block by block (a 2048^2
`kdmsi.data.synthetic.make_scene` rotated/flipped per block), never held whole in memory.

Usage::

    .venv/bin/python bench/detect_bench.py [--small 1024] [--large 16384] [--workdir DIR]

Ratios, not pass/fail: the figures depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

SCENE_BLOCK = 2048
TILE, OVERLAP = 256, 64
BATCH = {"detector": 4, "oracle": 16}
MODEL_LABEL = {
    "detector": "random-init ResNet-18 Siamese DeepLabV3+ (kdmsi detector checkpoint)",
    "oracle": "oracle: sigmoid of 5x5-smoothed mean |post - pre| (no network)",
}
CACHE_MB = 256  # GDAL_CACHEMAX of the workers, as `kdmsi detect` sets it (unless set already)
SAMPLE_TILES = 48  # tiles timed for the model-only figure when the grid is larger


# ------------------------------------------------------------------------------ raster pair


def write_pair(size: int, folder: Path) -> tuple[Path, Path]:
    """Write before.tif / after.tif of ``size`` x ``size`` px (3 x uint8, EPSG:32633, 0.5 m).

    Built from one `make_scene` of min(size, 2048) px, rotated/flipped per block so that
    neighbouring blocks differ; only one block of each date is in memory at a time.
    """
    from osgeo import gdal

    from kdmsi.data.synthetic import make_scene

    gdal.UseExceptions()
    block = min(size, SCENE_BLOCK)
    scene = make_scene(block, block, seed=7)
    paths = (folder / "before.tif", folder / "after.tif")
    options = ["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "BIGTIFF=IF_NEEDED"]
    driver = gdal.GetDriverByName("GTiff")
    datasets = [driver.Create(str(p), size, size, 3, gdal.GDT_Byte, options=options) for p in paths]
    for ds in datasets:
        ds.SetGeoTransform(scene.geotransform)
        ds.SetProjection(scene.crs_wkt)
    for by in range(0, size, block):
        for bx in range(0, size, block):
            variant = (by // block * 5 + bx // block * 3) % 8
            for ds, image in zip(datasets, (scene.pre, scene.post)):
                arr = np.rot90(image, variant % 4, axes=(1, 2))
                arr = arr[:, :, ::-1] if variant >= 4 else arr
                h, w = min(block, size - by), min(block, size - bx)
                ds.WriteRaster(bx, by, w, h, np.ascontiguousarray(arr[:, :h, :w]).tobytes())
    for ds in datasets:
        ds.FlushCache()
    datasets.clear()
    return paths


# ------------------------------------------------------------------------- worker process


def oracle(pre, post):
    """[B, C, T, T] normalised pairs -> [B, 1, T, T]: a smoothed |post - pre| detector."""
    import torch
    import torch.nn.functional as F

    d = (post - pre).abs().mean(dim=1, keepdim=True)
    d = F.avg_pool2d(d, 5, stride=1, padding=2, count_include_pad=False)
    return torch.sigmoid(8.0 * (d - 0.6))


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return -1


def _detector_checkpoint(folder: Path) -> Path:
    import torch

    from kdmsi.data.pairs import Normalisation
    from kdmsi.models import SiameseDeepLabV3Plus
    from kdmsi.models.checkpoint import save_detector

    torch.manual_seed(0)
    net = SiameseDeepLabV3Plus("resnet18", in_channels=3)
    return save_detector(folder / "detector.kdmsi", net, [1, 2, 3], Normalisation.default(3), TILE)


def _model_only_seconds(
    before: Path, after: Path, predict, batch_size: int, tiles_computed: int
) -> tuple[float, int]:
    """Forward time of ``predict`` over the grid's tiles (a sample, scaled) and tiles timed."""
    import torch

    from kdmsi.data.pairs import Normalisation
    from kdmsi.data.tile_prep import TilePreparer
    from kdmsi.geo.align import align_pair
    from kdmsi.geo.raster import gdal_exceptions
    from kdmsi.geo.stretch import pair_stretches
    from kdmsi.geo.tiling import tile_grid
    from kdmsi.runtime.batch_runners import forward_batch

    device = torch.device("cpu")
    with gdal_exceptions(), align_pair(before, after) as pair:
        prepare = TilePreparer(pair, pair_stretches(pair), Normalisation.default(3))
        windows = tile_grid(pair.width, pair.height, TILE, OVERLAP)
        step = max(1, len(windows) // SAMPLE_TILES)
        sample = windows[::step][:SAMPLE_TILES]
        seconds, timed = 0.0, 0
        for i in range(0, len(sample), batch_size):
            tiles = [t for t in (prepare(w) for w in sample[i : i + batch_size]) if t is not None]
            if not tiles:
                continue
            pre = np.stack([t[0] for t in tiles])
            post = np.stack([t[1] for t in tiles])
            start = time.perf_counter()
            forward_batch(predict, pre, post, device)
            seconds += time.perf_counter() - start
            timed += len(tiles)
    return seconds / max(timed, 1) * tiles_computed, timed


def worker(before: Path, after: Path, model: str, out: Path) -> dict[str, Any]:
    """One measured run in this (fresh) process; returns the figures as a dict."""
    import torch

    from kdmsi.data.pairs import Normalisation
    from kdmsi.detect.with_model import detect_changes
    from kdmsi.detect.with_runner import detect_with_predictor
    from kdmsi.models.checkpoint import load_checkpoint
    from kdmsi.runtime.batch_runners import forward_batch, model_predictor

    torch.manual_seed(0)
    batch = BATCH[model]
    if model == "detector":
        checkpoint = _detector_checkpoint(out)
        net, _ = load_checkpoint(checkpoint)
        predict = model_predictor(net, "detector")
    else:
        predict = oracle
    warm = np.zeros((batch, 3, TILE, TILE), np.float32)
    forward_batch(predict, warm, warm, torch.device("cpu"))  # one-off kernel set-up, not timed
    rss_before = _status_kb("VmRSS")
    start = time.perf_counter()
    kwargs = dict(tile_size=TILE, overlap_px=OVERLAP, batch_size=batch, overwrite=True)
    if model == "detector":
        result = detect_changes(
            before, after, checkpoint, out / "changes.gpkg", device="cpu", **kwargs
        )
    else:
        result = detect_with_predictor(
            before,
            after,
            predict,
            Normalisation.default(3),
            out / "changes.gpkg",
            threshold=0.5,
            **kwargs,
        )
    wall = time.perf_counter() - start
    peak = _status_kb("VmHWM")
    model_s, timed = _model_only_seconds(before, after, predict, batch, result.tiles_computed)
    return {
        "model": model,
        "width": result.width,
        "height": result.height,
        "tiles": result.tiles,
        "tiles_computed": result.tiles_computed,
        "tiles_timed_model_only": timed,
        "polygons": result.polygon_count,
        "wall_s": wall,
        "timing_s": result.timing_s,
        "model_only_s": model_s,
        "rss_before_kb": rss_before,
        "peak_kb": peak,
        "torch_threads": torch.get_num_threads(),
    }


# -------------------------------------------------------------------------------- reporting


def run_worker(before: Path, after: Path, model: str, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--worker", model, str(before), str(after), str(out)]
    env = {**os.environ, "GDAL_CACHEMAX": os.environ.get("GDAL_CACHEMAX", str(CACHE_MB))}
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _mib(kb: float) -> str:
    return f"{kb / 1024:,.0f} MiB"


def describe(figures: dict[str, Any]) -> str:
    w, h = figures["width"], figures["height"]
    px = w * h
    e2e = px / figures["wall_s"]
    model = px / max(figures["model_only_s"], 1e-9)
    t = figures["timing_s"]
    stages = ", ".join(
        f"{k} {t[k]:.1f}s"
        for k in ("align", "stretch", "tiles", "predict", "polygonize", "write")
        if k in t
    )
    pair_kb, prob_kb = px * 3 * 2 / 1024, px * 4 / 1024
    grown_kb = figures["peak_kb"] - figures["rss_before_kb"]
    return "\n".join(
        [
            f"{w} x {h} px, model = {MODEL_LABEL[figures['model']]}",
            f"  tiles {figures['tiles']} ({figures['tiles_computed']} computed), "
            f"tile {TILE} overlap {OVERLAP} batch {BATCH[figures['model']]}, "
            f"{figures['torch_threads']} torch threads, {figures['polygons']} polygons",
            f"  end-to-end   {e2e / 1e6:8.3f} Mpx/s  ({figures['wall_s']:.1f} s: {stages})",
            f"  model only   {model / 1e6:8.3f} Mpx/s  (forward over the same tiles, "
            f"{figures['tiles_timed_model_only']} timed, {figures['model_only_s']:.1f} s "
            "for the grid)",
            f"  RATIO end-to-end / model-only throughput = {e2e / model:.2f}",
            f"  peak RSS {_mib(figures['peak_kb'])} (RSS before detect "
            f"{_mib(figures['rss_before_kb'])}, so +{_mib(grown_kb)}"
            f"); whole pair in memory would be {_mib(pair_kb)}, the float32 probability map "
            f"{_mib(prob_kb)}",
        ]
    )


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=1024, help="small raster edge (px)")
    parser.add_argument("--large", type=int, default=16384, help="large raster edge (px)")
    parser.add_argument("--large-model", choices=sorted(MODEL_LABEL), default="oracle")
    parser.add_argument("--workdir", help="where the pairs go (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the generated rasters")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        model, before, after, out = args.worker
        print(json.dumps(worker(Path(before), Path(after), model, Path(out))))
        return 0

    root = Path(args.workdir or tempfile.mkdtemp(prefix="kdmsi-bench-"))
    runs = [(args.small, "detector"), (args.small, "oracle"), (args.large, args.large_model)]
    print(
        f"kdmsi detect bench: {os.cpu_count()} CPUs, GDAL_CACHEMAX "
        f"{os.environ.get('GDAL_CACHEMAX', CACHE_MB)} MB in the runs (as kdmsi detect)"
    )
    try:
        pairs: dict[int, tuple[Path, Path]] = {}
        for size, model in runs:
            if size not in pairs:
                folder = root / f"pair_{size}"
                folder.mkdir(parents=True, exist_ok=True)
                start = time.perf_counter()
                pairs[size] = write_pair(size, folder)
                print(
                    f"[wrote the {size}^2 pair in {time.perf_counter() - start:.0f} s]", flush=True
                )
            figures = run_worker(*pairs[size], model, root / f"out_{size}_{model}")
            print(describe(figures), flush=True)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
