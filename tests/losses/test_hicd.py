"""HiCD: correlation matrices and losses (zero / known values), memory bounds, training loop."""

import math

import numpy as np
import pytest
import torch

from kdmsi.losses.hicd import (
    EmbeddingQueue,
    HiCDLoss,
    HiCDLossConfig,
    correlation_distance,
    cross_correlation,
    feature_mse_loss,
    global_correlation,
    pixel_embeddings,
    sample_positions,
    self_correlation,
    unit_positions,
)
from kdmsi.models import DetectorFeatures, SiameseDeepLabV3Plus
from kdmsi.models.checkpoint import is_quality_robust, load_checkpoint

TILE = 32


def two_positions(*vectors):
    """A [1, C, 1, N] map whose N positions hold the given C-vectors."""
    return torch.tensor(vectors, dtype=torch.float32).T[None, :, None, :]


def test_self_and_cross_correlation_known_values():
    orthogonal = two_positions((1.0, 0.0), (0.0, 2.0))
    diagonal = two_positions((3.0, 0.0), (1.0, 1.0))
    torch.testing.assert_close(self_correlation(orthogonal)[0], torch.eye(2))
    c = 1 / math.sqrt(2)
    torch.testing.assert_close(self_correlation(diagonal)[0], torch.tensor([[1, c], [c, 1]]))
    rotated = two_positions((0.0, 1.0), (-1.0, 0.0))
    torch.testing.assert_close(
        cross_correlation(orthogonal, rotated)[0], torch.tensor([[0.0, -1.0], [1.0, 0.0]])
    )


def test_distances_zero_for_identical_inputs():
    x = torch.randn(2, 8, 5, 6)
    corr = self_correlation(x)
    for distance in ("mse", "kl"):
        assert float(correlation_distance(corr, corr.clone(), distance)) == pytest.approx(
            0.0, abs=1e-6
        )


def test_distances_known_values():
    student = torch.eye(2)[None]
    c = 1 / math.sqrt(2)
    teacher = torch.tensor([[[1.0, c], [c, 1.0]]])
    assert float(correlation_distance(student, teacher, "mse")) == pytest.approx(0.25)
    # KL(p || q) per row, p = softmax(teacher / tau), q = softmax(student / tau); rows mirror
    tau = 0.5
    p = np.exp(np.array([1.0, c]) / tau)
    p /= p.sum()
    q = np.exp(np.array([1.0, 0.0]) / tau)
    q /= q.sum()
    expected = float((p * np.log(p / q)).sum())
    got = float(correlation_distance(student, teacher, "kl", tau=tau))
    assert got == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="distance"):
        correlation_distance(student, teacher, "l1")


def test_pooling_bounds_the_correlation_size():
    big = torch.randn(1, 4, 200, 120)
    assert self_correlation(big).shape == (1, 32 * 32, 32 * 32)
    assert self_correlation(big, max_side=8).shape == (1, 64, 64)
    small = torch.randn(3, 4, 4, 5)
    assert self_correlation(small).shape == (3, 20, 20)  # smaller maps are not upsampled
    assert cross_correlation(small, big, max_side=16).shape == (3, 20, 256)
    assert unit_positions(big).norm(dim=-1).allclose(torch.ones(1, 1024))


def test_queue_is_bounded_fifo_and_detached():
    queue = EmbeddingQueue(10)
    assert len(queue) == 0 and queue.keys() is None
    for i in range(4):
        queue.push(torch.full((4, 3), float(i), requires_grad=True))
    keys = queue.keys()
    assert keys.shape == (10, 3) and not keys.requires_grad
    assert keys[:4].eq(3).all() and keys[-2:].eq(1).all()  # newest first, oldest dropped
    EmbeddingQueue(0).push(torch.ones(2, 3))


