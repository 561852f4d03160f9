"""Image-quality degradations of the after image (T2) of a pair, for quality-robust training.

A degradation is a `Degradation` plan: an ordered tuple of steps (`Downsample`, `GaussianBlur`,
`GaussianNoise`) followed by a resample back to the input size. Plans are drawn from one of
three presets (`PRESETS`) by `sample_degradation` and applied by `apply_degradation`:

* ``resolution``: down-up only, factor in [1/8, 1/4] (log-uniform), nearest, bilinear or
  bicubic (chosen uniformly).
* ``single``: one of blur (sigma 0.2-4 px), noise (sigma 0-15) or down-up (factor in [1/8, 1]).
* ``multi``: blur (sigma 0.3-1.5 px), noise (sigma 0-15) and down-up (factor in [1/8, 1]), in a
  random order and with random strengths. Blur and noise that come after the downsampling act
  at the coarse resolution, as a coarser sensor's would.

Blur kernels are odd, 7-21 px wide, isotropic or (half of the time) anisotropic (independent
sigma_x, sigma_y in the range, rotated by a uniform angle), normalised to sum 1, applied per band
with reflect padding. Noise is additive Gaussian on the 0-255 scale, independent per band and
pixel. Downsampling with bilinear/bicubic is antialiased (it models a coarser sensor's
integration over its footprint); nearest decimates. Values are clipped to [0, 255] after every
step, and integer outputs are rounded and clipped before the cast back to the input dtype.

Everything is seeded: `tile_rng(seed, index, epoch)` gives the generator of one tile, so a tile
gets the same degradation every time for a given (seed, index, epoch). `DegradedPairDataset`
wraps a pair dataset and degrades each item's after image on the fly.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

PRESETS = ("resolution", "single", "multi")
RESAMPLE_MODES = ("nearest", "bilinear", "bicubic")
KERNEL_SIZES = tuple(range(7, 22, 2))
RESOLUTION_FACTORS = (1 / 8, 1 / 4)
DOWN_FACTORS = (1 / 8, 1.0)
BLUR_SIGMA_MULTI = (0.3, 1.5)
BLUR_SIGMA_SINGLE = (0.2, 4.0)
NOISE_SIGMA = (0.0, 15.0)
ANISOTROPIC_PROBABILITY = 0.5
MAX_VALUE = 255.0


@dataclass(frozen=True)
class Downsample:
    """Resize to round(H * factor) x round(W * factor) (at least 1 x 1) with `mode`."""

    factor: float
    mode: str = "bilinear"


@dataclass(frozen=True)
class GaussianBlur:
    """Gaussian blur; sigma_x / sigma_y along the kernel's own axes, rotated by `angle` (rad)."""

    sigma_x: float
    sigma_y: float
    angle: float = 0.0
    kernel_size: int = 21


@dataclass(frozen=True)
class GaussianNoise:
    """Additive zero-mean Gaussian noise of standard deviation `sigma` (0-255 scale)."""

    sigma: float


Step = Union[Downsample, GaussianBlur, GaussianNoise]


@dataclass(frozen=True)
class Degradation:
    """Steps applied in order, then a resample back to the input size with `resample_mode`."""

    steps: tuple[Step, ...]
    resample_mode: str = "bilinear"

    def describe(self) -> str:
        """A one-line description, e.g. ``down x0.21 bicubic -> noise 7.3``."""
        parts = []
        for step in self.steps:
            if isinstance(step, Downsample):
                parts.append(f"down x{step.factor:.3f} {step.mode}")
            elif isinstance(step, GaussianBlur):
                parts.append(f"blur {step.sigma_x:.2f}/{step.sigma_y:.2f} px k{step.kernel_size}")
            else:
                parts.append(f"noise {step.sigma:.1f}")
        return " -> ".join(parts) or "none"


def check_preset(preset: str) -> str:
    """Return `preset` when it is one of `PRESETS`, else raise ValueError naming them."""
    if preset not in PRESETS:
        raise ValueError(f"unknown degradation preset {preset!r}; choose one of {PRESETS}")
    return preset


