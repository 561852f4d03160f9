"""Training from tagged tiles: windows from any-CRS tile layers, tag checks, the whole chain."""

import json

import numpy as np
import pytest
from osgeo import gdal, ogr, osr

from kdmsi.data.synthetic import make_scene, write_scene
from kdmsi.data.tagged import RasterTileDataset, TagError, read_tagged_windows
from kdmsi.geo.align import align_pair
from kdmsi.models.checkpoint import load_checkpoint
from kdmsi.progress import Cancelled
from kdmsi.training import CDConfig, KDConfig
from kdmsi.training.from_tags import TagTrainingConfig, train_from_tags

TILE = 64


@pytest.fixture(scope="module")
def scene_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scene")
    scene = make_scene(256, 256, seed=5, pixel_size_m=1.0)
    return scene, write_scene(scene, folder)


def write_tiles(path, scene, tags, epsg=None):
    """A GeoPackage of TILE-px squares over `scene` with the given `changed` values."""
    gt = scene.geotransform
    srs = osr.SpatialReference()
    srs.ImportFromWkt(scene.crs_wkt)
    out_srs = srs
    if epsg:
        out_srs = osr.SpatialReference()
        out_srs.ImportFromEPSG(epsg)
    for s in (srs, out_srs):
        s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    transform = osr.CoordinateTransformation(srs, out_srs)
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = ds.CreateLayer("tiles", out_srs, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("changed", ogr.OFTInteger))
    for (row, col), tag in tags.items():
        x0, y0 = gt[0] + col * TILE * gt[1], gt[3] + row * TILE * gt[5]
        x1, y1 = x0 + TILE * gt[1], y0 + TILE * gt[5]
        ring = ogr.Geometry(ogr.wkbLinearRing)
        for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)):
            ring.AddPoint_2D(x, y)
        poly = ogr.Geometry(ogr.wkbPolygon)
        poly.AddGeometry(ring)
        poly.Transform(transform)
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetGeometry(poly)
        if tag is not None:
            feature.SetField("changed", tag)
        layer.CreateFeature(feature)
    ds = None
    return path


def truth_tags(scene):
    return {
        (r, c): int(scene.change[r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE].any())
        for r in range(4)
        for c in range(4)
    }


