"""Which tiles to tag next: per-tile change evidence from a map, and the order to tag in.

Tagging is the analyst's whole cost, so the tile grid carries a suggested order:

- Before a model exists (`zero_shot_order`): the tiles most likely changed, by the zero-shot
  map, alternating with a spatial spread of likely unchanged ones. Both classes arrive from
  the first tags (training needs both), the changed ones are found without scanning the grid,
  and the unchanged ones cover the region's variety instead of one corner.
- Once a model is trained (`uncertainty_order`): the untagged tiles whose evidence lies
  closest to the model's threshold first, the ones a new tag teaches it most about.

Tiles already tagged get no rank. Pure numpy: `kdmsi.detect.suggest` makes the map and reads
the evidence per tile.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

EVIDENCE_PERCENTILE = 99.5
"""A tile's change evidence: this percentile of its map values. A tile is tagged changed when
at least 0.5 % of it changed, that is when its 99.5th percentile is change."""


def tile_evidence(values: np.ndarray, nodata: float) -> Optional[float]:
    """`EVIDENCE_PERCENTILE` of a tile's map values (float [h, w]), ignoring ``nodata`` and
    NaN; None when the tile has no valid value."""
    valid = values[np.isfinite(values) & (values != nodata)]
    if valid.size == 0:
        return None
    return float(np.percentile(valid, EVIDENCE_PERCENTILE))


def _spread(cells: np.ndarray, candidates: Sequence[int], first: int) -> list[int]:
    """``candidates`` (indices into ``cells`` [n, 2] of row, col) in farthest-point order from
    ``first``: each next one the farthest from all taken so far."""
    left = [c for c in candidates if c != first]
    order = [first]
    if not left:
        return order
    nearest = np.linalg.norm(cells[left] - cells[first], axis=1)
    while left:
        k = int(np.argmax(nearest))
        order.append(left.pop(k))
        nearest = np.delete(nearest, k)
        if left:
            nearest = np.minimum(nearest, np.linalg.norm(cells[left] - cells[order[-1]], axis=1))
    return order


def zero_shot_order(
    cells: np.ndarray, evidence: Sequence[Optional[float]], tagged: Sequence[bool]
) -> list[int]:
    """The tagging order before any model: indices of the untagged tiles with evidence.

    Args:
        cells: int [n, 2], each tile's (row, col) on the grid.
        evidence: each tile's change evidence (`tile_evidence`; None: no valid pixel).
        tagged: whether each tile is tagged already (those are left out).

    Returns:
        Indices, first to tag first: the most likely changed tile (highest evidence), then the
        least likely, then alternately the next most likely changed and the likely-unchanged
        tile farthest from those already taken (the lower half of the evidence is the
        unchanged pool).
    """
    open_ = [i for i, e in enumerate(evidence) if e is not None and not tagged[i]]
    if not open_:
        return []
    by_evidence = sorted(open_, key=lambda i: (-float(evidence[i]), i))  # type: ignore[arg-type]
    pool = by_evidence[len(by_evidence) // 2 :]
    unchanged = _spread(np.asarray(cells, float), pool, pool[-1])
    changed = by_evidence[: len(by_evidence) // 2]  # the rest: the upper half, in order
    order: list[int] = []
    for k in range(max(len(changed), len(unchanged))):
        order += changed[k : k + 1] + unchanged[k : k + 1]
    return order


def uncertainty(evidence: float, threshold: float) -> float:
    """1 at the model's ``threshold``, falling linearly to 0 at the far end of [0, 1]."""
    span = max(threshold, 1.0 - threshold, 1e-6)
    return float(max(0.0, 1.0 - abs(evidence - threshold) / span))


def uncertainty_order(
    evidence: Sequence[Optional[float]], tagged: Sequence[bool], threshold: float
) -> list[int]:
    """The tagging order with a trained model: untagged tiles, least sure (evidence nearest
    the model's ``threshold``, see `uncertainty`) first."""
    open_ = [i for i, e in enumerate(evidence) if e is not None and not tagged[i]]
    return sorted(open_, key=lambda i: (-uncertainty(float(evidence[i]), threshold), i))  # type: ignore[arg-type]


__all__ = [
    "EVIDENCE_PERCENTILE",
    "tile_evidence",
    "uncertainty",
    "uncertainty_order",
    "zero_shot_order",
]
