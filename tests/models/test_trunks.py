"""Every trunk of the registry (`kdmsi.trunk_registry.TRUNKS`) keeps the trunk contract
(`kdmsi.models.features.Trunk`), so a new trunk is checked by adding its registry entry."""

import importlib.util

import pytest
import torch

from kdmsi.choices import BACKBONES, DETECTOR_BACKBONES
from kdmsi.models import SiameseCAMNet, SiameseDeepLabV3Plus, Trunk, build_trunk
from kdmsi.models.pretrained import describe_weights
from kdmsi.runtime.speed import REFERENCE_SECONDS_PER_TILE, REFERENCE_TRAIN_SECONDS
from kdmsi.trunk_registry import TORCHVISION, TRUNKS


@pytest.mark.parametrize("name", list(TRUNKS))
def test_trunk_keeps_the_contract(name):
    entry = TRUNKS[name]
    trunk = build_trunk(name, in_channels=4).eval()
    assert isinstance(trunk, Trunk) and trunk.in_channels == 4
    with torch.no_grad():
        feats = trunk(torch.randn(1, 4, 96, 64))
        levels = trunk.pyramid(torch.randn(1, 4, 96, 64)) if trunk.pyramid_taps else []
    assert feats.low.shape == (1, trunk.low_channels, 24, 16)  # stride 4
    assert feats.high.shape == (1, trunk.high_channels, 6, 4)  # stride 16
    assert 0 < trunk.early_parts < len(trunk.stages())
    assert entry.detector_only == (not trunk.pyramid_taps)  # the KD networks need a pyramid
    assert [x.shape[1] for x in levels] == list(trunk.pyramid_channels)
    assert [x.shape[-2] for x in levels] == [24, 12, 6, 6][: len(levels)]
    assert name in DETECTOR_BACKBONES and (name in BACKBONES) == (not entry.detector_only)
    # what derives from the entry: speed tables, weights description
    assert REFERENCE_SECONDS_PER_TILE[(name, "torch")] > 0
    assert REFERENCE_TRAIN_SECONDS[name]["cd_step"] > 0
    assert describe_weights(name, "imagenet").endswith(f"ImageNet ({entry.imagenet})")


@pytest.mark.parametrize(
    "name", [n for n, e in TRUNKS.items() if e.imagenet != TORCHVISION], ids=str
)
def test_offline_imagenet_weights_load(name):
    if importlib.util.find_spec(TRUNKS[name].weights_package) is None:
        pytest.skip(f"{TRUNKS[name].imagenet} is not installed")
    trunk = build_trunk(name, weights="imagenet")
    assert trunk.stem[0].weight.abs().sum() > 0  # every key and shape checked on loading


def test_lite2_is_a_kd_and_detector_trunk():
    torch.manual_seed(0)
    kd = SiameseCAMNet("efficientnet_lite2", head="pyramid").eval()
    detector = SiameseDeepLabV3Plus("efficientnet_lite2", head_channels=128).eval()
    pre, post = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert kd(pre, post).shape == (1, 1, 8, 8)
        assert detector(pre, post).shape == (1, 2, 64, 64)
    assert len(build_trunk("efficientnet_lite2").blocks) == 21  # depth 1.2: Lite0 has 16
