"""Is a training-free change map worth building (issue 16)? Measured before building it.

For every optical region of `real_regions.default_regions`, the pretrained EfficientNet-Lite0
trunk (ImageNet weights, the product's default) sees the before and the after image; the map
is 1 - cosine similarity of their features at each pyramid level (strides 4, 8, 16 and the
head), upsampled to the pixels and averaged over the levels. Beside it, on the same pixels and
scorer: naive differencing (mean absolute difference over the bands). Both are scored at
their best threshold against the truth (an oracle: the upper bound of each) and the feature
map also at Otsu's threshold of its own histogram (no truth). Pooled figures sum TP, FP and
FN over the regions, as `bench/real_pairs.py` does.

Usage::

    .venv/bin/python bench/zero_shot.py [--data ../shared/data/real] [--markdown out.md]

Skips cleanly (exit 0, one line) when the data folder is absent.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_regions import (  # noqa: E402 - the bench's own helper module, beside this file
    best_threshold_counts,
    counts,
    default_regions,
    load_region,
    metrics,
    naive_difference,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def feature_distance(
    before: np.ndarray, after: np.ndarray, levels: Sequence[int] = (0, 1, 2, 3)
) -> np.ndarray:
    """1 - cosine similarity of the pretrained trunk's features, averaged over its pyramid
    levels (0-3: strides 4, 8, 16 and the head), upsampled to the pixels: float32 [H, W] in
    [0, 1]."""
    import torch
    import torch.nn.functional as F

    from kdmsi.data.normalisation import Normalisation
    from kdmsi.models.efficientnet import EfficientNetLiteTrunk

    trunk = EfficientNetLiteTrunk(weights="imagenet").eval()
    norm = Normalisation.default(3)
    mean = torch.tensor(norm.mean).view(1, 3, 1, 1)
    std = torch.tensor(norm.std).view(1, 3, 1, 1)
    pair = torch.from_numpy(np.stack([before[:3], after[:3]]).astype(np.float32) / 255.0)
    pair = (pair - mean) / std
    height, width = before.shape[-2:]
    total = torch.zeros(1, 1, height, width)
    with torch.inference_mode():
        taps = trunk.pyramid(pair)
        for level in (taps[i] for i in levels):
            similarity = F.cosine_similarity(level[0:1], level[1:2], dim=1, eps=1e-6)[:, None]
            distance = (1.0 - similarity).clamp(0.0, 2.0) / 2.0
            total += F.interpolate(distance, (height, width), mode="bilinear", align_corners=False)
    return (total / len(levels))[0, 0].numpy()


def otsu(score: np.ndarray) -> float:
    """Otsu's threshold of ``score`` in [0, 1], as kdmsi computes it for pseudo labels."""
    from kdmsi.inference.thresholds import HIST_BINS, otsu_threshold

    return otsu_threshold(np.histogram(score, HIST_BINS, (0.0, 1.0))[0])


def run(data: Path, levels: Sequence[int], mix: bool = False) -> list[dict]:
    rows = []
    for region in default_regions():
        if not region.optical:
            continue
        before, after, truth = load_region(data, region)
        start = time.perf_counter()
        zero = feature_distance(before, after, levels)
        seconds = time.perf_counter() - start
        naive = naive_difference(before, after)
        if mix:  # geometric mean with the pixel difference scaled to its 99th percentile
            scaled = np.clip(naive / max(float(np.percentile(naive, 99)), 1e-6), 0.0, 1.0)
            zero = np.sqrt(zero * scaled).astype(np.float32)
        _, naive_best = best_threshold_counts(naive, truth)
        zero_t, zero_best = best_threshold_counts(zero, truth)
        own = otsu(zero)
        rows.append(
            {
                "region": region.name,
                "naive_oracle": naive_best,
                "zero_oracle": zero_best,
                "zero_own": counts(zero >= own, truth),
                "zero_t": zero_t,
                "own_t": own,
                "seconds": seconds,
                "pixels": truth.size,
            }
        )
        print(f"{region.name}: {seconds:.1f} s", file=sys.stderr)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| region | naive diff, oracle | zero-shot, oracle | zero-shot, Otsu (no truth) |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        cells = [
            f"{metrics(row['naive_oracle'])['cIoU']:.3f}",
            f"{metrics(row['zero_oracle'])['cIoU']:.3f} (at {row['zero_t']:.2f})",
            f"{metrics(row['zero_own'])['cIoU']:.3f} (at {row['own_t']:.2f})",
        ]
        lines.append(f"| {row['region']} | " + " | ".join(cells) + " |")
    pooled = {k: sum(r[k] for r in rows) for k in ("naive_oracle", "zero_oracle", "zero_own")}
    lines.append(
        "| **pooled** | "
        + " | ".join(f"**{metrics(pooled[k])['cIoU']:.3f}**" for k in pooled)
        + " |"
    )
    pixels = sum(r["pixels"] for r in rows)
    seconds = sum(r["seconds"] for r in rows)
    lines.append(f"\nfeature map: {seconds:.1f} s for {pixels / 1e6:.1f} Mpx on this machine")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--levels", default="0,1,2,3", help="pyramid levels averaged (0-3)")
    parser.add_argument(
        "--mix", action="store_true", help="geometric mean with the scaled pixel difference"
    )
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"zero_shot: skipped, no data folder {args.data}")
        return 0
    levels = [int(v) for v in args.levels.split(",")]
    text = f"levels {levels}, mix {args.mix}\n\n" + table(run(args.data, levels, args.mix))
    print(text)
    if args.markdown:
        args.markdown.write_text(
            "# Zero-shot feature distance vs naive differencing\n\n" + text + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
