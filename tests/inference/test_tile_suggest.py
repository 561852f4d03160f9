"""Which tiles to tag next (`kdmsi tile-grid --suggest`) and re-running `train` as tags are added
(`--warm-start`)."""

import numpy as np
import pytest
from osgeo import ogr

from kdmsi.cli import main
from kdmsi.geo.raster import PROB_NODATA
from kdmsi.inference.tile_suggest import (
    tile_evidence,
    uncertainty,
    uncertainty_order,
    zero_shot_order,
)


def test_tile_evidence_ignores_nodata_and_nan():
    values = np.full((10, 10), PROB_NODATA, np.float32)
    assert tile_evidence(values, PROB_NODATA) is None
    values[:5] = 0.1
    values[0, 0] = np.nan
    values[9, 9] = 0.9  # one changed pixel in 51 valid ones: above the 99.5th percentile
    assert tile_evidence(values, PROB_NODATA) == pytest.approx(0.1 + 0.8 * 0.75, abs=0.01)


def test_zero_shot_order_alternates_likely_changed_and_a_spread_of_unchanged():
    cells = np.array([(r, c) for r in range(4) for c in range(4)])
    evidence = [0.1] * 16
    for i, e in ((5, 0.9), (6, 0.8), (9, 0.7)):
        evidence[i] = e
    evidence[15] = None  # no valid pixel: never suggested
    tagged = [False] * 16
    tagged[6] = True  # tagged already: left out
    order = zero_shot_order(cells, evidence, tagged)
    assert order[0] == 5 and order[2] == 9  # most likely changed first, in order
    assert set(order) == set(range(15)) - {6} and len(order) == 14
    unchanged = order[1::2][:3]
    assert all(evidence[i] == 0.1 for i in unchanged)
    spread = [np.abs(cells[a] - cells[b]).sum() for a in unchanged for b in unchanged if a < b]
    assert min(spread) >= 2  # not neighbours: the spread covers the grid


def test_uncertainty_order_puts_tiles_near_the_threshold_first():
    assert uncertainty(0.5, 0.5) == 1.0 and uncertainty(0.0, 0.5) == 0.0
    order = uncertainty_order([0.95, 0.52, None, 0.05, 0.4], [False] * 4 + [True], 0.5)
    assert order == [1, 3, 0] or order == [1, 0, 3]
    assert order[0] == 1


def _grid_rows(path):
    source = ogr.Open(str(path))  # kept: its layer dies with it
    layer = source.GetLayer(0)
    rows = {}
    for f in layer:
        rows[(f.GetField("row"), f.GetField("col"))] = {
            k: f.GetField(k) for k in ("changed", "change_score", "suggest", "suggest_rank")
        }
    return rows


def test_cli_suggested_grid_then_tags_carried_over(tmp_path, scene_pair, capsys):
    pair = ["--before", str(scene_pair["before"]), "--after", str(scene_pair["after"])]
    first = tmp_path / "grid.gpkg"
    assert main(["tile-grid", *pair, "--out", str(first), "--tile-size", "64", "--suggest"]) == 0
    assert "ranked by zero-shot" in capsys.readouterr().err
    rows = _grid_rows(first)
    ranks = sorted(r["suggest_rank"] for r in rows.values())
    assert ranks == list(range(1, 17))
    assert all(0 <= r["change_score"] <= 1 and 0 < r["suggest"] <= 1 for r in rows.values())
    # the analyst tags the first four suggestions, then asks for a new order
    ds = ogr.Open(str(first), 1)
    layer = ds.GetLayer(0)
    tagged = {}
    for f in layer:
        if f.GetField("suggest_rank") <= 4:
            f.SetField("changed", f.GetField("suggest_rank") % 2)
            layer.SetFeature(f)
            tagged[(f.GetField("row"), f.GetField("col"))] = f.GetField("suggest_rank") % 2
    ds = None
    second = tmp_path / "grid2.gpkg"  # the default size: 64 px on this 256 px scene, as above
    argv = ["tile-grid", *pair, "--out", str(second), "--suggest"]
    assert main([*argv, "--tags-from", str(first)]) == 0
    rows = _grid_rows(second)
    assert {cell: r["changed"] for cell, r in rows.items() if r["changed"] is not None} == tagged
    assert all(rows[cell]["suggest_rank"] is None for cell in tagged)
    assert sorted(r["suggest_rank"] for r in rows.values() if r["suggest_rank"]) == list(
        range(1, 13)
    )


