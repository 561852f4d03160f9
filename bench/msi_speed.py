"""MSI speed: the paper's Algorithm 1 as written against the library's batched MSI.

Algorithm 1 (multiscale sigmoid inference) loops over tiles, scales and flips and runs the
network once per (tile, scale, flip): one image pair per forward pass, the sigmoid of each map
resized to the tile and averaged. `kdmsi.inference.msi.multiscale_sigmoid_inference` runs a batch
of tiles per scale with the plain and flipped copies in one forward pass. Both run here in one
process on the same model (a random-init `SiameseCAMNet` whose head is drawn at random, so the
maps are not constant) and the same tiles (cut from `kdmsi.data.synthetic` scenes, fixed seeds).

Printed and written to ``bench/results/msi_speed.md``: seconds and tiles per second of each,
their ratio, the largest absolute difference between their maps, and the share of each one's
time spent outside the model's forward passes (resizing, flipping, sigmoid, accumulation),
measured by timing every forward call. The best of ``--repeats`` runs is kept (the machine
may be shared). Usage::

    .venv/bin/python bench/msi_speed.py [--backbone efficientnet_lite0] [--tile-size 256]
        [--tiles 16] [--batch-size 4] [--device auto] [--precision fp32|bf16|fp16]
        [--out bench/results/msi_speed.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from kdmsi.choices import BACKBONES, DEFAULT_BACKBONE, PRECISIONS
from kdmsi.data.pairs import Normalisation
from kdmsi.data.synthetic import make_scene
from kdmsi.geo.atomic import atomic_output
from kdmsi.inference.msi import DEFAULT_SCALES, multiscale_sigmoid_inference, pick_device
from kdmsi.models import SiameseCAMNet
from kdmsi.runtime.batch_runners import autocast_dtype

RESULTS = Path(__file__).resolve().parent / "results"


class TimedModel(torch.nn.Module):
    """Wraps a logit-map model and adds up the wall time of its forward calls (synchronised
    on CUDA so the time is the model's, not the launch's)."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        super().__init__()
        self.model, self.device = model, device
        self.seconds, self.calls = 0.0, 0

    def forward(self, pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
        _sync(self.device)
        start = time.perf_counter()
        out = self.model(pre, post)
        _sync(self.device)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def algorithm1(
    model: Callable, pre: torch.Tensor, post: torch.Tensor, scales: Sequence[float]
) -> torch.Tensor:
    """The paper's Algorithm 1 as written: for every tile, scale and flip, one forward pass of
    a single pair; sigmoid at the map's resolution, resized to the tile, averaged.

    pre, post: [N, C, H, W] -> [N, 1, H, W].
    """
    n, height, width = pre.shape[0], pre.shape[-2], pre.shape[-1]
    out = torch.zeros(n, 1, height, width, device=pre.device)
    for i in range(n):
        x1, x2 = pre[i : i + 1], post[i : i + 1]
        total = torch.zeros(1, 1, height, width, device=pre.device)
        for scale in scales:
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            a = F.interpolate(x1, size=size, mode="bilinear", align_corners=False)
            b = F.interpolate(x2, size=size, mode="bilinear", align_corners=False)
            for flip in (False, True):
                g = model(a.flip(-1), b.flip(-1)) if flip else model(a, b)
                p = torch.sigmoid(g.flip(-1) if flip else g)
                total += F.interpolate(
                    p, size=(height, width), mode="bilinear", align_corners=False
                )
        out[i] = total[0] / (2 * len(scales))
    return out


@torch.no_grad()
def library_msi(
    model: Callable,
    pre: torch.Tensor,
    post: torch.Tensor,
    scales: Sequence[float],
    batch_size: int,
) -> torch.Tensor:
    """`multiscale_sigmoid_inference` over batches of `batch_size` tiles: [N, 1, H, W]."""
    parts = [
        multiscale_sigmoid_inference(
            model, pre[i : i + batch_size], post[i : i + batch_size], scales, True
        )
        for i in range(0, pre.shape[0], batch_size)
    ]
    return torch.cat(parts)


def make_tiles(count: int, tile: int, bands: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` normalised tile pairs [count, C, tile, tile] from synthetic scenes (seed 7...)."""
    norm = Normalisation.default(bands)
    pre, post = [], []
    seed = 7
    while len(pre) < count:
        scene = make_scene(4 * tile, 4 * tile, seed=seed, bands=bands)
        seed += 1
        for r in range(4):
            for c in range(4):
                window = (
                    slice(None),
                    slice(r * tile, (r + 1) * tile),
                    slice(c * tile, (c + 1) * tile),
                )
                pre.append(norm(scene.pre[window]))
                post.append(norm(scene.post[window]))
    return torch.stack(pre[:count]), torch.stack(post[:count])


def run(args: argparse.Namespace) -> dict:
    """Time both methods (best of `repeats`) and return the figures."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    torch.manual_seed(0)
    net = SiameseCAMNet(args.backbone, "abs").eval()
    torch.nn.init.normal_(net.head.weight, std=1.0)
    timed = TimedModel(net.to(device), device).eval()
    pre, post = make_tiles(args.tiles, args.tile_size)
    pre, post = pre.to(device), post.to(device)
    scales = tuple(args.scales)
    reference = None
    if args.precision != "fp32":  # the float32 map, to report what mixed precision changes
        reference = library_msi(net.to(device), pre, post, scales, args.batch_size)
    dtype = autocast_dtype(args.precision, device)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        return _time_methods(args, timed, pre, post, scales, device, reference)


def _time_methods(args, timed, pre, post, scales, device, reference) -> dict:
    # warm-up: one pass of each at every shape (allocator, cuDNN / oneDNN kernel choice)
    algorithm1(timed, pre[:1], post[:1], scales)
    library_msi(timed, pre[: args.batch_size], post[: args.batch_size], scales, args.batch_size)
    methods = {
        "Algorithm 1 as written (1 pair, 1 scale, 1 flip per forward)": lambda: algorithm1(
            timed, pre, post, scales
        ),
        f"library batched MSI (batch {args.batch_size}, plain + flipped in one forward)": (
            lambda: library_msi(timed, pre, post, scales, args.batch_size)
        ),
    }
    results, outputs = {}, {}
    for name, fn in methods.items():
        best = None
        for _ in range(args.repeats):
            timed.seconds, timed.calls = 0.0, 0
            _sync(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            out = fn()
            _sync(device)
            total = time.perf_counter() - start
            if best is None or total < best["seconds"]:
                best = {
                    "seconds": total,
                    "cpu_seconds": time.process_time() - cpu_start,
                    "forward_seconds": timed.seconds,
                    "forward_calls": timed.calls,
                }
        best["tiles_per_second"] = args.tiles / best["seconds"]
        best["outside_share"] = 1.0 - best["forward_seconds"] / best["seconds"]
        results[name] = best
        outputs[name] = out
        print(
            f"{name}: {best['seconds']:.2f} s, {best['tiles_per_second']:.2f} tiles/s, "
            f"{best['forward_calls']} forward calls, "
            f"{100 * best['outside_share']:.1f} % of the time outside forward passes",
            flush=True,
        )
    first, second = list(outputs.values())
    names = list(results)
    summary = {
        "results": results,
        "ratio": results[names[0]]["seconds"] / results[names[1]]["seconds"],
        "max_abs_diff": float((first - second).abs().max()),
        "max_abs_diff_fp32": (
            None if reference is None else float((second.float() - reference).abs().max())
        ),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "settings": vars(args),
    }
    print(
        f"speed-up of the batched MSI over Algorithm 1: {summary['ratio']:.2f}x; "
        f"max |difference| of the maps: {summary['max_abs_diff']:.2e}",
        flush=True,
    )
    return summary


def markdown(summary: dict) -> str:
    """The results as a Markdown section."""
    s = summary["settings"]
    lines = [
        "# MSI speed: Algorithm 1 as written vs the library's batched MSI",
        "",
        f"`.venv/bin/python bench/msi_speed.py --backbone {s['backbone']} --tile-size "
        f"{s['tile_size']} --tiles {s['tiles']} --batch-size {s['batch_size']} "
        f"--repeats {s['repeats']} --device {s['device']} --precision {s['precision']}"
        + (f" --threads {s['threads']}" if s["threads"] else "")
        + "`",
        "",
        f"Random-init {s['backbone']} `SiameseCAMNet` (output stride 16), {s['tiles']} synthetic "
        f"tiles of {s['tile_size']} px, scales {', '.join(f'{v:g}' for v in s['scales'])} x "
        f"(plain, flipped); device {summary['device']}, {summary['threads']} torch threads, "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}). Best of "
        f"{s['repeats']} runs.",
        "",
        "| method | seconds | CPU s | tiles/s | forward calls | time outside forward passes |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in summary["results"].items():
        lines.append(
            f"| {name} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | "
            f"{r['tiles_per_second']:.2f} | {r['forward_calls']} | "
            f"{100 * r['outside_share']:.1f} % |"
        )
    lines += [
        "",
        f"Speed-up of the batched MSI: **{summary['ratio']:.2f}x**. Largest absolute difference "
        f"between the two methods' maps: {summary['max_abs_diff']:.1e}.",
        "",
    ]
    if summary.get("max_abs_diff_fp32") is not None:
        lines[-1:-1] = [
            f"Precision {s['precision']} (autocast): largest absolute difference of the "
            f"batched MSI map from float32: {summary['max_abs_diff_fp32']:.1e}.",
            "",
        ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--backbone", default=DEFAULT_BACKBONE, choices=BACKBONES, help="random-init trunk"
    )
    parser.add_argument(
        "--precision", default="fp32", choices=PRECISIONS, help="autocast (fp16: CUDA only)"
    )
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--tiles", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--scales", type=lambda t: [float(v) for v in t.split(",")], default=list(DEFAULT_SCALES)
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    parser.add_argument("--out", type=Path, default=RESULTS / "msi_speed.md")
    args = parser.parse_args(argv)
    summary = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(args.out, overwrite=True) as tmp:
        tmp.write_text(markdown(summary), encoding="utf-8")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
