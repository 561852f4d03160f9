"""Tests for kdmsi.options: the one table of option values and the checks on it."""

from __future__ import annotations

import os

import pytest

from kdmsi.options import (
    NUMBERS,
    OptionError,
    check_bands,
    check_bounds,
    check_device,
    check_number,
    check_numbers,
    check_outputs_are_not_inputs,
    check_scales,
    check_threshold,
    same_file,
)


def test_numbers_keep_their_kind_and_range():
    assert check_number("tile_size", "256") == 256 and isinstance(
        check_number("tile_size", 256.0), int
    )
    assert check_number("lr", "1e-4") == pytest.approx(1e-4)
    for name, bad in [("tile_size", "12.5"), ("tile_size", True), ("lr", 0), ("threshold", "inf")]:
        with pytest.raises(OptionError, match=NUMBERS[name].flag):
            check_number(name, bad)
    assert check_numbers({"epochs": 3, "seed": None}) == {"epochs": 3}


def test_threshold_words_or_probability():
    assert check_threshold(" Auto ") == "auto" and check_threshold("0.25") == 0.25
    with pytest.raises(OptionError, match="auto, otsu, unchanged-quantile or a probability"):
        check_threshold("banana")
    with pytest.raises(OptionError, match="must be a probability"):
        check_threshold("auto", words=())
    # a pseudo-label threshold cuts inside (0, 1); a detect threshold may be 0 or 1
    for edge in ("0", 1, "1.0"):
        with pytest.raises(OptionError, match="strictly between 0 and 1"):
            check_threshold(edge)
        assert check_threshold(edge, words=()) == float(edge)


def test_train_from_tags_refuses_threshold_one_before_reading_anything(tmp_path):
    from kdmsi.training.from_tags import TagTrainingConfig, train_from_tags

    config = TagTrainingConfig(threshold=1.0)
    missing = tmp_path / "nothing.tif"  # the option is named before any input is opened
    with pytest.raises(OptionError, match="strictly between 0 and 1"):
        train_from_tags(missing, missing, tmp_path / "t.gpkg", tmp_path / "m.kdmsi", config)


def test_lists_bounds_and_devices():
    assert check_scales("0.5, 1,,2") == [0.5, 1.0, 2.0] and check_bands("4,3,2") == [4, 3, 2]
    assert check_bounds(["0", 0, 1, 2]) == [0.0, 0.0, 1.0, 2.0]
    for check, bad in [(check_scales, ""), (check_bands, "1,x"), (check_bounds, [1, 2, 3])]:
        with pytest.raises(OptionError):
            check(bad)
    assert check_device("CUDA:1") == "cuda:1"
    with pytest.raises(OptionError, match="not a device"):
        check_device("gpu0")


def test_same_file_by_any_spelling(tmp_path, monkeypatch):
    data = tmp_path / "a.tif"
    data.write_bytes(b"x")
    os.link(data, tmp_path / "hard.tif")
    (tmp_path / "soft.tif").symlink_to(data)
    monkeypatch.chdir(tmp_path)
    for spelling in ("a.tif", "./a.tif", "sub/../a.tif", "hard.tif", "soft.tif"):
        assert same_file(spelling, data), spelling
    assert not same_file("b.tif", data)
    check_outputs_are_not_inputs({"--out": "b.tif", "--probability": None}, {"--before": data})
    with pytest.raises(OptionError, match="--out hard.tif is the same file as --before"):
        check_outputs_are_not_inputs({"--out": "hard.tif"}, {"--before": data, "--x": None})
