"""Degradation presets: parameter ranges, blur / noise / scale statistics, determinism."""

import math

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, Subset

from kdmsi.data.pairs import Normalisation
from kdmsi.training.degrade import (
    BLUR_SIGMA_MULTI,
    BLUR_SIGMA_SINGLE,
    KERNEL_SIZES,
    PRESETS,
    RESAMPLE_MODES,
    Degradation,
    DegradedPairDataset,
    Downsample,
    GaussianBlur,
    GaussianNoise,
    apply_degradation,
    degrade,
    gaussian_kernel,
    sample_degradation,
    tile_rng,
)

DRAWS = 300


def plans(preset):
    return [sample_degradation(preset, tile_rng(7, i)) for i in range(DRAWS)]


def kinds(plan):
    return [type(s).__name__ for s in plan.steps]


def test_resolution_preset_is_down_up_by_4_to_8():
    factors = []
    for plan in plans("resolution"):
        assert kinds(plan) == ["Downsample"]
        (down,) = plan.steps
        assert 1 / 8 - 1e-9 <= down.factor <= 1 / 4 + 1e-9
        assert down.mode in RESAMPLE_MODES and plan.resample_mode == down.mode
        factors.append(down.factor)
    assert {p.steps[0].mode for p in plans("resolution")} == set(RESAMPLE_MODES)
    assert max(factors) > 0.22 and min(factors) < 0.14  # the whole range is used


def test_single_preset_draws_exactly_one_degradation_in_range():
    seen = set()
    for plan in plans("single"):
        assert len(plan.steps) == 1
        step = plan.steps[0]
        seen.add(type(step).__name__)
        if isinstance(step, GaussianBlur):
            assert BLUR_SIGMA_SINGLE[0] <= min(step.sigma_x, step.sigma_y)
            assert max(step.sigma_x, step.sigma_y) <= BLUR_SIGMA_SINGLE[1]
            assert step.kernel_size in KERNEL_SIZES
        elif isinstance(step, GaussianNoise):
            assert 0 <= step.sigma <= 15
        else:
            assert 1 / 8 - 1e-9 <= step.factor <= 1 + 1e-9
    assert seen == {"GaussianBlur", "GaussianNoise", "Downsample"}


def test_multi_preset_applies_all_three_in_random_order():
    orders, anisotropic = set(), 0
    for plan in plans("multi"):
        assert sorted(kinds(plan)) == ["Downsample", "GaussianBlur", "GaussianNoise"]
        orders.add(tuple(kinds(plan)))
        blur = next(s for s in plan.steps if isinstance(s, GaussianBlur))
        assert BLUR_SIGMA_MULTI[0] <= min(blur.sigma_x, blur.sigma_y)
        assert max(blur.sigma_x, blur.sigma_y) <= BLUR_SIGMA_MULTI[1]
        anisotropic += blur.sigma_x != blur.sigma_y
    assert len(orders) == 6  # every permutation occurs
    assert 0.3 * DRAWS < anisotropic < 0.7 * DRAWS


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="resolution"):
        sample_degradation("jpeg", tile_rng(0, 0))


@pytest.mark.parametrize("sigma", [1.0, 1.5, 3.0])
def test_isotropic_blur_kernel_has_variance_sigma_squared(sigma):
    kernel = gaussian_kernel(GaussianBlur(sigma, sigma, 0.0, 21)).double()
    ax = torch.arange(-10, 11, dtype=torch.float64)
    assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-6)
    var_x = float((kernel.sum(0) * ax**2).sum())
    var_y = float((kernel.sum(1) * ax**2).sum())
    assert var_x == pytest.approx(sigma**2, rel=0.02)
    assert var_y == pytest.approx(sigma**2, rel=0.02)


def test_anisotropic_blur_follows_its_angle():
    ax = torch.arange(-10, 11, dtype=torch.float64)
    along_x = gaussian_kernel(GaussianBlur(3.0, 1.0, 0.0, 21)).double()
    along_y = gaussian_kernel(GaussianBlur(3.0, 1.0, math.pi / 2, 21)).double()
    assert float((along_x.sum(0) * ax**2).sum()) == pytest.approx(9.0, rel=0.03)
    assert float((along_x.sum(1) * ax**2).sum()) == pytest.approx(1.0, rel=0.03)
    assert float((along_y.sum(1) * ax**2).sum()) == pytest.approx(9.0, rel=0.03)


def test_blur_of_an_impulse_is_the_kernel_and_keeps_the_mean():
    image = np.zeros((1, 41, 41), np.float32)
    image[0, 20, 20] = 200.0
    blur = GaussianBlur(2.0, 2.0, 0.0, 15)
    out = apply_degradation(image, Degradation((blur,)), tile_rng(0, 0))
    expected = 200.0 * gaussian_kernel(blur).numpy()
    np.testing.assert_allclose(out[0, 13:28, 13:28], expected, atol=1e-3)
    assert out.sum() == pytest.approx(200.0, rel=1e-4)


def test_noise_has_the_requested_standard_deviation():
    image = np.full((3, 128, 128), 128.0, np.float32)
    out = apply_degradation(image, Degradation((GaussianNoise(10.0),)), tile_rng(0, 0))
    residual = out - image
    assert abs(float(residual.mean())) < 0.2
    assert float(residual.std()) == pytest.approx(10.0, rel=0.03)


