"""Dataset-level prediction and evaluation of every map the method produces.

Maps: ``teacher-cam`` (the teacher's CAM), ``student`` (single-scale sigmoid), ``mi`` (the
multiscale baseline), ``msi`` (multiscale sigmoid inference) from a KD checkpoint, and
``detector`` (the DeepLabV3+ change probability). Continuous maps are summarised as pixel
histograms split by truth, so the confusion counts at any threshold come without a second pass
and without holding the maps in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data.pairs import IGNORE_INDEX, PairDataset
from ..metrics.change import ConfusionCounts
from ..models.checkpoint import DETECTOR_THRESHOLD
from ..progress import CancelCheck, ProgressCallback, check_cancel, no_progress
from .msi import (
    DEFAULT_SCALES,
    multiscale_inference,
    multiscale_sigmoid_inference,
    single_scale_probability,
    teacher_cam,
)
from .thresholds import (
    HIST_BINS,
    ProbabilityHistograms,
    ThresholdChoice,
    choose_threshold,
)

KD_MAPS = ("teacher-cam", "student", "mi", "msi")


def map_function(kind: str, model, scales: Sequence[float] = DEFAULT_SCALES, flip: bool = True):
    """A function (pre, post) -> [B, 1, H, W] in [0, 1] for the map `kind` of `model`."""
    if kind == "teacher-cam":
        return lambda pre, post: teacher_cam(model, pre, post)
    if kind == "student":
        return lambda pre, post: single_scale_probability(model, pre, post)
    if kind == "mi":
        return lambda pre, post: multiscale_inference(model, pre, post, scales, flip)
    if kind == "msi":
        return lambda pre, post: multiscale_sigmoid_inference(model, pre, post, scales, flip)
    if kind == "detector":
        return lambda pre, post: torch.no_grad()(model.change_probability)(pre, post)
    raise ValueError(f"unknown map {kind!r}")


@dataclass
class MapStatistics:
    """Truth-split pixel histograms (for metrics) and label-split ones (for thresholds)."""

    positive: np.ndarray = field(default_factory=lambda: np.zeros(HIST_BINS, np.int64))
    negative: np.ndarray = field(default_factory=lambda: np.zeros(HIST_BINS, np.int64))
    by_image_label: ProbabilityHistograms = field(default_factory=ProbabilityHistograms)

    def add(
        self,
        prob: np.ndarray,
        mask: np.ndarray,
        label: Optional[int],
        valid: Optional[np.ndarray] = None,
    ) -> None:
        """prob: [H, W] in [0, 1]; mask: [H, W] 0/1/255 (255 = not scored); valid: [H, W]
        pixels that hold data (default: the scored ones). The label-split histograms (for
        thresholds) take every valid pixel: a tile labelled changed whose pixels are unknown
        (255 in the mask) counts all its valid pixels."""
        if valid is None:
            valid = mask != IGNORE_INDEX
        self.by_image_label.add(prob, label, valid)
        self.positive += np.histogram(prob[mask == 1], HIST_BINS, (0.0, 1.0))[0]
        self.negative += np.histogram(prob[mask == 0], HIST_BINS, (0.0, 1.0))[0]

    def counts_at(self, threshold: float) -> ConfusionCounts:
        """Confusion counts of `prob > threshold` (threshold rounded to a 1/HIST_BINS edge)."""
        k = int(round(threshold * HIST_BINS))
        return ConfusionCounts(
            tp=int(self.positive[k:].sum()),
            fn=int(self.positive[:k].sum()),
            fp=int(self.negative[k:].sum()),
            tn=int(self.negative[:k].sum()),
        )


def collect_map_statistics(
    dataset: PairDataset,
    functions: dict[str, Callable],
    device: torch.device,
    batch_size: int = 4,
    progress: Optional[ProgressCallback] = None,
    cancelled: Optional[CancelCheck] = None,
    on_batch: Optional[Callable[[dict, dict], None]] = None,
) -> dict[str, MapStatistics]:
    """Run each map function over the dataset and gather its `MapStatistics`.

    `on_batch(batch, maps)` sees every batch with its maps ({kind: [B, 1, H, W] CPU}).
    """
    progress = progress or no_progress
    stats = {kind: MapStatistics() for kind in functions}
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    done = 0
    for batch in loader:
        check_cancel(cancelled)
        pre, post = batch["pre"].to(device), batch["post"].to(device)
        maps = {kind: fn(pre, post).float().cpu() for kind, fn in functions.items()}
        masks = batch["mask"].numpy()
        valid = batch["valid"].numpy() if "valid" in batch else [None] * len(masks)
        labels = [None if v < 0 else int(v) for v in batch["label"].tolist()]
        for kind, prob in maps.items():
            for i in range(prob.shape[0]):
                stats[kind].add(prob[i, 0].numpy(), masks[i], labels[i], valid[i])
        if on_batch is not None:
            on_batch(batch, maps)
        done += pre.shape[0]
        progress(done / len(dataset), f"{done}/{len(dataset)} tiles")
    return stats


def metrics_from_statistics(
    stats: dict[str, MapStatistics],
    threshold: Union[str, float] = "auto",
    fixed: Optional[dict[str, Union[float, ThresholdChoice]]] = None,
) -> dict[str, dict]:
    """Metrics per map at a threshold chosen without pixel truth (or `fixed[kind]`: a value,
    or a `ThresholdChoice` that says where it came from, e.g. the detector's stored one).

    Each row holds the metrics plus ``threshold`` and ``threshold_method``.
    """
    rows: dict[str, dict] = {}
    for kind, st in stats.items():
        if fixed and kind in fixed:
            given = fixed[kind]
            choice = (
                given if isinstance(given, ThresholdChoice) else ThresholdChoice(given, "fixed")
            )
        elif kind == "detector":
            choice = ThresholdChoice(DETECTOR_THRESHOLD, "argmax")
        else:
            choice = choose_threshold(st.by_image_label, threshold)
        values = st.counts_at(choice.value).metrics()
        rows[kind] = {**values, "threshold": choice.value, "threshold_method": choice.method}
    return rows


def label_folder_metrics(data, label_dir: Path) -> dict:
    """Metrics of a folder of 0/255 label images (e.g. pseudo labels) against `data`'s masks."""
    from ..data.pairs import find_mask, read_image
    from ..metrics.change import ConfusionCounts

    counts = ConfusionCounts()
    for name in data.pairs:
        pred_path, truth_path = find_mask(label_dir, name), data.masks[name]
        if pred_path is None:
            raise ValueError(f"{label_dir} has no label image for {name}")
        counts.update(read_image(pred_path)[0] > 0, read_image(truth_path)[0] > 0)
    return counts.metrics()
