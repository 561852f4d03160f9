"""Pseudo labels: a pixel is change where the student's MSI probability exceeds a threshold.

Tiles labelled unchanged are all background whatever the probability. The threshold is chosen
without pixel truth (see `kdmsi.inference.thresholds`) unless given. The output mirrors a dataset's
`label/` folder (one 0/255 PNG per image, full image size) plus `pseudo_labels.json`, so
`PairDataset(root, label_dir=out / "label")` trains the detector on it. It is written to a
temporary folder and renamed into place at the end: a failure or cancel leaves nothing behind.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence, Union

import numpy as np
import torch

from ..data.pairs import IGNORE_INDEX, PairDataset, image_size, write_image
from ..geo.atomic import atomic_folder
from ..models.batchnorm_fold import for_inference
from ..progress import CancelCheck, ProgressCallback, sub_progress
from .feature_vote import vote, zero_shot_tile_maps
from .maps import collect_map_statistics, map_function
from .msi import DEFAULT_SCALES
from .thresholds import ProbabilityHistograms, ThresholdChoice, choose_threshold

log = logging.getLogger(__name__)

PROB_SCALE = 65535  # MSI maps are held as uint16 between the two passes
SAVED_HISTOGRAM_BINS = 100  # MSI histograms in pseudo_labels.json (for the training report)
MIN_CHANGED_FRACTION = 0.005
"""Pseudo labels marking less than this share of the pixels of tiles labelled changed are
"empty": a detector trained on them learns to find nothing."""
MAX_CHANGED_FRACTION = 0.97
"""More than this share is "all change": the labels then say no more than the tile tags."""


ZERO_SHOT_HINT = "detect --zero-shot; in QGIS the Detect tab's zero-shot box"
"""Where the training-free map is, named wherever training cannot give a detector."""


class DegeneratePseudoLabels(ValueError):
    """Pseudo labels that would train a useless detector; the message says what to do."""


def changed_fraction(masks: Sequence[np.ndarray], labels: Sequence[Optional[int]]) -> float:
    """Share of change (1) among the scored pixels (0 or 1) of the tiles labelled changed."""
    changed = scored = 0
    for mask, label in zip(masks, labels):
        if label == 1:
            changed += int(np.count_nonzero(mask == 1))
            scored += int(np.count_nonzero(mask <= 1))
    return changed / max(scored, 1)


def check_pseudo_labels(
    masks: Sequence[np.ndarray],
    labels: Sequence[Optional[int]],
    choice: ThresholdChoice,
    teacher_note: str = "",
) -> float:
    """The changed share of the pseudo labels (`changed_fraction`); raises when it is
    (nearly) empty or (nearly) all change, so that no detector is trained on them.

    Raises:
        DegeneratePseudoLabels: naming the share, the threshold and what to do.
    """
    fraction = changed_fraction(masks, labels)
    tiles = sum(1 for v in labels if v == 1)
    where = f"{100 * fraction:.1f} % of the pixels of the {tiles} tiles tagged changed"
    note = f" ({teacher_note})" if teacher_note else ""
    if fraction < MIN_CHANGED_FRACTION:
        raise DegeneratePseudoLabels(
            f"the pseudo labels are (nearly) empty: {where} are above the threshold "
            f"{choice.value:.3f}{note}, so a detector would learn to find nothing. Tag more "
            "tiles of both kinds (tens of each, changed tiles where the change is plain to "
            "see), or give a lower --threshold (e.g. 0.5); until then the zero-shot map needs "
            f"no tags ({ZERO_SHOT_HINT})"
        )
    if fraction > MAX_CHANGED_FRACTION:
        raise DegeneratePseudoLabels(
            f"the pseudo labels are (nearly) all change: {where} are above the threshold "
            f"{choice.value:.3f}{note}, which says no more than the tags. Tag more tiles as "
            "not changed (unchanged tiles that look like the changed ones' surroundings), or "
            "give a higher --threshold (e.g. 0.8); until then the zero-shot map needs no tags "
            f"({ZERO_SHOT_HINT})"
        )
    return fraction


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
    second_opinion: Optional[dict[int, np.ndarray]] = None,
    vote_weight: float = 0.0,
    replicas: Optional[Shards] = None,
) -> tuple[list[np.ndarray], ThresholdChoice]:
    """Pseudo-label masks of every tile of `dataset`, in dataset order, and the threshold.

    With ``vote_weight`` > 0, the pixels of tiles labelled changed are change where the MSI and
    the pretrained features' distance vote so (`kdmsi.inference.feature_vote.vote`; the
    distance of those tiles is `kdmsi.inference.feature_vote.zero_shot_tile_maps`, the first
    quarter of ``progress``, unless ``second_opinion`` gives it: {tile index: [T, T]}); the
    MSI threshold is chosen as without it.

    Each mask is uint8 [T, T]: 1 = change, 0 = background (all of a tile labelled unchanged),
    `IGNORE_INDEX` where the tile has no data (the items' ``valid``: padding, nodata; for
    datasets without ``valid``, where their mask is `IGNORE_INDEX`). The pixels of a tile
    labelled changed are unknown in its own mask and get the MSI decision here.
    Memory: the MSI maps are held as uint16 (2 bytes per pixel) until the threshold is known.
    When `histograms` is given, the MSI histograms the threshold was chosen from (tiles
    labelled changed / unchanged) are added to it, e.g. for the training report.

    ``replicas`` (a data-parallel run, `kdmsi.training.distributed.Replicas`): each process
    computes the MSI maps and the features' distance of its shard of the tiles (every
    ``world_size``-th), the histograms are summed and the maps gathered, so every process
    returns the masks and the threshold one process would.
    """
    if any(label is None for label in dataset.labels):
        raise ValueError("pseudo labels need an image label (changed/unchanged) for every tile")
    maps: list[np.ndarray] = []
    ignored: list[np.ndarray] = []
    student = for_inference(copy.deepcopy(student))  # the caller's network stays trainable
    sharded = replicas is not None and replicas.world_size > 1
    mine = range(replicas.rank, len(dataset), replicas.world_size) if sharded else None
    opinions, msi_start = None, 0.0
    if vote_weight > 0:
        opinions = second_opinion
        if opinions is None:
            msi_start = 0.25
            changed = [i for i in mine or range(len(dataset)) if dataset.labels[i] == 1]
            opinions = zero_shot_tile_maps(
                dataset, changed, device, sub_progress(progress, 0.0, msi_start), cancelled
            )
            if sharded:
                opinions = _gathered(replicas, opinions)

    def keep(batch: dict, out: dict) -> None:
        masks = batch["mask"].numpy()
        valid = batch["valid"].numpy() if "valid" in batch else masks != IGNORE_INDEX
        for prob, ok in zip(out["msi"][:, 0].numpy(), valid):
            maps.append(np.round(prob * PROB_SCALE).astype(np.uint16))
            ignored.append(~ok)

    stats = collect_map_statistics(
        replicas.shard(dataset) if sharded else dataset,
        {"msi": map_function("msi", student, scales, flip)},
        torch.device(device),
        batch_size,
        sub_progress(progress, msi_start, 1.0),
        cancelled,
        on_batch=keep,
    )["msi"]
    if sharded:
        for name in ("changed", "unchanged"):
            counts = getattr(stats.by_image_label, name)
            setattr(stats.by_image_label, name, replicas.sum_array(counts).astype(counts.dtype))
        everything = _gathered(replicas, dict(zip(mine, zip(maps, ignored))))
        maps, ignored = (list(v) for v in zip(*(everything[i] for i in range(len(dataset)))))
    choice = choose_threshold(stats.by_image_label, threshold)
    if histograms is not None:
        histograms.changed += stats.by_image_label.changed
        histograms.unchanged += stats.by_image_label.unchanged
    cut = int(np.floor(choice.value * PROB_SCALE))
    masks = _masks(maps, dataset.labels, ignored, lambda i, prob: prob > cut)
    if opinions:
        voted = _masks(
            maps,
            dataset.labels,
            ignored,
            lambda i, prob: (
                vote(prob / PROB_SCALE, choice.value, opinions[i], vote_weight)
                if i in opinions
                else prob > cut
            ),
        )
        alone, with_vote = (changed_fraction(m, dataset.labels) for m in (masks, voted))
        if with_vote >= MIN_CHANGED_FRACTION or alone < MIN_CHANGED_FRACTION:
            masks = voted
        else:  # the vote refines the student's labels; it must not erase them
            log.warning(
                "the pretrained features' vote left %.2f %% of the changed tiles' pixels as "
                "change; keeping the student's MSI alone (%.1f %%)",
                100 * with_vote,
                100 * alone,
            )
    return masks, choice


class Shards(Protocol):
    """What `msi_pseudo_labels` needs of a data-parallel run (`kdmsi.training.distributed.
    Replicas`; the inference layer does not import the training one)."""

    rank: int
    world_size: int

    def shard(self, dataset: Any) -> Any: ...

    def sum_array(self, values: np.ndarray) -> np.ndarray: ...

    def gather(self, value: Any) -> list: ...


def _gathered(replicas: Shards, items: dict) -> dict:
    """Every process's ``items`` in one dict (each holds those of its own shard)."""
    return {k: v for part in replicas.gather(items) for k, v in part.items()}


