"""Hostile but realistic options and paths: each ends with one line naming the problem
and the fix, exit status 2 (130 on Ctrl+C, 143 on SIGTERM), no traceback, nothing left in the
output folder and no input touched."""

from __future__ import annotations

import os

import pytest
import torch
from hostile_helpers import detect_argv, digest, exits_with_usage, refused, snapshot

# ---------------------------------------------------------------------- numbers and choices


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--tile-size", "0"], "--tile-size must be an integer from 16 to 4096"),
        (["--tile-size", "100000"], "--tile-size must be an integer from 16 to 4096"),
        (["--tile-size", "-5"], "--tile-size must be"),
        (["--overlap", "-1"], "--overlap must be an integer from 0"),
        (["--tile-size", "64", "--overlap", "64"], "--overlap must be from 0 to the tile size"),
        (["--batch-size", "0"], "--batch-size must be an integer from 1"),
        (["--threshold", "1.5"], "--threshold must be a probability from 0 to 1"),
        (["--threshold", "nan"], "--threshold must be a probability"),
        (["--min-area", "-5"], "--min-area must be a number from 0"),
        (["--simplify", "-1"], "--simplify must be a number from 0"),
        (["--min-area", "inf"], "--min-area must be"),
        (["--device", "banana"], "--device 'banana' is not a device"),
        (["--device", "cuda:x"], "is not a device"),
        (["--scales=-1,abc"], "--scales takes numbers above 0"),
        (["--scales", "9"], "--scales takes numbers above 0 and at most 4"),
        (["--bands", "0,1,2"], "--bands takes 1-based band numbers"),
        (["--bounds", "5,5,1,1"], "--bounds 5,5,1,1 is empty"),
    ],
)
def test_detect_refuses_bad_numbers_before_any_work(work, capsys, extra, expected):
    refused(detect_argv(work, *extra), capsys, expected)
    assert snapshot(work["out"]) == {}


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--tile-size", "abc"], "argument --tile-size: invalid int value: 'abc'"),
        (["--bounds", "1,2,3"], "give xmin,ymin,xmax,ymax"),
        (["--runtime", "gpu"], "argument --runtime: invalid choice"),
    ],
)
def test_argparse_errors_are_one_line(work, capsys, extra, expected):
    exits_with_usage(detect_argv(work, *extra), capsys, expected)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["train-kd", "--epochs", "0"], "--epochs must be an integer from 1"),
        (["train-kd", "--lr", "0"], "--lr must be a number above 0"),
        (["train-kd", "--holdout", "1.5"], "--holdout must be a number from 0 to 0.9"),
        (["train-kd", "--batch-size", "-2"], "--batch-size must be"),
        (["train-cd", "--labels", "x", "--seed", "-1"], "--seed must be an integer from 0"),
        (["train-cd", "--labels", "x", "--epochs", "0"], "--epochs must be"),
    ],
)
def test_training_refuses_bad_numbers(work, capsys, argv, expected):
    data = work["root"] / "data"
    refused([*argv, "--data", str(data), "--out", str(work["out"] / "m.kdmsi")], capsys, expected)
    assert snapshot(work["out"]) == {}


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--kd-epochs", "-1"], "--kd-epochs must be an integer from 1"),
        (["--cd-epochs", "0"], "--cd-epochs must be"),
        (["--batch-size", "0"], "--batch-size must be"),
        (["--kd-lr", "-1"], "--kd-lr must be a number above 0"),
        (["--threshold", "banana"], "--threshold must be auto, otsu, unchanged-quantile or"),
        (["--threshold", "1"], "a probability strictly between 0 and 1, not '1'"),
        (["--threshold", "0"], "a probability strictly between 0 and 1, not '0'"),
        (["--device", "gpu"], "--device 'gpu' is not a device"),
    ],
)
def test_train_from_tags_refuses_bad_options(work, capsys, extra, expected):
    argv = ["train", "--before", str(work["before"]), "--after", str(work["after"])]
    argv += ["--tiles", str(work["root"] / "tiles.gpkg"), "--out", str(work["out"] / "m.kdmsi")]
    refused([*argv, *extra], capsys, expected)
    assert snapshot(work["out"]) == {}


