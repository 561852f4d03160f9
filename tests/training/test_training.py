"""Training on synthetic scenes: both KD losses and the detector loss go down."""

import pytest
import torch

from kdmsi.data.pairs import PairDataset
from kdmsi.data.synthetic import make_scene, write_tile_dataset
from kdmsi.inference.pseudo_labels import generate_pseudo_labels
from kdmsi.models import SiameseCAMNet
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
    result = train_kd(ds, KDConfig(epochs=6, seed=0))  # the default recipe
    first, last = result.history[0], result.history[-1]
    assert last["train_cls"] < first["train_cls"]
    assert last["train_kd"] < first["train_kd"]
    assert result.selection["criterion"] == "heldout_teacher_cls_loss"
    assert not result.teacher.training and not result.student.training
    # the frozen prefix (stem and stages 1-3) kept its ImageNet weights in both networks
    pretrained = SiameseCAMNet("efficientnet_lite0", weights="imagenet", head="pyramid")
    for net in (result.teacher, result.student):
        for mine, start in zip(net.trunk.stages()[:4], pretrained.trunk.stages()[:4]):
            for a, b in zip(mine.state_dict().values(), start.state_dict().values()):
                assert torch.equal(a, b)
    assert not torch.equal(
        result.teacher.trunk.head[0].weight, pretrained.trunk.head[0].weight
    )  # the rest was trained


def test_default_recipe_starts_from_imagenet_weights():
    from kdmsi.models.pretrained import read_state_file, wheel_weights_file

    kd, cd = KDConfig(), CDConfig()
    assert (kd.backbone, kd.weights, cd.backbone, cd.weights) == (
        "efficientnet_lite0",
        "imagenet",
        "efficientnet_lite0",
        "imagenet",
    )
    net = SiameseCAMNet(kd.backbone, weights=kd.weights, head=kd.head)
    stem = read_state_file(str(wheel_weights_file("efficientnet_lite0")))["_conv_stem.weight"]
    assert torch.equal(net.trunk.stem[0].weight, stem)
    assert KDConfig.paper().backbone == "resnet50" and CDConfig.paper().lr == 0.007


def test_kd_training_refuses_one_class_only(tiles):
    ds = PairDataset(tiles, tile_size=64)
    ds.labels = [1] * len(ds)
    with pytest.raises(ValueError, match="at least 2 tiles labelled unchanged"):
        train_kd(ds, KDConfig(backbone="resnet18", weights=None, epochs=1))


def test_pseudo_labels_then_detector_training(tiles, tmp_path):
    ds = PairDataset(tiles, tile_size=64)
    student = train_kd(ds, KDConfig(epochs=3)).student
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
        CDConfig.paper(backbone="resnet18", weights=None, epochs=4, batch_size=8, lr=0.01),
    )
    assert result.history[-1]["train_ce"] < result.history[0]["train_ce"]


def test_cancel_stops_training_and_pseudo_labels_leave_nothing(tiles, tmp_path):
    from kdmsi.progress import Cancelled

    ds = PairDataset(tiles, tile_size=64)
    with pytest.raises(Cancelled):
        train_kd(ds, KDConfig(weights=None, epochs=1), cancelled=lambda: True)
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


@pytest.mark.real_data
def test_pretrained_trunk_localises_real_change_better_than_random(real_data):
    """WHU-CD aerial crops in 64 px tiles, image-level labels only: after the same short KD
    training, the student of the ImageNet trunk finds the new buildings, that of a random
    trunk does not (change IoU at the best threshold, against the pixel masks)."""
    from kdmsi.training.kd import student_change_iou

    ds = PairDataset(real_data / "WHU-CD", tile_size=64)
    assert ds.labels.count(0) >= 2 and ds.has_masks
    scores = {}
    for weights in ("imagenet", "none"):
        config = KDConfig(weights=weights, epochs=6, batch_size=4, seed=0)  # 60 steps
        student = train_kd(ds, config).student
        scores[weights] = student_change_iou(student, ds, torch.device("cpu"))
    assert scores["imagenet"] > 0.5 and scores["imagenet"] > scores["none"] + 0.15, scores
