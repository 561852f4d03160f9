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
chosen threshold.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.pairs import IGNORE_INDEX, subset
from ..models.checkpoint import DETECTOR_THRESHOLD
from ..progress import CancelCheck, check_cancel
from .common import eval_loader
from .tag_check import (
    BINS,
    TagCheck,
    TileHistograms,
    lowest_threshold_within,
    shares_at_or_above,
)

log = logging.getLogger(__name__)

MAX_THRESHOLD = 0.9
LABEL_SHARE_FACTOR = 1.0
"""The detector is calibrated to mark this multiple of its pseudo labels' share."""
CAPPED_AT_DEFAULT = True
"""The label-share rule only lowers the threshold below the default, never raises it."""
NOT_CHANGED_TARGET: Optional[float] = 0.05
"""The share of the pixels of the tiles tagged not changed that the saved threshold may mark
(None: no bound, the earlier rule). Chosen on the tuning side of `bench/real_pairs.py`
(`bench/detector_threshold.py`, pooled change IoU at the default grid / at 128 px): no bound
0.360 / 0.304, 5 % 0.354 / 0.309, 2 % 0.348 / 0.307, 1 % 0.337 / 0.272. A tighter bound
erases true change where the detector marks a little in a tile tagged not changed (edges,
unlabelled change); 5 % leaves well-behaved models alone and stops the one that paints the
tiles an analyst said are unchanged."""


@torch.no_grad()
def calibrated_threshold(
    model: torch.nn.Module,
    dataset: Dataset,
    device: torch.device,
    default: float = DETECTOR_THRESHOLD,
    batch_size: int = 4,
    cancelled: Optional[CancelCheck] = None,
) -> tuple[dict, dict]:
    """The detector's threshold from its training tiles (`detector_threshold`) and what it
    marks there at that threshold (`TagCheck.to_dict`), which is logged: its summary as info,
    each warning as a warning.

    Returns:
        ({"value", "method", "matched", "label_share", "not_changed_bound"}, tag check).
    """
    model.eval()
    hists = TileHistograms()
    changed = scored = 0
    for batch in eval_loader(subset(dataset, range(len(dataset)), augment=False), batch_size):
        check_cancel(cancelled)
        prob = model.change_probability(batch["pre"].to(device), batch["post"].to(device))
        prob = prob[:, 0].float().cpu().numpy()
        mask = batch["mask"].numpy()
        for tile, tile_mask, label in zip(prob, mask, batch["label"].tolist()):
            hists.add(tile[tile_mask != IGNORE_INDEX], int(label))
        changed += int(np.count_nonzero(mask == 1))
        scored += int(np.count_nonzero(mask != IGNORE_INDEX))
    choice = detector_threshold(hists, changed / max(scored, 1), default)
    check = TagCheck.from_histograms(hists, choice["value"]).to_dict()
    log.info("detector threshold %.3f (%s)", choice["value"], choice["method"])
    log.info("tags after training: %s", check["summary"])
    for warning in check["warnings"]:
        log.warning("%s", warning)
    return choice, check


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
