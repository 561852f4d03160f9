"""The threshold a detector is saved with, chosen without pixel truth, and the check of its
marks against the tags.

A detector trained on a few tens of tiles is often under-confident: on the real pairs its
probabilities sat below 0.5 on most of what it found (LEVIR test_101: change IoU 0.006 at 0.5,
0.240 at its best threshold), and the synthetic demo's detector scored 24.9 % at 0.5 and
55.6 % at 0.12. Its own training tiles say how much it should mark: the share of change in
their (pseudo) labels. The threshold is lowered until the detector marks that share of the
training tiles' scored pixels, and never raised above the default by that rule (measured on
the real-pair run, pooled change IoU of the 11 optical regions: 0.351 at 0.5, 0.348 at the
matched threshold, 0.355 at min(0.5, matched); test_101 0.006 -> 0.133).

The tiles tagged *not changed* bound it from below: they are pixel truth, so the threshold
is raised (up to `MAX_THRESHOLD`) until the detector marks at most `NOT_CHANGED_TARGET` of
their pixels (issue 26: on unseen regions the detector marked change inside them).
`kdmsi.training.tag_check.TagCheck` then says what the model marks in the tagged tiles at the
chosen threshold. Both read the tagged tiles of the map `kdmsi detect` will write
(`kdmsi.training.tagged_map`), not the model's output on its training windows, which marked
far less (issue 26, EGY-BCD at 128 px: 1.2 % against 17.2 % of the not-changed tiles).
"""

from __future__ import annotations

import logging
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.pairs import IGNORE_INDEX, subset
from ..data.tagged import RasterTileDataset
from ..models.checkpoint import DETECTOR_THRESHOLD
from ..progress import CancelCheck, check_cancel
from .common import eval_loader
from .tag_check import (
    BINS,
    NOT_CHANGED_WARN_SHARE,
    TagCheck,
    TileHistograms,
    lowest_threshold_within,
    shares_at_or_above,
)
from .tagged_map import tagged_tile_maps

log = logging.getLogger(__name__)

MAX_THRESHOLD = 0.9
LABEL_SHARE_FACTOR = 1.0
"""The detector is calibrated to mark this multiple of its pseudo labels' share."""
CAPPED_AT_DEFAULT = True
"""The label-share rule only lowers the threshold below the default, never raises it."""
NOT_CHANGED_TARGET: Optional[float] = NOT_CHANGED_WARN_SHARE
"""The share of the pixels of the tiles tagged not changed that the saved threshold may mark
(None: no bound, the earlier rule). Measured on the tuning side of `bench/real_pairs.py`
(`bench/detector_threshold.py`, pooled change IoU at the default grid / at 128 px, on the
detect maps): no bound 0.360 / 0.304, 5 % 0.354 / 0.309, 2 % 0.348 / 0.307, 1 % 0.337 / 0.272.
2 %, the share at which the check after training warns (`NOT_CHANGED_WARN_SHARE`): a looser
bound saved models the product then warned about, at every training. A tighter bound erases
true change where the detector marks a little of a tile tagged not changed (edges,
unlabelled change)."""


@torch.no_grad()
def calibrated_threshold(
    model: torch.nn.Module,
    dataset: Dataset,
    device: torch.device,
    default: float = DETECTOR_THRESHOLD,
    batch_size: int = 4,
    cancelled: Optional[CancelCheck] = None,
) -> tuple[dict, dict]:
    """The detector's threshold from its tagged tiles (`detector_threshold`) and what it marks
    there at that threshold (`TagCheck.to_dict`), which is logged: its summary as info, each
    warning as a warning.

    Tagged windows of a raster (`RasterTileDataset`) are read on the map `kdmsi detect` will
    write (`kdmsi.training.tagged_map`); the tiles of an image-pair folder, which detect runs
    one by one, on the model's output for each.

    Returns:
        ({"value", "method", "matched", "label_share", "not_changed_bound", "map"}, tag check).
    """
    model.eval()
    hists = TileHistograms()
    changed = scored = 0
    if isinstance(dataset, RasterTileDataset):
        tiles, read = _detect_map_tiles(model, dataset, device, batch_size, cancelled), "detect map"
    else:
        tiles, read = _window_tiles(model, dataset, device, batch_size, cancelled), "tiles"
    for prob, mask, label in tiles:
        hists.add(prob[mask != IGNORE_INDEX], label)
        changed += int(np.count_nonzero(mask == 1))
        scored += int(np.count_nonzero(mask != IGNORE_INDEX))
    choice = detector_threshold(hists, changed / max(scored, 1), default)
    choice["map"] = read
    check = TagCheck.from_histograms(hists, choice["value"]).to_dict()
    log.info("detector threshold %.3f (%s, on the %s)", choice["value"], choice["method"], read)
    log.info("tags after training: %s", check["summary"])
    for warning in check["warnings"]:
        log.warning("%s", warning)
    return choice, check


