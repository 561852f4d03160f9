"""Tests for detect's cancel paths and its answers to bad input (one line, exit 2, no files)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from detect_helpers import GT, PIXEL, TILE, files_in, oracle, run_oracle, scene, write_raster

from kdmsi.cli import main
from kdmsi.detect.with_model import detect_changes
from kdmsi.geo.raster import RasterInputError
from kdmsi.progress import Cancelled

# ----------------------------------------------------------------------- cancel and errors


def test_cancel_after_the_first_batch_leaves_no_file(tmp_path, pair):
    before, after = pair
    calls = []

    def counting(pre, post):
        calls.append(1)
        return oracle(pre, post)

    with pytest.raises(Cancelled):
        run_oracle(
            before,
            after,
            tmp_path / "c.gpkg",
            counting,
            batch_size=2,
            cancelled=lambda: len(calls) >= 1,
        )
    assert len(calls) == 1
    assert files_in(tmp_path) == {"before.tif", "after.tif"}


def test_ctrl_c_in_the_cli_exits_130_without_files(
    tmp_path, pair, detector_model, monkeypatch, capsys
):
    import kdmsi.runtime.load as detect_model

    def interrupted(model, kind, scales, flip):
        def predict(pre, post):
            raise KeyboardInterrupt

        return predict

    monkeypatch.setattr(detect_model, "model_predictor", interrupted)
    before, after = pair
    argv = [
        "detect",
        "--before",
        str(before),
        "--after",
        str(after),
        "--model",
        str(detector_model),
    ]
    out, prob = tmp_path / "c.gpkg", tmp_path / "p.tif"
    assert main([*argv, "--out", str(out), "--probability", str(prob), *TILE]) == 130
    assert "Traceback" not in capsys.readouterr().err
    assert files_in(tmp_path) == {"before.tif", "after.tif"}


def _bad_case(name: str, tmp_path: Path, model: Path, monkeypatch) -> tuple[list[str], str]:
    """(argv, expected message part) of one bad-input case; writes what the case needs."""
    pre, post = scene()
    before, after = tmp_path / "before.tif", tmp_path / "after.tif"
    out = tmp_path / "out.gpkg"
    if name == "band count":
        write_raster(before, pre[:1])
        write_raster(after, post[:1])
    elif name == "no overlap":
        write_raster(before, pre)
        far = (GT[0] + 1e5, PIXEL, 0.0, GT[3], 0.0, -PIXEL)
        write_raster(after, post, gt=far)
    elif name == "no crs":
        write_raster(before, pre, epsg=None)
        write_raster(after, post)
    else:
        write_raster(before, pre)
        write_raster(after, post)
    extra: list[str] = []
    expected = {
        "band count": "3 band(s) per date",
        "--bands count": "trained on 3 band(s)",
        "no overlap": "do not overlap",
        "no crs": "has no CRS",
        "corrupt model": "not a readable kdmsi model",
        "existing output": "already exists",
        "unwritable folder": "not writable",
        "missing folder": "does not exist",
        "vector extension": "cannot tell the vector format",
        "probability extension": "must be a GeoTIFF",
    }[name]
    if name == "--bands count":
        extra = ["--bands", "1,2"]
    elif name == "corrupt model":
        model = tmp_path / "corrupt.kdmsi"
        model.write_bytes(model_bytes_garbage())
    elif name == "existing output":
        out.write_bytes(b"keep me")
        model = tmp_path / "corrupt.kdmsi"  # the output check comes before loading anything
        model.write_bytes(model_bytes_garbage())
    elif name == "unwritable folder":
        import kdmsi.geo.atomic as atomic

        real_access = os.access
        monkeypatch.setattr(
            atomic.os,
            "access",
            lambda p, mode: False if Path(p) == tmp_path else real_access(p, mode),
        )
    elif name == "missing folder":
        out = tmp_path / "nowhere" / "out.gpkg"
    elif name == "vector extension":
        out = tmp_path / "out.txt"
    elif name == "probability extension":
        extra = ["--probability", str(tmp_path / "prob.png")]
    argv = ["detect", "--before", str(before), "--after", str(after), "--model", str(model)]
    return [*argv, "--out", str(out), *TILE, *extra], expected


def model_bytes_garbage() -> bytes:
    return np.random.default_rng(0).bytes(2000)


@pytest.mark.parametrize(
    "case",
    [
        "band count",
        "--bands count",
        "no overlap",
        "no crs",
        "corrupt model",
        "existing output",
        "unwritable folder",
        "missing folder",
        "vector extension",
        "probability extension",
    ],
)
def test_bad_input_answers_one_line_and_exit_2(tmp_path, detector_model, monkeypatch, capsys, case):
    argv, expected = _bad_case(case, tmp_path, detector_model, monkeypatch)
    existing = files_in(tmp_path)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.replace("\r", "\n").splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("kdmsi detect: error:")
    assert expected in errors[0]
    assert files_in(tmp_path) == existing  # nothing new, nothing half-written
    if case == "existing output":
        assert (tmp_path / "out.gpkg").read_bytes() == b"keep me"


def test_band_count_error_names_both_numbers(tmp_path, detector_model):
    pre, post = scene()
    before = write_raster(tmp_path / "a.tif", pre[:1])
    after = write_raster(tmp_path / "b.tif", post[:1])
    with pytest.raises(RasterInputError, match=r"3 band\(s\).*has 1 band\(s\).*--bands 1,1,1"):
        detect_changes(before, after, detector_model, tmp_path / "c.gpkg")
