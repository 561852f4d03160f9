"""Change-detection metrics with the paper's definitions, accumulated over a dataset.

The paper's FP and FN are *rates over the union* TP + FP + FN, so cIoU + FP + FN = 1, and its
F1 is the mean of the change-class and background F1. Conventional precision, recall and
change-class F1 are reported too, under their own names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

METRIC_NAMES = ("OA", "F1", "cIoU", "mIoU", "FP", "FN", "precision", "recall", "F1_change")


def _ratio(num: float, den: float, empty: float = 1.0) -> float:
    """num / den, or `empty` when den is 0 (a class absent from both maps is matched perfectly)."""
    return float(num) / float(den) if den else empty


@dataclass
class ConfusionCounts:
    """Pixel counts of the binary change confusion matrix; add maps with `update`."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def update(self, pred, target, valid=None) -> ConfusionCounts:
        """Add boolean maps (numpy arrays or tensors) of one shape; `valid` masks pixels out."""
        pred, target = _as_bool(pred), _as_bool(target)
        if pred.shape != target.shape:
            raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
        if valid is not None:
            valid = _as_bool(valid)
            pred, target = pred[valid], target[valid]
        self.tp += int(np.count_nonzero(pred & target))
        self.fp += int(np.count_nonzero(pred & ~target))
        self.fn += int(np.count_nonzero(~pred & target))
        self.tn += int(np.count_nonzero(~pred & ~target))
        return self

    def metrics(self) -> dict[str, float]:
        """OA, F1 (mean of both classes), cIoU, mIoU, FP and FN rates, precision, recall, F1_change.

        When TP + FP + FN = 0 (no change predicted nor present): cIoU = 1, FP = FN = 0.
        """
        tp, fp, fn, tn = self.tp, self.fp, self.fn, self.tn
        union_change = tp + fp + fn
        union_background = tn + fp + fn
        f1_change = _ratio(2 * tp, 2 * tp + fp + fn)
        f1_background = _ratio(2 * tn, 2 * tn + fn + fp)
        ciou = _ratio(tp, union_change)
        biou = _ratio(tn, union_background)
        return {
            "OA": _ratio(tp + tn, tp + fp + fn + tn),
            "F1": (f1_change + f1_background) / 2,
            "cIoU": ciou,
            "mIoU": (ciou + biou) / 2,
            "FP": _ratio(fp, union_change, empty=0.0),
            "FN": _ratio(fn, union_change, empty=0.0),
            "precision": _ratio(tp, tp + fp, empty=1.0 if fn == 0 else 0.0),
            "recall": _ratio(tp, tp + fn, empty=1.0 if fp == 0 else 0.0),
            "F1_change": f1_change,
        }


def change_metrics(pred, target, valid: Optional[object] = None) -> dict[str, float]:
    """Metrics of one pair of boolean maps (see `ConfusionCounts.metrics`)."""
    return ConfusionCounts().update(pred, target, valid).metrics()


def _as_bool(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    return x if x.dtype == bool else x.astype(bool)


def format_table(
    rows: dict[str, dict[str, float]], names=("OA", "F1", "cIoU", "mIoU", "FP", "FN")
) -> str:
    """A fixed-width text table: one row per method, metric columns in percent."""
    width = max([len("method"), *(len(k) for k in rows)])
    head = f"{'method':<{width}} " + " ".join(f"{n:>9}" for n in names)
    lines = [head, "-" * len(head)]
    for label, values in rows.items():
        lines.append(f"{label:<{width}} " + " ".join(f"{100 * values[n]:9.2f}" for n in names))
    return "\n".join(lines)