def tile_rng(seed: int, index: int, epoch: int = 0) -> np.random.Generator:
    """The generator of tile `index` for base `seed` (and training `epoch`)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index), int(epoch)]))


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def sample_blur(rng: np.random.Generator, sigma_range: tuple[float, float]) -> GaussianBlur:
    """Isotropic or anisotropic blur with sigmas in `sigma_range` and an odd 7-21 px kernel."""
    kernel = int(rng.choice(KERNEL_SIZES))
    if rng.random() < ANISOTROPIC_PROBABILITY:
        sx, sy = rng.uniform(*sigma_range, size=2)
        return GaussianBlur(float(sx), float(sy), float(rng.uniform(0, math.pi)), kernel)
    sigma = float(rng.uniform(*sigma_range))
    return GaussianBlur(sigma, sigma, 0.0, kernel)


def sample_noise(rng: np.random.Generator) -> GaussianNoise:
    return GaussianNoise(float(rng.uniform(*NOISE_SIGMA)))


def sample_down(rng: np.random.Generator, factors: tuple[float, float]) -> Downsample:
    """Log-uniform factor in `factors`, mode uniform over `RESAMPLE_MODES`."""
    return Downsample(_log_uniform(rng, *factors), str(rng.choice(RESAMPLE_MODES)))


def sample_degradation(preset: str, rng: np.random.Generator) -> Degradation:
    """Draw a `Degradation` of `preset` (see the module docstring for the ranges)."""
    check_preset(preset)
    if preset == "resolution":
        down = sample_down(rng, RESOLUTION_FACTORS)
        return Degradation((down,), down.mode)
    if preset == "single":
        kind = int(rng.integers(3))
        if kind == 0:
            return Degradation((sample_blur(rng, BLUR_SIGMA_SINGLE),))
        if kind == 1:
            return Degradation((sample_noise(rng),))
        down = sample_down(rng, DOWN_FACTORS)
        return Degradation((down,), down.mode)
    down = sample_down(rng, DOWN_FACTORS)
    steps: list[Step] = [sample_blur(rng, BLUR_SIGMA_MULTI), sample_noise(rng), down]
    order = rng.permutation(len(steps))
    return Degradation(tuple(steps[i] for i in order), down.mode)


def gaussian_kernel(blur: GaussianBlur) -> torch.Tensor:
    """The normalised [k, k] float32 kernel of `blur` (covariance R diag(sx^2, sy^2) R^T)."""
    k = blur.kernel_size
    if k < 1 or k % 2 == 0:
        raise ValueError(f"blur kernel size must be odd and positive, got {k}")
    half = k // 2
    ax = torch.arange(-half, half + 1, dtype=torch.float64)
    y, x = torch.meshgrid(ax, ax, indexing="ij")
    c, s = math.cos(blur.angle), math.sin(blur.angle)
    u = c * x + s * y  # coordinates along the kernel's own axes
    v = -s * x + c * y
    sx, sy = max(blur.sigma_x, 1e-3), max(blur.sigma_y, 1e-3)
    kernel = torch.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))
    return (kernel / kernel.sum()).float()


def _blur(x: torch.Tensor, blur: GaussianBlur) -> torch.Tensor:
    """x: [1, C, h, w] float -> blurred, same shape (depthwise conv, reflect padding)."""
    kernel = gaussian_kernel(blur)
    channels, half = x.shape[1], blur.kernel_size // 2
    pad_mode = "reflect" if min(x.shape[-2:]) > half else "replicate"
    padded = F.pad(x, (half, half, half, half), mode=pad_mode)
    weight = kernel.to(x.dtype).expand(channels, 1, -1, -1)
    return F.conv2d(padded, weight, groups=channels)


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """x: [1, C, h, w] -> [1, C, *size]; antialiased when shrinking with bilinear/bicubic."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode not in RESAMPLE_MODES:
        raise ValueError(f"unknown resample mode {mode!r}; choose one of {RESAMPLE_MODES}")
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=shrink)


def apply_degradation(
    image: np.ndarray, degradation: Degradation, rng: np.random.Generator
) -> np.ndarray:
    """Degrade one image [C, H, W] with values on the 0-255 scale; returns [C, H, W].

    Integer input comes back rounded, clipped and cast to its dtype; float input comes back as
    float32 clipped to [0, 255]. `rng` draws the noise (so the result is deterministic).
    """
    if image.ndim != 3:
        raise ValueError(f"expected an image [C, H, W], got shape {image.shape}")
    height, width = image.shape[-2:]
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    for step in degradation.steps:
        if isinstance(step, Downsample):
            size = (max(1, round(height * step.factor)), max(1, round(width * step.factor)))
            x = _resize(x, size, step.mode)
        elif isinstance(step, GaussianBlur):
            x = _blur(x, step)
        elif isinstance(step, GaussianNoise):
            noise = rng.normal(0.0, step.sigma, size=tuple(x.shape)).astype(np.float32)
            x = x + torch.from_numpy(noise)
        else:
            raise TypeError(f"unknown degradation step {step!r}")
        x = x.clamp(0.0, MAX_VALUE)
    x = _resize(x, (height, width), degradation.resample_mode).clamp(0.0, MAX_VALUE)
    out = x[0].numpy()
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(image.dtype)
    return out.astype(np.float32)


