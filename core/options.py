"""The one table of what kdmsi's options accept, and the checks every entry point runs on them.

The CLI (after parsing, `check_cli_options`), the library functions the QGIS plugin calls
(`detect_changes`, `train_from_tags`) and the Processing algorithms all check numbers, devices
and paths here, so a bad value gets the same one-line message, naming the option and the fix,
wherever it was typed. Torch- and GDAL-free: the plugin imports it at load.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

from .types import PathLike


class OptionError(ValueError):
    """An option value kdmsi cannot use; the message names the option and what to give."""


@dataclass(frozen=True)
class Number:
    """A numeric option: its flag, its type and its range (``low``/``high`` inclusive unless
    ``low_open``); ``hint`` says what a user usually wants."""

    flag: str
    kind: type
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    hint: str = ""

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a number"
        low = "above" if self.low_open else "from"
        if self.low is not None and self.high is not None:
            if self.low_open:
                return f"{what} above {_fmt(self.low)} and at most {_fmt(self.high)}"
            return f"{what} from {_fmt(self.low)} to {_fmt(self.high)}"
        if self.low is not None:
            return f"{what} {low} {_fmt(self.low)}" + ("" if self.low_open else " up")
        return what


def _fmt(value: float) -> str:
    return f"{value:g}"


_EPOCHS = dict(kind=int, low=1, high=100_000, hint="the recipe's default is a good start")
_LR = dict(kind=float, low=0.0, high=1.0, low_open=True, hint="e.g. 1e-4")
_WEIGHT = dict(kind=float, low=0.0, high=1e6)

NUMBERS: dict[str, Number] = {
    "tile_size": Number(
        "--tile-size", int, 16, 4096, hint="256 suits most models; the default is the model's"
    ),
    "overlap": Number("--overlap", int, 0, 4095, hint="64 px (a quarter of the tile at most)"),
    "batch_size": Number("--batch-size", int, 1, 1024, hint="4 on a CPU"),
    "threshold": Number("--threshold", float, 0.0, 1.0, hint="a change probability, e.g. 0.5"),
    "min_area": Number("--min-area", float, 0.0, hint="square metres; 0 keeps every polygon"),
    "simplify": Number("--simplify", float, 0.0, hint="metres; 0 keeps pixel edges"),
    "epochs": Number("--epochs", **_EPOCHS),
    "kd_epochs": Number("--kd-epochs", **_EPOCHS),
    "cd_epochs": Number("--cd-epochs", **_EPOCHS),
    "lr": Number("--lr", **_LR),
    "kd_lr": Number("--kd-lr", **_LR),
    "cd_lr": Number("--cd-lr", **_LR),
    "kd_weight": Number("--kd-weight", **_WEIGHT),
    "holdout": Number("--holdout", float, 0.0, 0.9, hint="a share of the tiles, e.g. 0.1"),
    "seed": Number("--seed", int, 0, 2**32 - 1),
    "frozen_stages": Number("--frozen-stages", int, 0, 16),
    "scenes": Number("--scenes", int, 1, 10_000),
    "size": Number("--size", int, 32, 65_536),
    "opset": Number("--opset", int, 11, 25, hint="17"),
    "tau": Number("--tau", float, 0.0, 100.0, low_open=True),
    "lambda_sfd": Number("--lambda-sfd", **_WEIGHT),
    "lambda_cfd": Number("--lambda-cfd", **_WEIGHT),
    "lambda_global": Number("--lambda-global", **_WEIGHT),
    "lambda_feat": Number("--lambda-feat", **_WEIGHT),
    "global_pixels": Number("--global-pixels", int, 1, 65_536),
    "queue_size": Number("--queue-size", int, 1, 1_000_000),
    "feature_vote": Number(
        "--feature-vote", float, 0.0, 1.0, hint="0.5 by default; 0: the student's MSI alone"
    ),
    "workers": Number("--workers", int, 1, 1024, hint="one per core (or GPU) to use"),
    "threads": Number("--threads", int, 1, 256, hint="1 with one worker per core"),
    "block_rows": Number(
        "--block-rows", int, 16, 1_000_000, hint="8192; at least a tile row is used"
    ),
}
"""Option (argparse ``dest``, library keyword) -> what it accepts."""

THRESHOLD_WORDS = ("auto", "otsu", "unchanged-quantile")
"""Words `--threshold` accepts where a threshold is chosen without pixel truth."""

MAX_SCALE = 4.0
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
DIST_BACKENDS = ("auto", "gloo", "nccl")
"""`--dist-backend`: the process group of a torchrun run (auto: nccl on CUDA, else gloo)."""


def check_number(name: str, value: Any) -> Union[int, float]:
    """``value`` as the option ``name`` accepts it (see `NUMBERS`).

    Raises:
        OptionError: not a finite number of the right kind, or out of range.
    """
    spec = NUMBERS[name]
    bad = OptionError(
        f"{spec.flag} must be {spec.describe()}, not {value!r}"
        + (f" ({spec.hint})" if spec.hint else "")
    )
    if isinstance(value, bool):
        raise bad
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise bad from None
    if not math.isfinite(number):
        raise bad
    if spec.kind is int:
        if number != int(number) or (isinstance(value, str) and not _is_int_text(value)):
            raise bad
        number = int(number)
    if spec.low is not None and (number <= spec.low if spec.low_open else number < spec.low):
        raise bad
    if spec.high is not None and number > spec.high:
        raise bad
    return number


def check_numbers(values: Mapping[str, Any]) -> dict[str, Union[int, float]]:
    """`check_number` for each ``name: value`` (None values skipped); the checked values."""
    return {name: check_number(name, v) for name, v in values.items() if v is not None}


def _is_int_text(text: str) -> bool:
    return re.fullmatch(r"\s*[+-]?\d+\s*", text) is not None


def check_threshold(value: Any, words: Sequence[str] = THRESHOLD_WORDS) -> Union[str, float]:
    """A threshold: one of ``words`` or a probability in [0, 1]. Where words are accepted (a
    threshold that cuts a probability map into pseudo labels), a number must lie strictly
    between 0 and 1: 0 would mark every pixel and 1 none, which
    `kdmsi.inference.thresholds.choose_threshold` refuses only after the teacher and student
    have trained."""
    if isinstance(value, str) and value.strip().lower() in words:
        return value.strip().lower()
    choices = ", ".join(words)
    try:
        number = check_number("threshold", value)
    except OptionError:
        raise OptionError(
            f"--threshold must be {choices + ' or ' if words else ''}a probability from 0 to 1, "
            f"not {value!r}"
        ) from None
    if words and not 0.0 < number < 1.0:
        raise OptionError(
            f"--threshold must be {choices} or a probability strictly between 0 and 1, "
            f"not {value!r} (0 marks every pixel of the changed tiles as change, 1 none)"
        )
    return number


def _list_items(value: Union[str, Iterable[Any]]) -> list[Any]:
    """The items of a comma-separated text (blank ones dropped) or of a sequence."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return [item for item in items if not (isinstance(item, str) and not item.strip())]