Tile = tuple[np.ndarray, np.ndarray, int]
"""A tagged tile's probability float [h, w], its (pseudo) label mask [h, w] (`IGNORE_INDEX`:
not scored) and its tag."""


def _window_tiles(
    model: torch.nn.Module,
    dataset: Dataset,
    device: torch.device,
    batch_size: int,
    cancelled: Optional[CancelCheck],
) -> Iterator[Tile]:
    """The model's output on each item of ``dataset`` as it is."""
    for batch in eval_loader(subset(dataset, range(len(dataset)), augment=False), batch_size):
        check_cancel(cancelled)
        prob = model.change_probability(batch["pre"].to(device), batch["post"].to(device))
        prob = prob[:, 0].float().cpu().numpy()
        yield from zip(prob, batch["mask"].numpy(), (int(t) for t in batch["label"].tolist()))


def _detect_map_tiles(
    model: torch.nn.Module,
    dataset: RasterTileDataset,
    device: torch.device,
    batch_size: int,
    cancelled: Optional[CancelCheck],
) -> Iterator[Tile]:
    """Each tagged window of the detect map (`tagged_tile_maps`) with its pseudo labels (0 in
    tiles tagged not changed before any are set)."""
    for index, prob, covered in tagged_tile_maps(
        model, dataset, device, batch_size, cancelled=cancelled
    ):
        label = int(dataset.labels[index])
        if dataset.masks is not None:
            mask = dataset.masks[index][: prob.shape[0], : prob.shape[1]].astype(np.int64)
        else:
            mask = np.full(prob.shape, 0 if label == 0 else IGNORE_INDEX, np.int64)
        mask[~covered] = IGNORE_INDEX
        yield prob, mask, label


def detector_threshold(
    hists: TileHistograms,
    label_share: float,
    default: float = DETECTOR_THRESHOLD,
    not_changed_target: Optional[float] = NOT_CHANGED_TARGET,
    share_factor: float = LABEL_SHARE_FACTOR,
    capped: bool = CAPPED_AT_DEFAULT,
    not_changed_limit: float = MAX_THRESHOLD,
) -> dict:
    """The threshold at which the detector marks ``share_factor`` x ``label_share`` of all the
    tiles' pixels (never above ``default`` when ``capped``), raised (up to
    ``not_changed_limit``) to the lowest threshold that marks at most ``not_changed_target`` of
    the pixels of the tiles tagged not changed.

    Returns:
        {"value", "method" ("label share", "default" or "not-changed tiles"), "matched",
        "label_share", "not_changed_bound" (None without such tiles or target)}.
    """
    total = np.sum(hists.hists, axis=0) if hists.hists else np.zeros(BINS, np.int64)
    matched = lowest_threshold_within(shares_at_or_above(total), share_factor * label_share)
    value = min(default, matched) if capped else min(matched, MAX_THRESHOLD)
    method = "label share" if value != default else "default"
    bound = None
    not_changed = hists.above(0)
    if not_changed_target is not None and len(not_changed):
        bound = min(lowest_threshold_within(not_changed, not_changed_target), not_changed_limit)
        if bound > value:
            value, method = bound, "not-changed tiles"
    return {
        "value": round(value, 4),
        "method": method,
        "matched": matched,
        "label_share": label_share,
        "not_changed_bound": bound,
    }


__all__ = ["calibrated_threshold", "detector_threshold"]
