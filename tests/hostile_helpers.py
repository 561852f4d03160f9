"""Helpers of the hostile-input tests: run the CLI and check what it answered and left."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import pytest

from kdmsi.cli import main

SIZE = 96
"""Side of the test rasters, px."""


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones included) -> its content hash."""
    return {str(p.relative_to(folder)): digest(p) for p in folder.rglob("*") if p.is_file()}


def detect_argv(work: dict[str, Path], *extra: str, out: Optional[str] = None) -> list[str]:
    return [
        "detect",
        "--before",
        str(work["before"]),
        "--after",
        str(work["after"]),
        "--model",
        str(work["model"]),
        "--out",
        out or str(work["out"] / "changes.gpkg"),
        *extra,
    ]


def refused(argv: list[str], capsys, expected: str, status: int = 2) -> str:
    """Run the CLI; assert the exit status and one line on stderr that holds ``expected``."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]
    assert code == status, (argv, err)
    assert expected in err, (expected, err)
    assert "Traceback" not in err
    errors = [line for line in lines if "error" in line or "cancelled" in line]
    assert len(errors) == 1, err
    return err


def exits_with_usage(argv: list[str], capsys, expected: str) -> None:
    """argparse-level refusals exit through SystemExit(2) with one line."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and expected in err, err
    assert len(err.strip().splitlines()) == 1, err