def test_global_correlation_shapes_and_sampling():
    x = torch.randn(2, 6, 4, 4)
    index = sample_positions(2, 16, 5, torch.Generator().manual_seed(0))
    assert index.shape == (2, 5) and all(len(set(row.tolist())) == 5 for row in index)
    assert sample_positions(2, 16, 40).shape == (2, 16)
    emb = pixel_embeddings(x, index)
    assert emb.shape == (10, 6)
    torch.testing.assert_close(
        emb[0], torch.nn.functional.normalize(x[0].flatten(1)[:, index[0, 0]], dim=0)
    )
    s, t = global_correlation(emb, emb, torch.randn(7, 6))
    assert s.shape == t.shape == (10, 17)
    assert float(correlation_distance(s, t)) == 0.0


def fake_features(batch=2, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g).requires_grad_(requires_grad)

    return DetectorFeatures(
        low_pre=r(batch, 8, 16, 16),
        low_post=r(batch, 8, 16, 16),
        high_pre=r(batch, 16, 4, 4),
        high_post=r(batch, 16, 4, 4),
        change=r(batch, 12, 16, 16),
        logits=r(batch, 2, 64, 64),
    )


@pytest.mark.parametrize("distance", ["mse", "kl"])
def test_hicd_loss_zero_for_identical_features_and_grads_reach_the_student(distance):
    loss = HiCDLoss(HiCDLossConfig(distance=distance, queue_size=8))
    same = loss(fake_features(), fake_features())
    assert set(same) == {"sfd_self", "sfd_cross", "cfd", "global", "total"}
    for value in same.values():
        assert float(value) == pytest.approx(0.0, abs=1e-6)
    assert len(loss.queue) == 8  # 2 images x 16 pixels, bounded by the queue size
    student = fake_features(seed=1, requires_grad=True)
    teacher = fake_features(seed=2)
    terms = loss(student, teacher)
    assert float(terms["total"].detach()) > 0
    terms["total"].backward()
    assert student.low_post.grad is not None and student.change.grad is not None
    assert teacher.change.grad is None


def test_hicd_loss_toggles_and_weights():
    student, teacher = fake_features(seed=1), fake_features(seed=2)
    only_cross = HiCDLoss(
        HiCDLossConfig(use_self=False, use_cfd=False, use_global=False, lambda_sfd=3.0)
    )(student, teacher)
    assert set(only_cross) == {"sfd_cross", "total"}
    assert float(only_cross["total"]) == pytest.approx(3 * float(only_cross["sfd_cross"]))
    with pytest.raises(ValueError, match="stages"):
        HiCDLoss(HiCDLossConfig(stages=("mid",)))
    with pytest.raises(ValueError, match="self_dates"):
        HiCDLoss(HiCDLossConfig(self_dates=("now",)))
    both = HiCDLoss(HiCDLossConfig(self_dates=("pre", "post"), use_cross=False))
    post_only = HiCDLoss(HiCDLossConfig(use_cross=False))
    assert float(both(student, student)["sfd_self"]) == pytest.approx(0.0, abs=1e-6)
    pre_term = HiCDLoss(HiCDLossConfig(self_dates=("pre",)))(student, teacher)["sfd_self"]
    expected = (float(pre_term) + float(post_only(student, teacher)["sfd_self"])) / 2
    assert float(both(student, teacher)["sfd_self"]) == pytest.approx(expected, rel=1e-5)


def test_feature_mse_zero_for_identical_and_scale_free():
    a = fake_features(seed=3)
    assert float(feature_mse_loss(a, a)) == 0.0
    b = fake_features(seed=4)
    base = float(feature_mse_loss(a, b))
    a10 = DetectorFeatures(**{k: 10 * v for k, v in vars(a).items()})
    b10 = DetectorFeatures(**{k: 10 * v for k, v in vars(b).items()})
    assert float(feature_mse_loss(a10, b10)) == pytest.approx(base, rel=1e-5)


# ------------------------------------------------------------------------- training loop


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    from kdmsi.data.synthetic import make_scene, write_tile_dataset

    root = tmp_path_factory.mktemp("hicd_tiles")
    write_tile_dataset([make_scene(64, 64, seed=3, pixel_size_m=1.0)], root, tile_size=TILE)
    return root


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return SiameseDeepLabV3Plus("resnet18").eval()