def test_values_are_clipped_before_the_cast():
    bright = np.full((3, 32, 32), 250, np.uint8)
    out = apply_degradation(bright, Degradation((GaussianNoise(15.0),)), tile_rng(0, 0))
    assert out.dtype == np.uint8 and out.max() == 255 and out.min() > 180  # no wrap-around
    as_float = apply_degradation(
        bright.astype(np.float32), Degradation((GaussianNoise(15.0),)), tile_rng(0, 0)
    )
    assert as_float.dtype == np.float32 and as_float.max() <= 255.0 and as_float.min() >= 0.0


def test_nearest_down_up_gives_blocks_and_keeps_the_size():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (3, 64, 64)).astype(np.uint8)
    plan = Degradation((Downsample(0.25, "nearest"),), "nearest")
    out = apply_degradation(image, plan, tile_rng(0, 0))
    assert out.shape == image.shape
    blocks = out.reshape(3, 16, 4, 16, 4)
    assert (blocks == blocks[:, :, :1, :, :1]).all()


def test_antialiased_downsampling_removes_detail_finer_than_the_new_pixel():
    checker = ((np.indices((64, 64)).sum(0) % 2) * 200).astype(np.float32)[None]
    for mode in ("bilinear", "bicubic"):
        out = apply_degradation(checker, Degradation((Downsample(1 / 8, mode),), mode), None)
        assert float(out.std()) < 2.0 and float(out.mean()) == pytest.approx(100.0, abs=2.0)


def high_frequency_energy(image: np.ndarray) -> float:
    x = image.astype(np.float64)
    lap = 4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:]
    return float((lap**2).mean())


def test_resolution_preset_removes_most_high_frequency_energy():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (3, 96, 96)).astype(np.uint8)
    for index in range(5):
        out = degrade(image, "resolution", seed=3, index=index)
        assert high_frequency_energy(out) < 0.15 * high_frequency_energy(image)


@pytest.mark.parametrize("preset", PRESETS)
def test_degradation_is_deterministic_per_tile(preset):
    image = np.random.default_rng(2).integers(0, 256, (3, 48, 48)).astype(np.uint8)
    first = degrade(image, preset, seed=5, index=3)
    np.testing.assert_array_equal(first, degrade(image, preset, seed=5, index=3))
    assert first.shape == image.shape and first.dtype == np.uint8
    others = [degrade(image, preset, seed=5, index=i) for i in range(4, 9)]
    assert any(not np.array_equal(first, o) for o in others)


class TinyPairs(Dataset):
    """Four random normalised 3-band pairs, like `PairDataset` items."""

    bands = [1, 2, 3]
    normalisation = Normalisation.default(3)
    has_masks = True
    tile_size = 32

    def __init__(self):
        self.augment = False
        rng = np.random.default_rng(0)
        self.raw = [rng.integers(0, 256, (2, 3, 32, 32)).astype(np.uint8) for _ in range(4)]

    def __len__(self):
        return len(self.raw)

    def __getitem__(self, i):
        pre, post = self.raw[i]
        if self.augment:
            pre, post = pre[..., ::-1], post[..., ::-1]
        return {
            "pre": self.normalisation(pre),
            "post": self.normalisation(post),
            "mask": torch.zeros(32, 32, dtype=torch.int64),
        }


def test_degraded_dataset_keeps_before_and_clean_after():
    base = TinyPairs()
    data = DegradedPairDataset(base, "multi", seed=1)
    item = data[2]
    torch.testing.assert_close(item["pre"], base[2]["pre"])
    torch.testing.assert_close(item["post_clean"], base[2]["post"])
    assert not torch.allclose(item["post"], item["post_clean"])
    assert item["post"].shape == item["post_clean"].shape and item["post"].dtype == torch.float32
    # the degraded after image is the uint8-domain degradation, normalised again
    expected = degrade(base.raw[2][1], "multi", seed=1, index=2).astype(np.float32)
    raw = (
        item["post"] * torch.tensor(base.normalisation.std).view(-1, 1, 1)
        + torch.tensor(base.normalisation.mean).view(-1, 1, 1)
    ) * 255
    assert float((raw - torch.from_numpy(expected)).abs().max()) < 0.51  # rounding only
    assert data.bands == base.bands and data.has_masks and len(data) == 4


def test_degraded_dataset_epochs_and_augment_through_subsets():
    base = TinyPairs()
    fixed = DegradedPairDataset(Subset(base, [0, 1, 2]), "single", seed=0)
    varying = DegradedPairDataset(Subset(base, [0, 1, 2]), "single", seed=0, vary_per_epoch=True)
    plans_before = [fixed.degradation(i) for i in range(3)]
    fixed.set_epoch(4)
    varying.set_epoch(4)
    assert [fixed.degradation(i) for i in range(3)] == plans_before
    assert [varying.degradation(i) for i in range(3)] != plans_before
    assert fixed.normalisation == base.normalisation
    fixed.augment = True
    assert fixed.augment and not base.augment  # the caller's dataset is left alone


@pytest.mark.real_data
def test_presets_on_a_real_after_image(real_data):
    from kdmsi.data.pairs import read_image

    image = read_image(real_data / "LEVIR-CD" / "B" / "test_2_0000_0000.png")[:3]
    assert image.dtype == np.uint8
    energy = high_frequency_energy(image)
    for index in range(3):
        low = degrade(image, "resolution", seed=0, index=index)
        assert low.shape == image.shape and low.dtype == np.uint8
        assert high_frequency_energy(low) < 0.4 * energy  # nearest keeps block edges
    for preset in ("single", "multi"):
        out = degrade(image, preset, seed=0, index=0)
        assert out.shape == image.shape and not np.array_equal(out, image)