def test_evaluate_and_pseudo_labels_refuse_bad_thresholds(work, capsys):
    data = work["root"] / "data"
    model = str(work["model"])
    refused(
        ["evaluate", "--model", model, "--data", str(data), "--threshold", "banana"],
        capsys,
        "--threshold must be auto, otsu, unchanged-quantile or a probability from 0 to 1",
    )
    argv = ["pseudo-labels", "--model", model, "--data", str(data)]
    refused([*argv, "--out", str(work["out"] / "p"), "--threshold", "2"], capsys, "--threshold")
    assert snapshot(work["out"]) == {}


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["synth", "--scenes", "0"], "--scenes must be an integer from 1"),
        (["synth", "--size", "10"], "--size must be an integer from 32"),
        (["synth", "--tile-size", "8"], "--tile-size must be"),
    ],
)
def test_synth_refuses_bad_numbers(work, capsys, argv, expected):
    refused([*argv, "--out", str(work["out"] / "synth")], capsys, expected)
    assert snapshot(work["out"]) == {}


def test_export_onnx_refuses_bad_numbers(work, capsys):
    argv = ["export-onnx", str(work["model"]), str(work["out"] / "m.onnx")]
    refused([*argv, "--opset", "3"], capsys, "--opset must be an integer from 11")
    refused([*argv, "--batch-size", "0"], capsys, "--batch-size must be")
    assert snapshot(work["out"]) == {}


# ------------------------------------------------------------------------------------ paths


def test_an_output_never_overwrites_an_input(work, capsys, monkeypatch):
    before, after, model = work["before"], work["after"], work["model"]
    inputs = {p: digest(p) for p in (before, after, model)}
    root = work["root"]
    (root / "link.tif").symlink_to(before)
    os.link(after, root / "hard.tif")
    monkeypatch.chdir(root)
    for probability, named in [
        (str(before), "--before"),
        ("./before.tif", "--before"),
        ("out/../after.tif", "--after"),
        (str(root / "link.tif"), "--before"),
        (str(root / "hard.tif"), "--after"),
    ]:
        argv = detect_argv(work, "--probability", probability, "--overwrite")
        refused(argv, capsys, f"is the same file as {named}")
    refused(detect_argv(work, "--overwrite", out=str(model)), capsys, "--out")
    refused(["export-onnx", str(model), str(model), "--overwrite"], capsys, "same file as --model")
    weights = root / "w.pth"
    torch.save({"x": torch.zeros(1)}, weights)
    refused(
        ["train-kd", "--data", str(root), "--out", str(weights), "--weights", str(weights)],
        capsys,
        "is the same file as --weights",
    )
    assert {p: digest(p) for p in (before, after, model)} == inputs


def test_output_paths_that_cannot_be_written(work, capsys):
    refused(
        detect_argv(work, out=str(work["before"] / "x.gpkg")),
        capsys,
        "is a file, not a folder",
    )
    refused(detect_argv(work, out=str(work["root"] / "no" / "x.gpkg")), capsys, "does not exist")
    refused(detect_argv(work, out=str(work["out"] / "x.txt")), capsys, "x.txt")
    refused(
        detect_argv(work, "--probability", str(work["out"] / "p.png")), capsys, "must be a GeoTIFF"
    )
    refused(
        ["train-kd", "--data", str(work["root"]), "--out", str(work["before"] / "m.kdmsi")],
        capsys,
        "is a file, not a folder",
    )
    assert snapshot(work["out"]) == {}


def test_missing_inputs_are_named(work, capsys):
    missing = str(work["root"] / "missing.tif")
    argv = detect_argv(work)
    argv[argv.index("--before") + 1] = missing
    refused(argv, capsys, "missing.tif")
    argv = detect_argv(work)
    argv[argv.index("--model") + 1] = str(work["root"] / "missing.kdmsi")
    refused(argv, capsys, "missing.kdmsi")
    assert snapshot(work["out"]) == {}