def small_config(method, **kw):
    from kdmsi.training import HiCDConfig

    loss = HiCDLossConfig(global_pixels=4, queue_size=16)
    return HiCDConfig(method=method, epochs=1, batch_size=4, lr=0.001, loss=loss, **kw)


@pytest.mark.parametrize("method", ["direct", "feature-mse", "hicd"])
def test_train_hicd_methods_leave_the_teacher_untouched(tiles, teacher, method):
    from kdmsi.data.pairs import PairDataset
    from kdmsi.training import train_hicd

    data = PairDataset(tiles, tile_size=TILE)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    grads = [p.requires_grad for p in teacher.parameters()]
    messages = []
    result = train_hicd(
        teacher, data, small_config(method), progress=lambda f, m: messages.append(f)
    )
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert [p.requires_grad for p in teacher.parameters()] == grads
    assert not result.model.training and result.selection["criterion"] == "last_epoch"
    record = result.history[0]
    assert "train_ce" in record
    if method == "hicd":
        assert {"train_sfd_self", "train_sfd_cross", "train_cfd", "train_global"} <= set(record)
    if method == "feature-mse":
        assert "train_feat_mse" in record
    assert messages and messages[-1] == pytest.approx(1.0)
    changed = any(not torch.equal(v, before[k]) for k, v in result.model.state_dict().items())
    assert changed


def test_student_inits_keep_the_teachers_architecture():
    """`imagenet` and `random` students are new networks with the teacher's trunk, bands and
    head; `imagenet` starts from the ImageNet trunk, not from the teacher's trained one."""
    from kdmsi.training.hicd import HiCDConfig, make_student

    torch.manual_seed(0)
    teacher = SiameseDeepLabV3Plus("efficientnet_lite0", 4, None, head_channels=64)
    imagenet = SiameseDeepLabV3Plus("efficientnet_lite0", 4, "imagenet", head_channels=64)
    cpu = torch.device("cpu")
    for init in ("imagenet", "random", "teacher"):
        student = make_student(teacher, HiCDConfig(init=init), cpu)
        assert student.config() == teacher.config() and student.training
    trunk = make_student(teacher, HiCDConfig(init="imagenet"), cpu).trunk.state_dict()
    for key, value in imagenet.trunk.state_dict().items():
        torch.testing.assert_close(trunk[key], value)
    assert HiCDConfig().optimizer == "adamw" and HiCDConfig().freeze_bn


def test_train_hicd_refuses_bad_options_and_cancels(tiles, teacher):
    from kdmsi.data.pairs import PairDataset
    from kdmsi.progress import Cancelled
    from kdmsi.training import train_hicd

    data = PairDataset(tiles, tile_size=TILE)
    with pytest.raises(ValueError, match="method"):
        train_hicd(teacher, data, small_config("fitnet"))
    with pytest.raises(ValueError, match="preset"):
        train_hicd(teacher, data, small_config("direct", preset="jpeg"))
    with pytest.raises(Cancelled):
        train_hicd(teacher, data, small_config("hicd"), cancelled=lambda: True)


def test_cli_train_hicd_saves_a_quality_robust_student(tiles, teacher, tmp_path):
    from kdmsi.cli import main
    from kdmsi.data.pairs import Normalisation
    from kdmsi.models.checkpoint import save_detector

    teacher_path = save_detector(
        tmp_path / "teacher.kdmsi", teacher, [1, 2, 3], Normalisation.default(3), TILE
    )
    assert not is_quality_robust(teacher_path)
    out = tmp_path / "student.kdmsi"
    argv = ["train-hicd", "--teacher", str(teacher_path), "--data", str(tiles), "--out", str(out)]
    argv += ["--epochs", "1", "--batch-size", "4", "--preset", "resolution", "--global-pixels", "4"]
    assert main(argv) == 0
    model, meta = load_checkpoint(out)
    assert is_quality_robust(out) and is_quality_robust(meta)
    assert meta["method"] == "feature-mse" and meta["tile_size"] == TILE
    assert meta["training"]["hicd"]["config"]["preset"] == "resolution"
    assert isinstance(model, SiameseDeepLabV3Plus)
    assert main(argv) == 2  # exists: refused without --overwrite
