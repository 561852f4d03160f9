"""`kdmsi detect --zero-shot`: the training-free feature-distance map through the detect path."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from osgeo import gdal

from kdmsi.cli import main
from kdmsi.geo.metadata import decode_metadata
from kdmsi.inference.zero_shot import ZERO_SHOT_THRESHOLD, feature_distance, zero_shot_predictor
from kdmsi.models.trunks.efficientnet_lite import EfficientNetLiteTrunk


@pytest.fixture(scope="module")
def trunk() -> EfficientNetLiteTrunk:
    return EfficientNetLiteTrunk(weights="imagenet").eval()


def test_feature_distance_shape_range_and_zero_for_identical_dates(trunk):
    torch.manual_seed(0)
    pre = torch.randn(2, 3, 96, 128)
    with torch.inference_mode():
        same = feature_distance(trunk, pre, pre.clone())
        other = feature_distance(trunk, pre, torch.randn(2, 3, 96, 128))
    assert same.shape == (2, 1, 96, 128) and same.dtype == torch.float32
    assert float(same.abs().max()) < 1e-4
    assert 0.0 <= float(other.min()) and float(other.max()) <= 1.0
    assert float(other.mean()) > 0.05
    with pytest.raises(ValueError, match="at least one pyramid level"):
        feature_distance(trunk, pre, pre, levels=())


def test_predictor_takes_any_band_count():
    predict = zero_shot_predictor(1)
    with torch.inference_mode():
        out = predict(torch.zeros(1, 1, 64, 64), torch.ones(1, 1, 64, 64))
    assert out.shape == (1, 1, 64, 64)


def bench_module(name: str):
    """A helper module of ``bench/`` (imported from its file: the bench is not a package)."""
    path = Path(__file__).resolve().parents[2] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def _read(path) -> np.ndarray:
    return gdal.Open(str(path)).ReadAsArray()


def test_cli_zero_shot_marks_the_new_buildings(tmp_path, scene_pair, capsys):
    out, prob = tmp_path / "changes.gpkg", tmp_path / "map.tif"
    argv = ["detect", "--before", str(scene_pair["before"]), "--after", str(scene_pair["after"])]
    assert main([*argv, "--zero-shot", "--out", str(out), "--probability", str(prob)]) == 0
    assert "change polygons (threshold 0.39)" in capsys.readouterr().err
    score = np.nan_to_num(_read(prob))
    truth = _read(scene_pair["truth"]) > 0
    # the map is higher on the changed buildings than elsewhere, by a wide margin
    assert score[truth].mean() > 1.5 * score[~truth].mean()
    changed = score >= ZERO_SHOT_THRESHOLD
    precision = (changed & truth).sum() / max(changed.sum(), 1)
    assert (changed & truth).sum() > 0.15 * truth.sum(), "too few changed pixels found"
    assert precision > 3 * truth.mean(), (precision, truth.mean())
    meta = decode_metadata(gdal.Open(str(prob)).GetMetadata())
    assert meta["model_kind"] == "zero-shot" and meta["threshold"] == ZERO_SHOT_THRESHOLD


def test_cli_zero_shot_refuses_model_options_before_writing(tmp_path, scene_pair, capsys):
    out = tmp_path / "changes.gpkg"
    argv = ["detect", "--before", str(scene_pair["before"]), "--after", str(scene_pair["after"])]
    assert main([*argv, "--zero-shot", "--out", str(out), "--scales", "1,2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--zero-shot" in err and "--scales" in err
    assert not out.exists()


@pytest.mark.real_data
def test_zero_shot_beats_naive_differencing_on_a_real_region(tmp_path, real_data):
    """LEVIR-CD test_7 (1024 px): the zero-shot polygons at their own threshold against naive
    differencing at its best threshold chosen with the truth (0.27 vs 0.13 when measured)."""
    real_regions = bench_module("real_regions")
    from kdmsi.detect.zero_shot import detect_zero_shot

    region = next(r for r in real_regions.default_regions() if r.name.endswith("test_7"))
    paths = real_regions.write_region(real_data, region, tmp_path)
    result = detect_zero_shot(
        paths["before"], paths["after"], tmp_path / "z.gpkg", tmp_path / "z.tif"
    )
    before, after, truth = real_regions.load_region(real_data, region)
    score = np.nan_to_num(_read(tmp_path / "z.tif"))
    own = real_regions.metrics(real_regions.counts(score >= result.threshold, truth))["cIoU"]
    naive_map = real_regions.naive_difference(before, after)
    naive = real_regions.metrics(real_regions.best_threshold_counts(naive_map, truth)[1])["cIoU"]
    assert own > naive + 0.05, (own, naive)


def test_cli_says_loudly_when_no_change_is_found(tmp_path, scene_pair, capsys):
    argv = ["detect", "--before", str(scene_pair["before"]), "--after", str(scene_pair["after"])]
    out = tmp_path / "changes.gpkg"
    assert main([*argv, "--zero-shot", "--out", str(out), "--threshold", "1"]) == 0
    err = capsys.readouterr().err
    assert "warning: no change found" in err and "lower threshold" in err
    assert out.is_file()  # an empty layer is still written: the analyst's file, not nothing
