"""The pair list and the summary table of `kdmsi detect-batch` (torch-free, Dask-free).

The pair list is a csv with the columns ``name, before, after`` and optionally ``model`` (else
the run's ``--model``) and ``bands`` (1-based, e.g. ``3,2,1``; else the model's); relative
paths in it are read from the csv's folder. Each pair writes ``<name>.gpkg`` and
``<name>_probability.tif`` into the output folder; ``summary.csv`` lists every pair's outcome.
"""

from __future__ import annotations

import csv
import re
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Optional, Sequence

from ..geo.atomic import atomic_output
from ..types import PathLike

REQUIRED_COLUMNS = ("name", "before", "after")
OPTIONAL_COLUMNS = ("model", "bands")
SUMMARY_NAME = "summary.csv"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class PairJob:
    """One row of the pair list, paths made absolute."""

    name: str
    before: Path
    after: Path
    model: Path
    bands: Optional[tuple[int, ...]] = None

    def vector(self, out_dir: Path) -> Path:
        return out_dir / f"{self.name}.gpkg"

    def probability(self, out_dir: Path) -> Path:
        return out_dir / f"{self.name}_probability.tif"

    def done(self, out_dir: Path) -> bool:
        """Both outputs exist (a re-run skips the pair unless told to overwrite)."""
        return self.vector(out_dir).exists() and self.probability(out_dir).exists()


@dataclass
class PairOutcome:
    """A row of ``summary.csv``: ``status`` is done, skipped, failed or cancelled."""

    pair: str
    status: str
    polygons: Optional[int] = None
    seconds: Optional[float] = None
    message: str = ""


def read_pairs(csv_path: PathLike, default_model: Optional[PathLike]) -> list[PairJob]:
    """The pairs of ``csv_path``; every row needs a model (its own or ``default_model``).

    Raises:
        ValueError: a missing file or column, an empty list, a name twice or unfit for a file
            name, bad bands, a row without a model or a model file that does not exist. Rasters
            are not opened here: a pair whose rasters are unreadable fails alone, in the run.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise ValueError(f"pair list {path} does not exist: give a csv with name,before,after")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise ValueError(
                f"pair list {path} lacks the column(s) {', '.join(missing)}: its header must "
                f"name {', '.join(REQUIRED_COLUMNS)} (optional: {', '.join(OPTIONAL_COLUMNS)})"
            )
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    if not rows:
        raise ValueError(f"pair list {path} lists no pair: add one row per pair")
    jobs = [_job(row, i, path.parent, default_model, path) for i, row in enumerate(rows, 2)]
    seen: set[str] = set()
    for job in jobs:
        if job.name.lower() in seen:
            raise ValueError(f"pair list {path}: the name {job.name!r} is given twice")
        seen.add(job.name.lower())
    return jobs


def _job(
    row: dict[str, str], line: int, folder: Path, default_model: Optional[PathLike], csv_path: Path
) -> PairJob:
    where = f"pair list {csv_path}, line {line}"
    name = row.get("name", "")
    if not _SAFE_NAME.match(name):
        raise ValueError(
            f"{where}: the name {name!r} cannot name output files: use letters, digits, '.', "
            "'_' and '-'"
        )
    for column in ("before", "after"):
        if not row.get(column):
            raise ValueError(f"{where}: the {column} raster is empty")
    if row.get("model"):
        model_path = _resolve(folder, row["model"])
    elif default_model:
        model_path = Path(default_model).absolute()  # the command line's: from where it runs
    else:
        raise ValueError(f"{where}: no model: give a model column or --model")
    if not model_path.is_file():
        raise ValueError(f"{where}: model {model_path} does not exist")
    bands = None
    if row.get("bands"):
        try:
            bands = tuple(int(b) for b in row["bands"].replace(";", ",").split(",") if b.strip())
        except ValueError:
            bands = ()
        if not bands or min(bands) < 1:
            bad = row["bands"]
            raise ValueError(f"{where}: bands {bad!r} must be 1-based integers, e.g. 3,2,1")
    before, after = _resolve(folder, row["before"]), _resolve(folder, row["after"])
    return PairJob(name, before, after, model_path, bands)


def _resolve(folder: Path, text: str) -> Path:
    """An absolute path: a worker of a remote cluster runs in a folder of its own."""
    path = Path(text).expanduser()
    return (path if path.is_absolute() else folder / path).absolute()


def write_summary(out_dir: Path, outcomes: Sequence[PairOutcome]) -> Path:
    """Write ``summary.csv`` (pair, status, polygons, seconds, message) atomically."""
    target = out_dir / SUMMARY_NAME
    with atomic_output(target, overwrite=True) as temp:
        with open(temp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow([f.name for f in fields(PairOutcome)])
            for outcome in outcomes:
                writer.writerow(["" if v is None else v for v in astuple(outcome)])
    return target


__all__ = ["PairJob", "PairOutcome", "SUMMARY_NAME", "read_pairs", "write_summary"]
