import pytest
import torch
import torch.nn.functional as F

from kdmsi.inference.msi import (
    multiscale_inference,
    multiscale_maps,
    multiscale_sigmoid_inference,
    pick_device,
    single_scale_probability,
)
from kdmsi.losses.kd import cam
from kdmsi.models import SiameseCAMNet

SCALES = (0.5, 1.0, 1.5, 2.0)


class CountingModel(torch.nn.Module):
    """A small position-dependent logit-map network that counts its forward passes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(6, 1, 5, stride=4, padding=2)
        self.calls = 0

    def forward(self, pre, post):
        self.calls += 1
        return self.conv(torch.cat([pre, post], 1)) * 3


def reference_maps(model, pre, post, scales, flip):
    """The paper's Algorithm 1, one pair, one scale, one flip per forward pass."""
    height, width = pre.shape[-2:]
    maps = []
    for b in range(pre.shape[0]):
        p, q = pre[b : b + 1], post[b : b + 1]
        per_image = []
        for s in scales:
            size = (round(height * s), round(width * s))
            ps = F.interpolate(p, size=size, mode="bilinear", align_corners=False)
            qs = F.interpolate(q, size=size, mode="bilinear", align_corners=False)
            views = [(ps, qs, False)] + ([(ps.flip(-1), qs.flip(-1), True)] if flip else [])
            for a, c, flipped in views:
                g = model(a, c)
                if flipped:
                    g = g.flip(-1)
                per_image.append(g)
        maps.append(per_image)
    return maps


def up(g, size):
    return F.interpolate(g, size=size, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("flip", [True, False])
@pytest.mark.parametrize("size", [(64, 64), (50, 70)])
def test_msi_equals_a_plain_per_scale_loop(flip, size):
    model = CountingModel().eval()
    pre, post = torch.randn(3, 3, *size), torch.randn(3, 3, *size)
    expected = torch.cat(
        [
            torch.stack([up(torch.sigmoid(g), size) for g in per_image]).mean(0)
            for per_image in reference_maps(model, pre, post, SCALES, flip)
        ]
    )
    model.calls = 0
    got = multiscale_sigmoid_inference(model, pre, post, SCALES, flip)
    assert got.shape == (3, 1, *size)
    assert torch.allclose(got, expected, atol=1e-6)
    assert model.calls == len(SCALES)  # plain and flipped pairs of a scale share one batch
    assert 0.0 <= float(got.min()) and float(got.max()) <= 1.0


def test_mi_sums_raw_maps_then_normalises():
    model = CountingModel().eval()
    size = (48, 40)
    pre, post = torch.randn(2, 3, *size), torch.randn(2, 3, *size)
    expected = torch.cat(
        [
            cam(torch.stack([up(g, size) for g in per_image]).sum(0))
            for per_image in reference_maps(model, pre, post, SCALES, True)
        ]
    )
    got = multiscale_inference(model, pre, post, SCALES, True)
    assert torch.allclose(got, expected, atol=1e-6)
    assert float(got.amax(dim=(1, 2, 3)).min()) > 0.99  # each image peaks at ~1


def test_msi_and_mi_from_one_set_of_forward_passes():
    model = CountingModel().eval()
    pre, post = torch.randn(2, 3, 40, 56), torch.randn(2, 3, 40, 56)
    msi, mi = multiscale_maps(model, pre, post, SCALES, True)
    assert model.calls == len(SCALES)
    assert torch.equal(msi, multiscale_sigmoid_inference(model, pre, post, SCALES, True))
    assert torch.equal(mi, multiscale_inference(model, pre, post, SCALES, True))


def test_msi_with_the_real_network_in_eval_mode():
    net = SiameseCAMNet("resnet18").eval()
    pre, post = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    msi = multiscale_sigmoid_inference(net, pre, post)
    assert msi.shape == (2, 1, 64, 64)
    single = multiscale_sigmoid_inference(net, pre, post, scales=(1.0,), flip=False)
    assert torch.allclose(single, single_scale_probability(net, pre, post), atol=1e-6)


def test_pick_device_on_this_machine():
    expected = "cuda" if torch.cuda.is_available() else None
    device = pick_device("auto")
    assert device.type in ("cuda", "mps", "cpu")
    if expected:
        assert device.type == expected
    assert pick_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            pick_device("cuda")
