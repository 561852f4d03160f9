"""Helpers shared by the `kdmsi` verbs: the progress bar, argument parsers and option groups,
output checks, and the tile datasets the training and evaluation verbs read.

Only the standard library is imported here; kdmsi's own modules (and with them torch and GDAL)
are imported inside the helpers that need them.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional

log = logging.getLogger("kdmsi")


class ProgressBar:
    """A tqdm bar over [0, 1] for the library's progress(fraction, message) callback: the
    stage's own count (e.g. "KD epoch 3/12, tile 40/100"), the elapsed time and the time
    left, estimated from the pace so far."""

    FORMAT = "{percentage:3.0f}%|{bar:20}| {elapsed}, {remaining} left · {desc}"

    def __init__(self, description: str):
        from tqdm import tqdm

        self._description = description
        self._bar = tqdm(
            total=1000, desc=description, leave=True, dynamic_ncols=True, bar_format=self.FORMAT
        )
        self._last_message = ""

    def __call__(self, fraction: float, message: str) -> None:
        if message != self._last_message:
            self._bar.set_description_str(f"{self._description}: {message}", refresh=False)
            self._last_message = message
        self._bar.update(max(0, int(round(fraction * 1000)) - self._bar.n))

    def close(self) -> None:
        self._bar.close()


def _run_with_bar(description: str, fn, *args, **kwargs):
    bar = ProgressBar(description)
    try:
        return fn(*args, progress=bar, **kwargs)
    finally:
        bar.close()


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _bounds(text: str) -> list[float]:
    values = _floats(text)
    if len(values) != 4:
        raise argparse.ArgumentTypeError("give xmin,ymin,xmax,ymax (four numbers)")
    return values


def _bounds_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bounds",
        type=_bounds,
        help="analyse only xmin,ymin,xmax,ymax (in the before raster's CRS); default: overlap",
    )


def _threshold(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def _check_new_file(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; choose another name or pass --overwrite")
    if not path.parent.exists():
        raise FileNotFoundError(f"folder {path.parent} does not exist; create it first")


def _report_dir(args, model_path: Path) -> Optional[Path]:
    """The training report folder (`--report`, default `<model stem>_report`), checked up
    front; None with `--no-report`."""
    from ..geo.atomic import check_folder_target
    from ..reports.page import require_report_dependencies
    from ..reports.runs import default_report_dir

    if args.no_report:
        return None
    folder = Path(args.report) if args.report else default_report_dir(model_path)
    check_folder_target(folder, args.overwrite)
    require_report_dependencies()
    return folder


def _dataset(args, root, label_dir=None, augment=False, bands=None, normalisation=None):
    from ..data.pairs import PairDataset

    return PairDataset(
        root,
        tile_size=args.tile_size,
        label_dir=label_dir,
        bands=bands if bands is not None else getattr(args, "bands", None),
        normalisation=normalisation,
        augment=augment,
    )


def _norm(meta: dict):
    from ..data.pairs import Normalisation

    return Normalisation.from_dict(meta["normalisation"])


WEIGHTS_HELP = (
    "trunk weights: imagenet (default; EfficientNet-Lite0's install with kdmsi, ResNets' "
    "are downloaded once by torchvision), none (random), or a local .pth file"
)


def _recipe_options(p: argparse.ArgumentParser) -> None:
    from .. import recipe
    from ..choices import OPTIMIZERS

    p.add_argument("--optimizer", choices=OPTIMIZERS, default=recipe.OPTIMIZER, help="optimiser")
    p.add_argument(
        "--frozen-stages",
        type=int,
        default=None,
        help="trunk parts (stem, stages) kept at their pretrained weights; default: up to "
        "output stride 8",
    )


def _report_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--report", help="training report folder (HTML); default: <model stem>_report")
    p.add_argument("--no-report", action="store_true", help="write no training report")


def _common_options(p: argparse.ArgumentParser, tile: bool = True) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, cuda:1")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    if tile:
        p.add_argument("--tile-size", type=int, default=256)
        p.add_argument("--bands", type=_ints, default=None, help="1-based, e.g. 1,2,3")