def check_scales(value: Union[str, Iterable[Any]]) -> list[float]:
    """MSI scales: comma-separated numbers above 0 and at most `MAX_SCALE`."""
    scales = []
    for item in _list_items(value):
        try:
            scale = float(item)
        except (TypeError, ValueError):
            scale = math.nan
        if not (math.isfinite(scale) and 0.0 < scale <= MAX_SCALE):
            raise OptionError(
                f"--scales takes numbers above 0 and at most {MAX_SCALE:g}, e.g. 0.5,1,1.5,2; "
                f"{str(item).strip()!r} is not one"
            )
        scales.append(scale)
    if not scales:
        raise OptionError("--scales is empty: give at least one scale, e.g. 0.5,1,1.5,2")
    return scales


def check_bands(value: Union[str, Iterable[Any]]) -> list[int]:
    """1-based band indices, e.g. ``4,3,2``."""
    bands = []
    for item in _list_items(value):
        if isinstance(item, bool) or not _is_int_text(str(item)) or int(item) < 1:
            raise OptionError(
                f"--bands takes 1-based band numbers, e.g. 1,2,3; {str(item).strip()!r} is not one"
            )
        bands.append(int(item))
    if not bands:
        raise OptionError("--bands is empty: give band numbers, e.g. 1,2,3")
    return bands


def check_bounds(value: Sequence[Any]) -> list[float]:
    """``xmin, ymin, xmax, ymax``: four finite numbers, min below max."""
    try:
        numbers = [float(v) for v in value]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != 4 or not all(math.isfinite(v) for v in numbers):
        raise OptionError(f"--bounds takes four numbers xmin,ymin,xmax,ymax, not {value!r}")
    xmin, ymin, xmax, ymax = numbers
    if xmin >= xmax or ymin >= ymax:
        raise OptionError(
            f"--bounds {','.join(f'{v:g}' for v in numbers)} is empty: give xmin < xmax and "
            "ymin < ymax, in the before raster's CRS"
        )
    return numbers


def check_device(value: Any) -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (availability is checked later)."""
    text = str(value).strip().lower()
    if not DEVICE_PATTERN.match(text):
        raise OptionError(
            f"--device {value!r} is not a device: choose auto, cpu, cuda, cuda:N (a GPU "
            "number) or mps"
        )
    return text


def check_dist_backend(value: Any) -> str:
    """One of `DIST_BACKENDS` (whether it suits the device is checked when the group starts)."""
    text = str(value).strip().lower()
    if text not in DIST_BACKENDS:
        raise OptionError(
            f"--dist-backend {value!r} is not a backend: choose {', '.join(DIST_BACKENDS)}"
        )
    return text


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether two paths name one file: the same resolved path (relative, ``..``, symlinks),
    or, when both exist, the same inode (hard links)."""
    pa, pb = Path(a), Path(b)
    try:
        if pa.resolve() == pb.resolve():
            return True
    except OSError:
        pass
    try:
        return os.path.samefile(pa, pb)
    except OSError:
        return False


def check_outputs_are_not_inputs(
    outputs: Mapping[str, Optional[PathLike]], inputs: Mapping[str, Optional[PathLike]]
) -> None:
    """Refuse an output that is one of the inputs, by any spelling of the path; also with
    ``--overwrite``, which replaces earlier outputs, never the data.

    Args:
        outputs, inputs: option name (e.g. ``--out``) -> path; None entries are skipped.

    Raises:
        OptionError: naming both options and the file.
    """
    given = [(name, path) for name, path in inputs.items() if path is not None]
    for out_name, out in outputs.items():
        if out is None:
            continue
        for in_name, inp in given:
            if same_file(out, inp):
                raise OptionError(
                    f"{out_name} {out} is the same file as {in_name} {inp}: kdmsi never "
                    f"writes over its inputs (not even with --overwrite); choose another "
                    f"{out_name} name"
                )


__all__ = [
    "DIST_BACKENDS",
    "NUMBERS",
    "THRESHOLD_WORDS",
    "Number",
    "OptionError",
    "check_bands",
    "check_bounds",
    "check_device",
    "check_dist_backend",
    "check_number",
    "check_numbers",
    "check_outputs_are_not_inputs",
    "check_scales",
    "check_threshold",
    "same_file",
]