@pytest.mark.parametrize("epsg", [None, 4326])
def test_tagged_windows_in_any_crs_land_on_the_grid(tmp_path, scene_files, epsg):
    scene, files = scene_files
    tags = truth_tags(scene)
    tags[(0, 0)] = None  # untagged: ignored
    layer = write_tiles(tmp_path / "t.gpkg", scene, tags, epsg)
    with align_pair(files["before"], files["after"]) as pair:
        windows, size = read_tagged_windows(layer, pair, TILE)
        inferred, inferred_size = read_tagged_windows(layer, pair)
    assert len(windows) == 15 and size == TILE
    assert inferred == windows and inferred_size == TILE  # the grid's own tile size
    got = {(w.y // TILE, w.x // TILE): t for w, t in windows}
    assert all(w.x % TILE == 0 and w.y % TILE == 0 and w.w == TILE for w, _ in windows)
    assert got == {k: v for k, v in tags.items() if v is not None}


def test_raster_tile_dataset_items(scene_files, tmp_path):
    scene, files = scene_files
    layer = write_tiles(tmp_path / "t.gpkg", scene, truth_tags(scene))
    with align_pair(files["before"], files["after"]) as pair:
        from kdmsi.data.pairs import Normalisation
        from kdmsi.geo.stretch import pair_stretches

        windows, _ = read_tagged_windows(layer, pair, TILE)
        ds = RasterTileDataset(pair, windows, pair_stretches(pair), Normalisation.default(3), TILE)
        item = ds[0]
        assert item["pre"].shape == (3, TILE, TILE)
        pre, _, valid = ds.read(0)
        w = windows[0][0]
        expected = Normalisation.default(3)(scene.pre[:, w.y : w.y + TILE, w.x : w.x + TILE])
        assert np.allclose(pre, expected.numpy(), atol=1e-5) and valid.all()


def test_bad_tag_layers_are_refused(tmp_path, scene_files):
    scene, files = scene_files
    few = write_tiles(tmp_path / "few.gpkg", scene, {(0, 0): 1, (0, 1): 0, (1, 1): 1})
    with pytest.raises(TagError, match="at least 2 of each class"):
        train_from_tags(files["before"], files["after"], few, tmp_path / "m.kdmsi")
    assert not (tmp_path / "m.kdmsi").exists()
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(tmp_path / "nofield.gpkg"))
    srs = osr.SpatialReference()
    srs.ImportFromWkt(scene.crs_wkt)
    ds.CreateLayer("x", srs, ogr.wkbPolygon)
    ds = None
    with align_pair(files["before"], files["after"]) as pair:
        with pytest.raises(TagError, match="no field 'changed'"):
            read_tagged_windows(tmp_path / "nofield.gpkg", pair, TILE)
        with pytest.raises(TagError, match="cannot open"):
            read_tagged_windows(tmp_path / "missing.gpkg", pair, TILE)


def test_train_from_tags_writes_a_loadable_detector(tmp_path, scene_files):
    scene, files = scene_files
    layer = write_tiles(tmp_path / "t.gpkg", scene, truth_tags(scene))
    config = TagTrainingConfig(
        tile_size=TILE,
        scales=(1.0, 2.0),
        kd=KDConfig(epochs=10, batch_size=4),  # the default recipe (pretrained), shortened
        cd=CDConfig(epochs=1, batch_size=4),
    )
    stages = []
    out = tmp_path / "model.kdmsi"
    summary = train_from_tags(
        files["before"],
        files["after"],
        layer,
        out,
        config,
        progress=lambda f, m: stages.append(f),
        report_dir=tmp_path / "report",
        kd_out=tmp_path / "kd.kdmsi",
    )
    model, meta = load_checkpoint(out)
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    panels = ["pre", "post", "teacher-cam", "student", "msi", "pseudo-label", "detector"]
    assert report["tiles"] and all(t["panels"] == panels for t in report["tiles"])
    assert report["threshold"] == meta["training"]["pseudo_labels"]["threshold"]
    assert {"losses", "threshold"} <= set(report["figures"])
    assert meta["training"]["kd"]["steps"] and meta["training"]["detector"]["steps"]
    assert meta["kind"] == "detector" and meta["tile_size"] == TILE
    assert meta["training"]["tags"] == summary["tags"]
    assert 0 < meta["training"]["pseudo_labels"]["threshold"]["value"] < 1
    assert stages == sorted(stages) and stages[-1] == 1.0
    with pytest.raises(FileExistsError, match="--overwrite"):
        train_from_tags(files["before"], files["after"], layer, out, config)
    # re-run on a partly tagged grid, starting from this run's models (short: warm)
    tags = truth_tags(scene)
    for cell in list(tags)[::3]:
        tags[cell] = None
    partial = write_tiles(tmp_path / "partial.gpkg", scene, tags)
    warm = TagTrainingConfig(
        tile_size=TILE,
        scales=(1.0, 2.0),
        kd=KDConfig(epochs=2, batch_size=4),
        cd=CDConfig(epochs=1, batch_size=4),
        warm_start=(str(out), str(tmp_path / "kd.kdmsi")),
    )
    again = train_from_tags(files["before"], files["after"], partial, tmp_path / "m2.kdmsi", warm)
    assert again["weights"]["kd"].startswith("warm start from")
    assert again["weights"]["detector"].startswith("warm start from")
    tagged = sum(v is not None for v in tags.values())
    assert again["tags"]["changed"] + again["tags"]["not_changed"] == tagged


def test_quality_robust_training_saves_the_hicd_student(tmp_path, scene_files):
    from kdmsi.models.checkpoint import is_quality_robust
    from kdmsi.training import HiCDConfig

    scene, files = scene_files
    layer = write_tiles(tmp_path / "t.gpkg", scene, truth_tags(scene))
    config = TagTrainingConfig(
        tile_size=TILE,
        scales=(1.0,),
        kd=KDConfig(epochs=10, batch_size=4),
        cd=CDConfig(epochs=1, batch_size=8),
        quality_robust=True,
        hicd=HiCDConfig(epochs=1, batch_size=8, preset="resolution"),
    )
    stages = []
    out = tmp_path / "robust.kdmsi"
    summary = train_from_tags(
        files["before"], files["after"], layer, out, config, progress=lambda f, m: stages.append(f)
    )
    _, meta = load_checkpoint(out)
    assert is_quality_robust(out) and meta["method"] == "feature-mse"
    assert summary["hicd"]["config"]["preset"] == "resolution"
    assert meta["training"]["hicd"]["history"][0]["train_ce"] > 0
    assert stages == sorted(stages) and stages[-1] == 1.0


def test_cancelled_training_writes_nothing(tmp_path, scene_files):
    scene, files = scene_files
    layer = write_tiles(tmp_path / "t.gpkg", scene, truth_tags(scene))
    config = TagTrainingConfig(
        tile_size=TILE, kd=KDConfig(backbone="resnet18", weights=None, epochs=1)
    )
    with pytest.raises(Cancelled):
        train_from_tags(
            files["before"],
            files["after"],
            layer,
            tmp_path / "m.kdmsi",
            config,
            cancelled=lambda: True,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.gpkg"]
    assert gdal.Open(str(files["before"])) is not None


def test_cli_train_from_tags_and_its_errors(tmp_path, scene_files, capsys):
    from kdmsi.cli import main

    scene, files = scene_files
    layer = write_tiles(tmp_path / "t.gpkg", scene, truth_tags(scene))
    out = tmp_path / "m.kdmsi"
    argv = [
        "train",
        "--before",
        str(files["before"]),
        "--after",
        str(files["after"]),
        "--tiles",
        str(layer),
        "--out",
        str(out),
        "--kd-model",
        str(tmp_path / "kd.kdmsi"),
        "--kd-epochs",
        "10",
        "--cd-epochs",
        "1",
        "--batch-size",
        "4",
        "--no-report",
    ]
    assert main(argv) == 0
    meta = load_checkpoint(out)[1]
    assert meta["kind"] == "detector" and meta["tile_size"] == TILE  # the grid's tile size
    assert meta["model"]["backbone"] == "efficientnet_lite0"
    assert meta["training"]["weights"]["kd"].startswith("efficientnet_lite0: ImageNet")
    assert set(meta["training"]["timing_s"]) == {"kd", "pseudo_labels", "detector"}
    assert load_checkpoint(tmp_path / "kd.kdmsi")[1]["kind"] == "kd"
    capsys.readouterr()
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    few = write_tiles(tmp_path / "few.gpkg", scene, {(0, 0): 1, (0, 1): 0})
    argv[argv.index(str(layer))] = str(few)
    argv.append("--overwrite")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "at least 2 of each class" in err and "Traceback" not in err


def test_empty_pseudo_labels_stop_training_loudly(tmp_path, scene_files, capsys):
    """No detector is trained on (nearly) empty pseudo labels: one line with what to do, exit
    2, no model file, and the report says so in red."""
    from kdmsi.cli import main

    scene, files = scene_files
    layer = write_tiles(tmp_path / "t.gpkg", scene, truth_tags(scene))
    out, report = tmp_path / "m.kdmsi", tmp_path / "report"
    argv = ["train", "--before", str(files["before"]), "--after", str(files["after"])]
    argv += ["--tiles", str(layer), "--out", str(out), "--report", str(report)]
    argv += ["--kd-epochs", "1", "--batch-size", "8", "--threshold", "0.999"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "pseudo labels are (nearly) empty" in err and "--threshold" in err
    assert "Tag more tiles" in err and not out.exists()
    page = (report / "index.html").read_text()
    assert 'class="warning"' in page and "Training stopped before the detector" in page


def test_check_pseudo_labels_limits():
    from kdmsi.inference.pseudo_labels import DegeneratePseudoLabels, check_pseudo_labels
    from kdmsi.inference.thresholds import ThresholdChoice

    choice = ThresholdChoice(0.5, "auto")
    tile = np.zeros((10, 10), np.uint8)
    some = tile.copy()
    some[:3] = 1
    ignored = np.full((10, 10), 255, np.uint8)
    assert check_pseudo_labels([some, tile, ignored], [1, 0, 1], choice) == 0.3
    with pytest.raises(DegeneratePseudoLabels, match="nearly\\) empty"):
        check_pseudo_labels([tile, some], [1, 0], choice)
    with pytest.raises(DegeneratePseudoLabels, match="nearly\\) all change"):
        check_pseudo_labels([np.ones((10, 10), np.uint8), tile], [1, 0], choice)


def test_a_model_that_contradicts_the_tags_is_said_loudly(tmp_path, scene_files, capsys):
    """Tiles with plain change tagged *not changed*: the model saved, exit 0, and the CLI, the
    model's metadata and the report say where it contradicts the tags and what to do."""
    from kdmsi.cli import main

    scene, files = scene_files
    tags = truth_tags(scene)
    changed = sorted(cell for cell, tag in tags.items() if tag == 1)
    for cell in changed[: len(changed) // 2]:  # half the changed tiles mis-tagged
        tags[cell] = 0
    layer = write_tiles(tmp_path / "t.gpkg", scene, tags)
    out, report = tmp_path / "m.kdmsi", tmp_path / "report"
    argv = ["train", "--before", str(files["before"]), "--after", str(files["after"])]
    argv += ["--tiles", str(layer), "--out", str(out), "--report", str(report)]
    argv += ["--kd-epochs", "10", "--cd-epochs", "1", "--batch-size", "4", "--threshold", "0.3"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    check = load_checkpoint(out)[1]["training"]["detector"]["tag_check"]
    assert check["not_changed_tiles"] == 16 - len(changed) + len(changed) // 2
    assert check["warnings"], check
    for warning in check["warnings"]:
        assert warning in err
    assert "Tag more" in err and "threshold than the model's" in err
    page = (report / "index.html").read_text()
    assert 'class="warning"' in page and "tags after training" in page
