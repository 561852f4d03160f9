import pytest
import torch
from torchvision.models import resnet18

from kdmsi.models import (
    DETECTOR_BACKBONES,
    BackboneError,
    SiameseCAMNet,
    SiameseDeepLabV3Plus,
    build_model,
    build_trunk,
    fuse,
)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet34", "resnet50"])
def test_trunks_have_output_stride_16(backbone):
    trunk = build_trunk(backbone).eval()
    with torch.no_grad():
        feats = trunk(torch.randn(1, 3, 64, 96))
    assert feats.high.shape[-2:] == (4, 6)
    assert feats.low.shape[-2:] == (16, 24)
    assert feats.high.shape[1] == trunk.high_channels


@pytest.mark.parametrize("fusion", ["abs", "diff", "concat"])
def test_cam_net_returns_one_logit_channel_at_stride_16(fusion):
    net = SiameseCAMNet("resnet18", fusion=fusion).eval()
    with torch.no_grad():
        g = net(torch.randn(2, 3, 128, 128), torch.randn(2, 3, 128, 128))
    assert g.shape == (2, 1, 8, 8)
    assert net.head.bias is None
    assert net.head.in_channels == 512 * (2 if fusion == "concat" else 1)


def test_fusions():
    a, b = torch.tensor([[1.0]]), torch.tensor([[3.0]])
    assert fuse(a, b, "abs").item() == 2.0
    assert fuse(b, a, "abs").item() == 2.0
    assert fuse(a, b, "diff").item() == 2.0
    assert fuse(a, b, "concat").shape == (1, 2)
    with pytest.raises(ValueError):
        fuse(a, b, "sum")


def test_abs_fusion_is_symmetric_in_the_dates_and_zero_for_identical_dates():
    net = SiameseCAMNet("resnet18").eval()
    x, y = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net(x, y), net(y, x), atol=1e-5)
        assert torch.count_nonzero(net(x, x)) == 0


def test_shared_trunk_and_separate_weights_for_teacher_and_student():
    teacher, student = SiameseCAMNet("resnet18"), SiameseCAMNet("resnet18")
    assert sum(1 for _ in teacher.trunk.parameters()) > 0
    assert teacher.trunk.stem[0].weight.data_ptr() != student.trunk.stem[0].weight.data_ptr()


def test_head_gets_ten_times_the_learning_rate():
    groups = SiameseCAMNet("resnet18").param_groups(1e-3)
    assert groups[0]["lr"] == 1e-3 and groups[1]["lr"] == pytest.approx(1e-2)


def test_multiband_input():
    net = SiameseCAMNet("resnet18", in_channels=6).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 6, 64, 64), torch.randn(1, 6, 64, 64)).shape == (1, 1, 4, 4)


def test_weights_from_a_local_file(tmp_path):
    reference = resnet18()
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)
    net = SiameseCAMNet("resnet18", weights=str(path))
    assert torch.equal(net.trunk.stem[0].weight, reference.conv1.weight)


def test_bad_weights_are_refused_with_a_clear_message(tmp_path):
    with pytest.raises(BackboneError, match="neither a file nor one of"):
        SiameseCAMNet("resnet18", weights="IMAGENET_OOPS")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(BackboneError, match="cannot read"):
        SiameseCAMNet("resnet18", weights=str(bad))
    with pytest.raises(BackboneError, match="'vgg16' is unknown"):
        SiameseCAMNet("vgg16")


def test_deeplab_outputs_two_classes_at_input_size():
    net = SiameseDeepLabV3Plus("resnet18").eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 96, 80), torch.randn(2, 3, 96, 80))
        prob = net.change_probability(torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64))
    assert out.shape == (2, 2, 96, 80)
    assert prob.shape == (1, 1, 64, 64) and 0 <= prob.min() and prob.max() <= 1
    rates = [m.convs[i][0].dilation[0] for m in [net.aspp] for i in (1, 2, 3)]
    assert rates == [6, 12, 18]
    assert net.aspp.project[0].out_channels == 256
    assert net.low_proj[0].out_channels == 48


def test_build_model_from_config():
    net = SiameseCAMNet("resnet18", fusion="diff")
    clone = build_model("kd", net.config())
    assert clone.config() == net.config()
    with pytest.raises(ValueError):
        build_model("unet", {})


@pytest.mark.parametrize("backbone", DETECTOR_BACKBONES)
def test_every_detector_trunk_has_stride_4_and_16_features(backbone):
    trunk = build_trunk(backbone).eval()
    with torch.no_grad():
        feats = trunk(torch.randn(1, 3, 64, 96))
    assert feats.low.shape[1:] == (trunk.low_channels, 16, 24)
    assert feats.high.shape[1:] == (trunk.high_channels, 4, 6)


def test_mobilenet_detector_forward_and_forward_features():
    net = SiameseDeepLabV3Plus("mobilenet_v3_large").eval()
    pre, post = torch.randn(2, 3, 64, 96), torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        feats = net.forward_features(pre, post)
        prob = net.change_probability(pre, post)
    assert (net.trunk.low_channels, net.trunk.high_channels) == (24, 960)
    assert feats.low_pre.shape == feats.low_post.shape == (2, 24, 16, 24)
    assert feats.high_pre.shape == feats.high_post.shape == (2, 960, 4, 6)
    assert feats.change.shape == (2, 304, 16, 24)
    assert feats.logits.shape == (2, 2, 64, 96)
    assert torch.allclose(prob, feats.logits.softmax(dim=1)[:, 1:2], atol=1e-6)
    assert net.config() == {"backbone": "mobilenet_v3_large", "in_channels": 3}


def test_mobilenet_takes_other_band_counts_and_is_detector_only():
    net = SiameseDeepLabV3Plus("mobilenet_v3_large", in_channels=4).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 4, 64, 64), torch.randn(1, 4, 64, 64)).shape == (1, 2, 64, 64)
    with pytest.raises(BackboneError, match="detector backbone only"):
        SiameseCAMNet("mobilenet_v3_large")
    with pytest.raises(BackboneError, match="unknown backbone"):
        SiameseDeepLabV3Plus("vgg16")


@pytest.mark.parametrize("backbone", DETECTOR_BACKBONES)
def test_detector_eval_forward_equals_forward_features(backbone):
    # eval mode runs the dates through the encoder one at a time (less memory): same logits
    torch.manual_seed(0)
    net = SiameseDeepLabV3Plus(backbone).eval()
    pre, post = torch.randn(3, 3, 64, 96), torch.randn(3, 3, 64, 96)
    with torch.no_grad():
        lean = net(pre, post)
        full = net.forward_features(pre, post).logits
    assert lean.shape == full.shape == (3, 2, 64, 96)
    assert torch.allclose(lean, full, atol=1e-4, rtol=1e-4)


def test_detector_training_forward_normalises_both_dates_together():
    # training keeps one encoder pass over both dates: batch norm statistics over 2B images
    torch.manual_seed(0)
    net = SiameseDeepLabV3Plus("resnet18").train()
    pre, post = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64) + 2.0
    torch.manual_seed(1)
    logits = net(pre, post)
    torch.manual_seed(1)
    expected = net.forward_features(pre, post).logits
    assert torch.allclose(logits, expected)
    assert logits.requires_grad
