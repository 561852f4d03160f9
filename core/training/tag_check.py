"""What a trained detector marks inside the tiles an analyst tagged: the evidence of the tags
after training, without any pixel mask.

A tile tagged *not changed* is pixel truth for the whole tile; a tile tagged *changed* should
not come out empty. `TileHistograms` holds each tagged tile's probability histogram (read on
the map `kdmsi detect` will write, `kdmsi.training.calibration`); `TagCheck` reads it
at the detector's threshold and says, loudly, when the model contradicts the tags.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..inference.pseudo_labels import ZERO_SHOT_HINT

BINS = 1000
NOT_CHANGED_WARN_SHARE = 0.02
"""Warn when the detector marks more than this share of the pixels of the tiles tagged not
changed (pooled), or count a single such tile as marked."""
EMPTY_CHANGED_SHARE = 0.005
"""A tile tagged changed "comes out empty" when less than this share of it is marked (the
share at which the benchmark's analyst tags a tile changed)."""
EMPTY_CHANGED_WARN_SHARE = 0.2
"""Warn when more than this share of the tiles tagged changed come out empty."""


def shares_at_or_above(hist: np.ndarray) -> np.ndarray:
    """Share of a histogram's pixels at or above each bin's lower edge: float [BINS]."""
    return hist[::-1].cumsum()[::-1] / max(int(hist.sum()), 1)


def first_bin(value: float) -> int:
    """The first bin whose pixels count as marked at threshold ``value`` (`BINS`: none)."""
    return min(int(np.ceil(value * BINS - 1e-9)), BINS)


@dataclass
class TileHistograms:
    """Per tagged tile: the histogram of the detector's probability over its scored pixels
    (`BINS` bins over [0, 1]) and its tag (1 changed, 0 not changed)."""

    hists: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def add(self, probability: np.ndarray, label: int) -> None:
        """One tile's scored probabilities (any shape) and its tag."""
        values = np.clip(probability.ravel(), 0.0, 1.0)
        self.hists.append(np.histogram(values, BINS, (0.0, 1.0))[0].astype(np.int64))
        self.labels.append(int(label))

    def above(self, label: int) -> np.ndarray:
        """Pooled share of the pixels of the tiles tagged ``label`` at or above each bin's
        lower edge: float [BINS] (empty when no tile has that tag)."""
        chosen = [h for h, tag in zip(self.hists, self.labels) if tag == label]
        return shares_at_or_above(np.sum(chosen, axis=0)) if chosen else np.zeros(0)

    def tile_shares(self, value: float) -> np.ndarray:
        """Share of each tile's pixels at or above ``value``: float [tiles]."""
        start = first_bin(value)
        return np.array(
            [h[start:].sum() / max(int(h.sum()), 1) for h in self.hists], dtype=np.float64
        )


def lowest_threshold_within(above: np.ndarray, share: float) -> float:
    """The lowest bin edge at which at most ``share`` of the pixels are at or above it (1.0
    when none is)."""
    fits = np.nonzero(above <= share)[0]
    return float(fits[0]) / BINS if fits.size else 1.0


@dataclass(frozen=True)
class TagCheck:
    """The detector's marks inside the tagged tiles at ``threshold``."""

    threshold: float
    not_changed_tiles: int
    not_changed_marked: float
    """Pooled share of the pixels of the tiles tagged not changed that are marked."""
    not_changed_tiles_marked: int
    """Tiles tagged not changed with more than `NOT_CHANGED_WARN_SHARE` of them marked."""
    changed_tiles: int
    changed_tiles_empty: int
    """Tiles tagged changed with less than `EMPTY_CHANGED_SHARE` of them marked."""

    @classmethod
    def from_histograms(cls, hists: TileHistograms, threshold: float) -> TagCheck:
        shares = hists.tile_shares(threshold)
        labels = np.array(hists.labels)
        start = first_bin(threshold)
        not_changed = hists.above(0)
        marked = float(not_changed[start]) if start < BINS and len(not_changed) else 0.0
        return cls(
            threshold=round(float(threshold), 4),
            not_changed_tiles=int(np.count_nonzero(labels == 0)),
            not_changed_marked=marked,
            not_changed_tiles_marked=int(
                np.count_nonzero((labels == 0) & (shares > NOT_CHANGED_WARN_SHARE))
            ),
            changed_tiles=int(np.count_nonzero(labels == 1)),
            changed_tiles_empty=int(
                np.count_nonzero((labels == 1) & (shares < EMPTY_CHANGED_SHARE))
            ),
        )

    def describe(self) -> str:
        """One line for the CLI, the plugin's log and the report, warning or not."""
        return (
            f"at threshold {self.threshold:.2f} the model marks "
            f"{100 * self.not_changed_marked:.1f} % of the pixels of the "
            f"{self.not_changed_tiles} tiles tagged not changed ({self.not_changed_tiles_marked}"
            f" of them above {100 * NOT_CHANGED_WARN_SHARE:.0f} %) and leaves "
            f"{self.changed_tiles_empty} of the {self.changed_tiles} tiles tagged changed "
            "(nearly) empty"
        )

    def warnings(self) -> list[str]:
        """What the analyst must read, one sentence each, with what to do ([] when the model
        keeps to the tags)."""
        out = []
        if self.not_changed_tiles and self.not_changed_marked > NOT_CHANGED_WARN_SHARE:
            out.append(
                f"the model marks {100 * self.not_changed_marked:.1f} % of the pixels of the "
                f"{self.not_changed_tiles} tiles tagged not changed "
                f"({self.not_changed_tiles_marked} of them above "
                f"{100 * NOT_CHANGED_WARN_SHARE:.0f} %): expect false changes of that kind "
                "across the region. Tag more not-changed tiles like those it confuses "
                "(shadows, fields, water that differ between the dates), or detect with a "
                f"higher threshold than the model's {self.threshold:.2f}"
            )
        if self.changed_tiles and (
            self.changed_tiles_empty > EMPTY_CHANGED_WARN_SHARE * self.changed_tiles
        ):
            out.append(
                f"{self.changed_tiles_empty} of the {self.changed_tiles} tiles tagged changed come "
                f"out (nearly) empty (under {100 * EMPTY_CHANGED_SHARE:.1f} % marked): the model "
                "misses change of that kind. Tag more changed tiles where the change is plain to "
                f"see, or detect with a lower threshold than the model's {self.threshold:.2f}"
                + (
                    # nothing the analyst tagged changed is found: the tags added nothing
                    "; until then the zero-shot map, which needs no tags, may serve better "
                    f"({ZERO_SHOT_HINT})"
                    if self.changed_tiles_empty == self.changed_tiles
                    else ""
                )
            )
        return out

    def to_dict(self) -> dict:
        return {**asdict(self), "summary": self.describe(), "warnings": self.warnings()}


__all__ = [
    "EMPTY_CHANGED_SHARE",
    "NOT_CHANGED_WARN_SHARE",
    "TagCheck",
    "TileHistograms",
    "first_bin",
    "lowest_threshold_within",
    "shares_at_or_above",
]