def degrade(
    image: np.ndarray, preset: str, seed: int = 0, index: int = 0, epoch: int = 0
) -> np.ndarray:
    """Degrade tile `index` [C, H, W] (0-255 scale) with `preset`, deterministically."""
    rng = tile_rng(seed, index, epoch)
    return apply_degradation(image, sample_degradation(preset, rng), rng)


_PASSED_THROUGH = ("bands", "normalisation", "has_masks", "tile_size")


def _attribute(dataset: Dataset, name: str):
    """`dataset.name`, looking through `torch.utils.data.Subset` wrappers."""
    while not hasattr(dataset, name) and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    return getattr(dataset, name)


def _with_augment(dataset: Dataset, value: bool) -> Dataset:
    """`dataset`, or a shallow copy of it (through `Subset` wrappers) with ``augment = value``."""
    if isinstance(dataset, Subset):
        return Subset(_with_augment(dataset.dataset, value), dataset.indices)
    if getattr(dataset, "augment", None) == value:
        return dataset
    dataset = copy.copy(dataset)
    dataset.augment = value
    return dataset


class DegradedPairDataset(Dataset):
    """A pair dataset whose after images are degraded on the fly (the before image is kept).

    Wraps any dataset with ``pre``/``post`` float32 [C, T, T] tensors normalised by its
    ``normalisation`` (`kdmsi.data.pairs.PairDataset`,
    `kdmsi.data.tagged.RasterTileDataset`). Each item
    gains ``post_clean`` (the original after image) and its ``post`` is denormalised to the
    0-255 scale, degraded (see the module docstring) and normalised again. Item `i` of epoch
    `e` uses `tile_rng(seed, i, e if vary_per_epoch else 0)`, so evaluation sets are fixed and
    training may see a fresh degradation of each tile every epoch (`set_epoch`).

    Attributes of the wrapped dataset used by the training code (``bands``, ``normalisation``,
    ``has_masks``, ``tile_size``; looked up through `Subset` wrappers) are passed through;
    setting ``augment`` applies to a private copy of the wrapped dataset.
    """

    def __init__(self, dataset: Dataset, preset: str, seed: int = 0, vary_per_epoch: bool = False):
        self.dataset = dataset
        self.preset = check_preset(preset)
        self.seed, self.vary_per_epoch, self.epoch = int(seed), vary_per_epoch, 0
        norm = _attribute(dataset, "normalisation")
        self._mean = torch.tensor(norm.mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(norm.std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str):
        if name in _PASSED_THROUGH:
            return _attribute(self.__dict__.get("dataset"), name)
        raise AttributeError(name)

    @property
    def augment(self) -> bool:
        try:
            return bool(_attribute(self.dataset, "augment"))
        except AttributeError:
            return False

    @augment.setter
    def augment(self, value: bool) -> None:
        self.dataset = _with_augment(self.dataset, value)

    def set_epoch(self, epoch: int) -> None:
        """Draw fresh degradations for `epoch` (only with ``vary_per_epoch``)."""
        self.epoch = int(epoch)

    def degradation(self, index: int) -> Degradation:
        """The degradation plan item `index` gets in the current epoch."""
        return sample_degradation(self.preset, self._rng(index))

    def _rng(self, index: int) -> np.random.Generator:
        return tile_rng(self.seed, index, self.epoch if self.vary_per_epoch else 0)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        clean = item["post"]
        raw = ((clean * self._std + self._mean) * MAX_VALUE).numpy()
        rng = self._rng(index)
        degraded = apply_degradation(raw, sample_degradation(self.preset, rng), rng)
        item["post_clean"] = clean
        item["post"] = (torch.from_numpy(degraded) / MAX_VALUE - self._mean) / self._std
        return item