def test_default_grid_gives_a_small_region_enough_tiles(tmp_path, capsys):
    from osgeo import gdal, osr

    from kdmsi.recipe import MIN_GRID_TILES, grid_tile_size

    assert grid_tile_size(10000, 8000) == 256
    assert grid_tile_size(1024, 1024) == 128  # 16 tiles of 256 px are too few to tag
    assert grid_tile_size(500, 500) == 64 and grid_tile_size(100, 90) == 64
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    paths = []
    for name in ("before", "after"):
        path = tmp_path / f"{name}.tif"
        ds = gdal.GetDriverByName("GTiff").Create(str(path), 1024, 1024, 3, gdal.GDT_Byte)
        ds.SetGeoTransform((500000, 0.5, 0, 5000000, 0, -0.5))
        ds.SetProjection(srs.ExportToWkt())
        ds = None
        paths += [f"--{name}", str(path)]
    grid = tmp_path / "grid.gpkg"
    assert main(["tile-grid", *paths, "--out", str(grid)]) == 0
    assert "wrote a grid of 64 tiles of 128 x 128 px" in capsys.readouterr().err
    source = ogr.Open(str(grid))
    assert source.GetLayer(0).GetFeatureCount() == MIN_GRID_TILES


def test_cli_suggestion_errors_write_nothing(tmp_path, scene_pair, capsys):
    pair = ["--before", str(scene_pair["before"]), "--after", str(scene_pair["after"])]
    grid = tmp_path / "grid.gpkg"
    assert main(["tile-grid", *pair, "--out", str(grid), "--tile-size", "64"]) == 0
    before = grid.read_bytes()
    capsys.readouterr()
    cases = [
        (["--out", str(grid), "--suggest", "--tags-from", str(grid), "--overwrite"], "--tags-from"),
        (["--out", str(tmp_path / "a.gpkg"), "--tags-from", str(grid)], "--suggest"),
        (["--out", str(tmp_path / "b.gpkg"), "--suggest", "--tags-from", str(scene_pair["truth"])],
         "tile grid"),
    ]  # fmt: skip
    for extra, word in cases:
        assert main(["tile-grid", *pair, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and word in err, err
    assert grid.read_bytes() == before
    assert not (tmp_path / "a.gpkg").exists() and not (tmp_path / "b.gpkg").exists()


def test_warm_start_refuses_a_model_of_another_architecture(tmp_path, scene_pair, detector_model):
    from kdmsi.training import CDConfig, KDConfig
    from kdmsi.training.warm_start import planned_configs, read_warm_start

    planned = planned_configs(KDConfig(), CDConfig(), 3)
    with pytest.raises(ValueError, match="--warm-start .* resnet18.*--backbone"):
        read_warm_start([detector_model], *planned, 3)
    # the matching architecture reads, and a detector warm-starts the detector only
    fixture = CDConfig(backbone="resnet18", head_channels=256)  # as conftest's detector
    cd_planned = planned_configs(KDConfig(), fixture, 3)
    warm = read_warm_start([detector_model], *cd_planned, 3)
    assert warm.kd is None and warm.detector and warm.sources[0].endswith("detector.kdmsi")


def test_detector_training_starts_from_the_warm_start_weights(detector_model):
    """With lr 0 the detector keeps exactly the weights it was started from."""
    import torch

    from kdmsi.data.pairs import Normalisation
    from kdmsi.models.checkpoint import read_checkpoint
    from kdmsi.training import CDConfig, train_detector

    class Tiles(torch.utils.data.Dataset):
        bands = [1, 2, 3]

        def __len__(self):
            return 4

        def __getitem__(self, i):
            pre = Normalisation.default(3)(np.random.default_rng(i).integers(0, 255, (3, 64, 64)))
            mask = torch.zeros(64, 64, dtype=torch.long)
            return {"pre": pre, "post": pre.flip(-1), "mask": mask, "label": torch.tensor(0.0)}

    state = read_checkpoint(detector_model)["state_dict"]
    config = CDConfig(
        backbone="resnet18", head_channels=256, weights=None, epochs=1, batch_size=2, lr=0.0
    )
    result = train_detector(Tiles(), config, init=state)
    trained = result.model.state_dict()
    weights = [k for k in state if "running_" not in k and "num_batches" not in k]  # not BN stats
    differ = [k for k in weights if not torch.equal(trained[k], state[k])]
    assert not differ, differ[:5]
