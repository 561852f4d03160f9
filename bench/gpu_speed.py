"""Model-stage speed on an accelerator: the detector and the KD student's MSI, per precision.

On a GPU the model is a small part of what `kdmsi detect` does per tile only if the rest (GDAL
reads, stretch, blending, polygons: `bench/detect_speed.py`'s "outside ms/tile") keeps up, so
this bench measures the model stage alone, as detect runs it: `kdmsi.runtime.load`'s torch
batch runner (host -> device copy, forward under autocast when asked, device -> host copy of
the probabilities), on tiles of `kdmsi.data.synthetic` scenes (`msi_speed.make_tiles`), for

* the deployed detector (`SiameseDeepLabV3Plus` with the head `kdmsi train` gives it), and
* the KD student with multiscale sigmoid inference (`kdmsi detect` on a ``kd`` model, and the
  pseudo-label stage of `kdmsi train`): scales 0.5, 1, 1.5, 2 x plain + flipped,

per backbone x precision (fp32; bf16 and fp16 autocast) x batch size, with random-init
weights (weights do not change the cost) or trained model files (``--detector``,
``--kd-model``): random-init maps say little about what a lower precision changes (an
EfficientNet's random logits saturate the sigmoid; the CAM head starts at zero). Each cell:
the fastest of ``--repeats`` timed batches after two warm-up batches (cuDNN autotuning), as
tile pairs per second, and the largest absolute difference of the probabilities from fp32 on
the same batch. Needs no GDAL, so it runs on a bare GPU machine
(``PYTHONPATH=core-as-kdmsi``).

Usage::

    python bench/gpu_speed.py [--device cuda] [--backbones efficientnet_lite0,resnet50]
        [--batches 16,64] [--tile-size 256] [--markdown bench/results/gpu_speed.md]
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from msi_speed import make_tiles  # noqa: E402 - this folder's bench module

from kdmsi import recipe
from kdmsi.choices import PRECISIONS
from kdmsi.inference.msi import pick_device
from kdmsi.models import SiameseCAMNet, SiameseDeepLabV3Plus
from kdmsi.models.batchnorm_fold import for_inference
from kdmsi.runtime.batch_runners import model_predictor, torch_batch_runner


def build(
    kind: str, backbone: str, device: torch.device, trained: Optional[str] = None
) -> Callable:
    """The `Predict` callable detect runs for a ``detector`` or a ``kd`` (MSI) model: random
    init, or the ``trained`` model file's network (its backbone, not ``backbone``)."""
    torch.manual_seed(0)
    if trained:
        from kdmsi.models.checkpoint import load_checkpoint

        net, _ = load_checkpoint(trained, role="auto", device=device)
    elif kind == "detector":
        net = SiameseDeepLabV3Plus(
            backbone,
            in_channels=3,
            head_channels=recipe.DETECTOR_HEAD_CHANNELS,
            separable=recipe.DETECTOR_SEPARABLE,
        )
    else:
        net = SiameseCAMNet(backbone, head=recipe.CAM_HEAD)
    return model_predictor(for_inference(net.eval().to(device)), kind)


@functools.lru_cache(maxsize=4)
def _tiles(batch: int, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """``batch`` normalised tile pairs [batch, 3, tile, tile] of synthetic scenes."""
    pre, post = make_tiles(batch, tile)
    return pre.numpy(), post.numpy()


def time_cell(
    predict: Callable, device: torch.device, precision: str, batch: int, tile: int, repeats: int
) -> tuple[float, np.ndarray]:
    """(tile pairs per second, probabilities of the first timed batch)."""
    run = torch_batch_runner(predict, device, precision)
    pre, post = _tiles(batch, tile)
    for _ in range(2):
        out = run(pre, post)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run(pre, post)  # ends with the copy to the host, so the device has finished
        best = min(best, time.perf_counter() - start)
    return batch / best, out


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backbones", default="efficientnet_lite0,resnet50")
    parser.add_argument("--kinds", default="detector,kd")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--batches", default="16,64")
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--detector", help="a trained detector file: its row(s) instead")
    parser.add_argument("--kd-model", help="a trained KD model file: its student's MSI row(s)")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    lines = [
        f"Model stage on {name}, torch {torch.__version__}, tiles of {args.tile_size} px "
        f"(3 bands per date). Tile pairs per second (max |prob - fp32 prob|).",
        "",
        "| model | backbone | batch | " + " | ".join(args.precisions.split(",")) + " |",
        "|---|---|---:|" + "---:|" * len(args.precisions.split(",")),
    ]
    print("\n".join(lines), flush=True)
    trained = {"detector": args.detector, "kd": args.kd_model}
    for kind in args.kinds.split(","):
        for backbone in args.backbones.split(",") if not trained[kind] else ["trained"]:
            predict = build(kind, backbone, device, trained[kind])
            for batch in (int(b) for b in args.batches.split(",")):
                cell = functools.partial(
                    time_cell, predict, device, batch=batch, tile=args.tile_size,
                    repeats=args.repeats,
                )  # fmt: skip
                cells, reference = [], None
                for precision in args.precisions.split(","):
                    try:
                        speed, out = cell(precision)
                    except ValueError as exc:  # fp16 off CUDA
                        cells.append(f"– ({exc})")
                        continue
                    if reference is None:
                        reference = out
                    diff = float(np.abs(out - reference).max())
                    cells.append(f"{speed:,.1f} ({diff:.1e})")
                label = "detector" if kind == "detector" else "KD student + MSI (8 passes)"
                row = f"| {label} | {backbone} | {batch} | " + " | ".join(cells) + " |"
                lines.append(row)
                print(row, flush=True)
            del predict
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        lines += ["", f"Peak GPU memory allocated: {peak:.1f} GiB."]
        print(lines[-1])
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
