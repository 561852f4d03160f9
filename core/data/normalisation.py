"""Per-band input normalisation of the networks (torch-free, so the ONNX path can use it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Normalisation:
    """Per-band (x / 255 - mean) / std, applied to 8-bit (or 8-bit-stretched) values."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def default(cls, bands: int) -> Normalisation:
        """ImageNet statistics for the first three bands, 0.5 / 0.25 for any further band."""
        mean = (IMAGENET_MEAN + (0.5,) * bands)[:bands]
        std = (IMAGENET_STD + (0.25,) * bands)[:bands]
        return cls(tuple(mean), tuple(std))

    @classmethod
    def from_dict(cls, d: dict) -> Normalisation:
        return cls(tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]))

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}

    def scale_offset(self) -> tuple[np.ndarray, np.ndarray]:
        """float32 [C] ``a``, ``b`` with ``a * x + b == (x / 255 - mean) / std``."""
        std = np.asarray(self.std, dtype=np.float64)
        scale = 1.0 / (255.0 * std)
        offset = -np.asarray(self.mean, dtype=np.float64) / std
        return scale.astype(np.float32), offset.astype(np.float32)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """[C, H, W] values in 0..255 (any dtype) -> float32 tensor [C, H, W]."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        return (x / 255.0 - mean) / std


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Normalisation"]