def _masks(maps, labels, ignored, change) -> list[np.ndarray]:
    """uint8 masks: ``change(index, uint16 MSI)`` in tiles labelled changed, 0 in the others,
    `IGNORE_INDEX` where a changed tile has no data."""
    masks = []
    for index, (prob, label, ignore) in enumerate(zip(maps, labels, ignored)):
        if label == 1:
            mask = np.asarray(change(index, prob)).astype(np.uint8)
        else:
            mask = np.zeros(prob.shape, np.uint8)
        mask[ignore & (label == 1)] = IGNORE_INDEX
        masks.append(mask)
    return masks


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
    feature_vote: float = 0.0,
) -> dict:
    """Write MSI pseudo labels of every image of `dataset` to `out_dir/label/<name>.png`.

    ``feature_vote`` > 0: the tiles labelled changed are voted with the pretrained features'
    distance (`kdmsi.inference.feature_vote`), as `kdmsi train` does.

    Raises `DegeneratePseudoLabels` (and writes nothing) when they come out (nearly) empty or
    all change (`check_pseudo_labels`).

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
        vote_weight=feature_vote,
    )
    check_pseudo_labels(masks, dataset.labels, choice)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(out_dir, overwrite=True) as tmp:  # `overwrite` was checked up front
        summary = _write_labels(dataset, masks, choice, tmp)
        summary["scales"], summary["flip"] = list(scales), flip
        summary["feature_vote"] = feature_vote
        summary["msi_histogram"] = coarse_histograms(hists, SAVED_HISTOGRAM_BINS)
        summary.update(record or {})
        (tmp / "pseudo_labels.json").write_text(json.dumps(summary, indent=2))
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
