"""Thresholds for probability maps that need no pixel ground truth (pseudo labels, evaluation).

The original KD-MSI code picks the threshold against pixel masks, which users do not have.
Here the default ("auto") uses only the image-level labels: Otsu's threshold on the MSI
probabilities of tiles labelled changed (changed tiles mix change and background, so their
histogram is bimodal), raised to at least the 99th percentile of the probabilities on tiles
labelled unchanged (where every pixel is background, so anything above that is a false alarm).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional, Union

import numpy as np

from ..options import THRESHOLD_WORDS

HIST_BINS = 1000


@dataclass
class ProbabilityHistograms:
    """Histograms over [0, 1] of the probabilities on changed and on unchanged tiles."""

    changed: np.ndarray = field(default_factory=lambda: np.zeros(HIST_BINS, np.int64))
    unchanged: np.ndarray = field(default_factory=lambda: np.zeros(HIST_BINS, np.int64))

    def add(self, prob: np.ndarray, label: Optional[int], valid: Optional[np.ndarray] = None):
        """Add a tile's probabilities [H, W] under its image label (None is skipped)."""
        if label is None:
            return
        values = prob[valid] if valid is not None else prob.ravel()
        hist, _ = np.histogram(values, bins=HIST_BINS, range=(0.0, 1.0))
        (self.changed if label == 1 else self.unchanged).__iadd__(hist)


@dataclass(frozen=True)
class ThresholdChoice:
    """A threshold and how it was chosen, for the checkpoint metadata and the report."""

    value: float
    method: str
    otsu_changed: Optional[float] = None
    unchanged_quantile: Optional[float] = None
    quantile: Optional[float] = None

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        parts = [f"threshold {self.value:.3f} ({self.method})"]
        if self.otsu_changed is not None:
            parts.append(f"Otsu on changed tiles {self.otsu_changed:.3f}")
        if self.unchanged_quantile is not None:
            parts.append(
                f"{100 * self.quantile:g}th percentile on unchanged tiles "
                f"{self.unchanged_quantile:.3f}"
            )
        return "; ".join(parts)


def otsu_threshold(hist: np.ndarray) -> float:
    """Otsu's threshold of a histogram over [0, 1]: the edge maximising between-class variance."""
    hist = hist.astype(np.float64)
    total = hist.sum()
    if total == 0:
        raise ValueError("Otsu's threshold of an empty histogram")
    centres = (np.arange(hist.size) + 0.5) / hist.size
    w0 = np.cumsum(hist)
    w1 = total - w0
    m0 = np.cumsum(hist * centres)
    mean_total = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean_total * w0 - m0 * total) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1
    if between.max() <= 0:  # all values in one bin: nothing to split
        return float((np.flatnonzero(hist)[-1] + 1) / hist.size)
    # Between well-separated modes the criterion is flat over the empty gap: take its middle.
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    k = (best[0] + best[-1]) / 2
    return float((k + 1) / hist.size)


def histogram_quantile(hist: np.ndarray, q: float) -> float:
    """The q-quantile (0..1) of values summarised by a histogram over [0, 1] (upper bin edge)."""
    cum = np.cumsum(hist)
    if cum[-1] == 0:
        raise ValueError("quantile of an empty histogram")
    k = int(np.searchsorted(cum, q * cum[-1], side="left"))
    return min(k + 1, hist.size) / hist.size


def choose_threshold(
    hists: ProbabilityHistograms,
    method: Union[str, float] = "auto",
    quantile: float = 0.99,
) -> ThresholdChoice:
    """Pick the pseudo-label threshold from the image-labelled tiles' probabilities.

    method: a number (used as is), ``otsu`` (changed tiles only), ``unchanged-quantile``
    (the `quantile` of unchanged tiles only), or ``auto`` (the larger of the two, Otsu alone
    when no tile is labelled unchanged).
    """
    if not isinstance(method, str):
        value = float(method)
        if not 0.0 < value < 1.0:
            raise ValueError(f"an explicit threshold must lie in (0, 1), not {value}")
        return ThresholdChoice(value, "explicit")
    if method not in THRESHOLD_WORDS:
        raise ValueError(f"unknown threshold method {method!r}; use a number or {THRESHOLD_WORDS}")
    has_changed, has_unchanged = hists.changed.sum() > 0, hists.unchanged.sum() > 0
    otsu = otsu_threshold(hists.changed) if has_changed else None
    uq = histogram_quantile(hists.unchanged, quantile) if has_unchanged else None
    if method == "otsu" or (method == "auto" and uq is None):
        if otsu is None:
            raise ValueError("Otsu's threshold needs tiles labelled changed; none were given")
        return ThresholdChoice(otsu, "otsu" if method == "otsu" else "auto (Otsu only)", otsu)
    if method == "unchanged-quantile" or otsu is None:
        if uq is None:
            raise ValueError("the unchanged-quantile threshold needs tiles labelled unchanged")
        return ThresholdChoice(uq, method, None, uq, quantile)
    return ThresholdChoice(max(otsu, uq), "auto", otsu, uq, quantile)
