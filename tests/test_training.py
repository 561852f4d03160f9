"""Training on synthetic scenes: both KD losses and the detector loss go down."""

import pytest
import torch

from kdmsi.data import PairDataset
from kdmsi.models import SiameseCAMNet
from kdmsi.pseudo_labels import generate_pseudo_labels
from kdmsi.synthetic import make_scene, write_tile_dataset
from kdmsi.training import CDConfig, KDConfig, train_detector, train_kd
from kdmsi.training.common import poly_lr, sgd, stratified_holdout


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    scenes = [make_scene(256, 256, seed=s, pixel_size_m=1.0) for s in (1, 2, 3, 4)]
    write_tile_dataset(scenes, root, tile_size=64)
    return root


def test_poly_schedule_and_nesterov_sgd():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = sgd([{"params": [p], "lr": 0.1, "base_lr": 0.1}], 0.9, 1e-4)
    assert opt.param_groups[0]["nesterov"] and opt.param_groups[0]["momentum"] == 0.9
    poly_lr(opt, 50, 100, 0.9)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**0.9)
    poly_lr(opt, 100, 100)
    assert opt.param_groups[0]["lr"] == 0.0


def test_stratified_holdout_keeps_both_classes():
    train, held = stratified_holdout([0] * 10 + [1] * 20 + [None], 0.1, seed=0)
    assert len(held) == 3 and sorted(train + held) == list(range(31))


def test_kd_training_lowers_both_losses(tiles):
    ds = PairDataset(tiles, tile_size=64)
    assert 0 < ds.labels.count(1) < len(ds)
    config = KDConfig(backbone="resnet18", epochs=6, batch_size=8, lr=0.01, seed=0)
    result = train_kd(ds, config)
    first, last = result.history[0], result.history[-1]
    assert last["train_cls"] < first["train_cls"]
    assert last["train_kd"] < first["train_kd"]
    assert result.selection["criterion"] == "heldout_teacher_cls_loss"
    assert not result.teacher.training and not result.student.training


def test_kd_training_refuses_one_class_only(tiles):
    ds = PairDataset(tiles, tile_size=64)
    ds.labels = [1] * len(ds)
    with pytest.raises(ValueError, match="at least 2 tiles labelled unchanged"):
        train_kd(ds, KDConfig(backbone="resnet18", epochs=1))


def test_pseudo_labels_then_detector_training(tiles, tmp_path):
    ds = PairDataset(tiles, tile_size=64)
    student = train_kd(ds, KDConfig(backbone="resnet18", epochs=1, batch_size=8)).student
    out = tmp_path / "pseudo"
    summary = generate_pseudo_labels(student, ds, out, threshold="auto", scales=(1.0, 2.0))
    assert (out / "pseudo_labels.json").is_file()
    assert len(list((out / "label").glob("*.png"))) == len(ds.pairs)
    assert 0 < summary["threshold"]["value"] < 1
    # tiles labelled unchanged are all background in the pseudo labels
    pseudo = PairDataset(tiles, tile_size=64, label_dir=out / "label")
    for i, label in enumerate(ds.labels):
        if label == 0:
            assert int(pseudo[i]["mask"].sum()) == 0
    with pytest.raises(FileExistsError, match="--overwrite"):
        generate_pseudo_labels(student, ds, out)
    result = train_detector(
        PairDataset(tiles, tile_size=64, label_dir=tiles / "label"),
        CDConfig(backbone="resnet18", epochs=4, batch_size=8, lr=0.01),
    )
    assert result.history[-1]["train_ce"] < result.history[0]["train_ce"]


def test_cancel_stops_training_and_pseudo_labels_leave_nothing(tiles, tmp_path):
    from kdmsi.progress import Cancelled

    ds = PairDataset(tiles, tile_size=64)
    with pytest.raises(Cancelled):
        train_kd(ds, KDConfig(backbone="resnet18", epochs=1), cancelled=lambda: True)
    calls = iter(range(1000))
    with pytest.raises(Cancelled):
        generate_pseudo_labels(
            SiameseCAMNet("resnet18").eval(),
            ds,
            tmp_path / "p",
            scales=(1.0,),
            cancelled=lambda: next(calls) > 1,
        )
    assert not list(tmp_path.iterdir())
