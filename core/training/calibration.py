"""The threshold a detector is saved with, chosen without pixel truth.

A detector trained on a few tens of tiles is often under-confident: on the real pairs its
probabilities sat below 0.5 on most of what it found (LEVIR test_101: change IoU 0.006 at 0.5,
0.240 at its best threshold), and the synthetic demo's detector scored 24.9 % at 0.5 and
55.6 % at 0.12. Its own training tiles say how much it should mark: the share of change in
their (pseudo) labels. `calibrated_threshold` lowers the threshold until the detector marks
that share of the training tiles' scored pixels, and never raises it above the default: a
detector marking more than its labels is left at 0.5. Measured offline on the real-pair run
(`bench/real_pairs.py`, pooled change IoU of the 11 optical regions): 0.351 at 0.5, 0.348 at
the matched threshold, 0.355 at min(0.5, matched); test_101 0.006 -> 0.133.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.pairs import IGNORE_INDEX, subset
from ..models.checkpoint import DETECTOR_THRESHOLD
from ..progress import CancelCheck, check_cancel
from .common import eval_loader

BINS = 1000


@torch.no_grad()
def calibrated_threshold(
    model: torch.nn.Module,
    dataset: Dataset,
    device: torch.device,
    default: float = DETECTOR_THRESHOLD,
    batch_size: int = 4,
    cancelled: Optional[CancelCheck] = None,
) -> dict:
    """min(``default``, the threshold at which ``model`` marks as large a share of the
    dataset's scored pixels (mask 0 or 1) as its masks do).

    Returns:
        {"value", "method" ("label share" or "default"), "matched", "label_share"}.
    """
    model.eval()
    hist = np.zeros(BINS, np.int64)
    changed = scored = 0
    for batch in eval_loader(subset(dataset, range(len(dataset)), augment=False), batch_size):
        check_cancel(cancelled)
        prob = model.change_probability(batch["pre"].to(device), batch["post"].to(device))
        prob = prob[:, 0].float().cpu().numpy()
        mask = batch["mask"].numpy()
        keep = mask != IGNORE_INDEX
        hist += np.histogram(prob[keep], BINS, (0.0, 1.0))[0]
        changed += int(np.count_nonzero(mask == 1))
        scored += int(np.count_nonzero(keep))
    share = changed / max(scored, 1)
    above = hist[::-1].cumsum()[::-1] / max(scored, 1)  # share of pixels >= each bin's start
    fits = np.nonzero(above <= share)[0]
    matched = float(fits[0]) / BINS if fits.size else 1.0
    value = min(default, matched)
    method = "label share" if value < default else "default"
    return {"value": round(value, 4), "method": method, "matched": matched, "label_share": share}


__all__ = ["calibrated_threshold"]
