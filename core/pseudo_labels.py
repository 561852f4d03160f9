"""Pseudo labels: a pixel is change where the student's MSI probability exceeds a threshold.

Tiles labelled unchanged are all background whatever the probability. The threshold is chosen
without pixel truth (see `kdmsi.thresholds`) unless given. The output mirrors a dataset's
`label/` folder (one 0/255 PNG per image, full image size) plus `pseudo_labels.json`, so
`PairDataset(root, label_dir=out / "label")` trains the detector on it. It is written to a
temporary folder and renamed into place at the end: a failure or cancel leaves nothing behind.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .data import IGNORE_INDEX, PairDataset, image_size, write_image
from .evaluation import collect_map_statistics, map_function
from .inference import DEFAULT_SCALES
from .progress import CancelCheck, ProgressCallback, sub_progress
from .thresholds import ProbabilityHistograms, ThresholdChoice, choose_threshold

PROB_SCALE = 65535  # MSI maps are held as uint16 between the two passes
SAVED_HISTOGRAM_BINS = 100  # MSI histograms in pseudo_labels.json (for the training report)


def msi_pseudo_labels(
    student: torch.nn.Module,
    dataset,
    threshold: Union[str, float] = "auto",
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = True,
    device: Union[str, torch.device] = "cpu",
    batch_size: int = 4,
    progress: Optional[ProgressCallback] = None,
    cancelled: Optional[CancelCheck] = None,
    histograms: Optional[ProbabilityHistograms] = None,
) -> tuple[list[np.ndarray], ThresholdChoice]:
    """Pseudo-label masks of every tile of `dataset`, in dataset order, and the threshold.

    Each mask is uint8 [T, T]: 1 = change, 0 = background (all of a tile labelled unchanged),
    `IGNORE_INDEX` where the tile's own mask marks pixels as not scored (padding, nodata).
    Memory: the MSI maps are held as uint16 (2 bytes per pixel) until the threshold is known.
    When `histograms` is given, the MSI histograms the threshold was chosen from (tiles
    labelled changed / unchanged) are added to it, e.g. for the training report.
    """
    if any(label is None for label in dataset.labels):
        raise ValueError("pseudo labels need an image label (changed/unchanged) for every tile")
    maps: list[np.ndarray] = []
    ignored: list[np.ndarray] = []

    def keep(batch: dict, out: dict) -> None:
        for prob, mask in zip(out["msi"][:, 0].numpy(), batch["mask"].numpy()):
            maps.append(np.round(prob * PROB_SCALE).astype(np.uint16))
            ignored.append(mask == IGNORE_INDEX)

    stats = collect_map_statistics(
        dataset,
        {"msi": map_function("msi", student, scales, flip)},
        torch.device(device),
        batch_size,
        progress,
        cancelled,
        on_batch=keep,
    )["msi"]
    choice = choose_threshold(stats.by_image_label, threshold)
    if histograms is not None:
        histograms.changed += stats.by_image_label.changed
        histograms.unchanged += stats.by_image_label.unchanged
    cut = int(np.floor(choice.value * PROB_SCALE))
    masks = []
    for prob, label, ignore in zip(maps, dataset.labels, ignored):
        mask = (prob > cut).astype(np.uint8) if label == 1 else np.zeros(prob.shape, np.uint8)
        mask[ignore & (label == 1)] = IGNORE_INDEX
        masks.append(mask)
    return masks, choice


def generate_pseudo_labels(
    student: torch.nn.Module,
    dataset: PairDataset,
    out_dir: Union[str, Path],
    threshold: Union[str, float] = "auto",
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = True,
    device: Union[str, torch.device] = "cpu",
    batch_size: int = 4,
    overwrite: bool = False,
    progress: Optional[ProgressCallback] = None,
    cancelled: Optional[CancelCheck] = None,
    record: Optional[dict] = None,
) -> dict:
    """Write MSI pseudo labels of every image of `dataset` to `out_dir/label/<name>.png`.

    Returns the summary also saved as `out_dir/pseudo_labels.json`: the threshold with how it
    was chosen, the tile counts, the changed-pixel fraction and the MSI histograms of tiles
    labelled changed / unchanged (`SAVED_HISTOGRAM_BINS` bins over [0, 1]), and the entries
    of `record` (e.g. ``kd_model``, the KD model file, which the detector's report reads).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists; choose another folder or pass --overwrite")
    hists = ProbabilityHistograms()
    masks, choice = msi_pseudo_labels(
        student,
        dataset,
        threshold,
        scales,
        flip,
        device,
        batch_size,
        sub_progress(progress, 0.0, 0.95),
        cancelled,
        hists,
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        summary = _write_labels(dataset, masks, choice, tmp)
        summary["scales"], summary["flip"] = list(scales), flip
        summary["msi_histogram"] = coarse_histograms(hists, SAVED_HISTOGRAM_BINS)
        summary.update(record or {})
        (tmp / "pseudo_labels.json").write_text(json.dumps(summary, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if progress:
        progress(1.0, f"pseudo labels written: {choice.describe()}")
    return summary


def _write_labels(
    dataset: PairDataset, masks: list[np.ndarray], choice: ThresholdChoice, folder: Path
) -> dict:
    """Assemble each image's tiles into a full-size 0/255 label PNG under `folder/label`."""
    (folder / "label").mkdir()
    by_image: dict[str, list[int]] = {}
    for i, ref in enumerate(dataset.tiles):
        by_image.setdefault(ref.name, []).append(i)
    changed_pixels = total_pixels = 0
    for name, indices in by_image.items():
        height, width = image_size(dataset.pairs[name][0])
        label = np.zeros((height, width), np.uint8)
        for i in indices:
            ref = dataset.tiles[i]
            tile = (masks[i][: ref.height, : ref.width] == 1).astype(np.uint8) * 255
            window = label[ref.y : ref.y + ref.height, ref.x : ref.x + ref.width]
            np.maximum(window, tile, out=window)
        write_image(folder / "label" / f"{name}.png", label)
        changed_pixels += int(np.count_nonzero(label))
        total_pixels += label.size
    return {
        "threshold": choice.to_dict(),
        "threshold_description": choice.describe(),
        "images": len(by_image),
        "tiles": len(dataset),
        "tiles_changed": int(sum(1 for v in dataset.labels if v == 1)),
        "changed_pixel_fraction": changed_pixels / max(total_pixels, 1),
        "ignore_index": IGNORE_INDEX,
    }


def coarse_histograms(hists: ProbabilityHistograms, bins: int) -> dict:
    """The histograms summed into `bins` equal bins over [0, 1], as JSON-ready lists."""

    def coarse(h: np.ndarray) -> list[int]:
        return [int(v) for v in h.reshape(bins, -1).sum(axis=1)]

    return {"bins": bins, "changed": coarse(hists.changed), "unchanged": coarse(hists.unchanged)}


def histograms_from_summary(summary: dict) -> Optional[ProbabilityHistograms]:
    """The MSI histograms saved in a `pseudo_labels.json` summary (None when absent).

    Coarse bins are spread over the fine `HIST_BINS` ones (each coarse count in its first
    fine bin), which keeps plots and quantiles at the coarse resolution.
    """
    saved = summary.get("msi_histogram") if isinstance(summary, dict) else None
    if not saved:
        return None
    out = ProbabilityHistograms()
    step = out.changed.size // int(saved["bins"])
    out.changed[::step] = saved["changed"]
    out.unchanged[::step] = saved["unchanged"]
    return out
