"""Tables of the real-pair benchmark (`real_pairs.py`): per region, pooled per side of the
protocol (`real_regions.TUNING`, `real_regions.REPORTING`), and the paper's metrics."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
from real_regions import NOT_SCORED, REPORTING, TUNING, best_threshold_counts, counts, metrics

HIST_BINS = 200
ROWS = (
    "naive (oracle)",
    "zero-shot map",
    "tags as the map",
    "teacher CAM",
    "student",
    "student + MSI",
    "pseudo labels, MSI alone",
    "pseudo labels",
    "final detector",
)
PLAIN = ("naive (oracle)", "tags as the map")  # no threshold of their own to compare
SHARES = ("zero-shot map", "final detector")  # whose marked shares the table shows


def score_row(
    score: np.ndarray,
    truth: np.ndarray,
    chosen: np.ndarray,
    where: Optional[np.ndarray] = None,
    not_changed: Optional[np.ndarray] = None,
) -> dict:
    """A table row: counts of the ``chosen`` decision, of the region's best threshold of
    ``score`` against the truth, the truth-split histograms of ``score`` (for pooled
    best-threshold curves), and what an analyst sees without truth: ``marked`` [marked,
    scored] pixels, ``not_changed`` [marked, all] pixels of the tiles tagged not changed."""
    scored = truth != NOT_SCORED if where is None else (truth != NOT_SCORED) & where
    edges = np.linspace(0.0, 1.0, HIST_BINS + 1)
    values, positive = np.clip(score[scored], 0.0, 1.0), truth[scored] == 1
    row = {
        "counts": counts(chosen, truth, where).tolist(),
        "oracle": best_threshold_counts(score, truth, where)[1].tolist(),
        "hist_pos": np.histogram(values[positive], edges)[0].tolist(),
        "hist_neg": np.histogram(values[~positive], edges)[0].tolist(),
        "marked": [int(np.count_nonzero(chosen & scored)), int(np.count_nonzero(scored))],
    }
    if not_changed is not None:
        inside = not_changed if where is None else not_changed & where
        row["not_changed"] = [
            int(np.count_nonzero(chosen & inside)),
            int(np.count_nonzero(inside)),
        ]
    return row


def _iou(c) -> float:
    return metrics(np.asarray(c))["cIoU"]


def _share(pair) -> float:
    return pair[0] / max(pair[1], 1)


def _best_single_threshold(pos: np.ndarray, neg: np.ndarray) -> float:
    """The best change IoU of one threshold for all regions, from summed histograms."""
    tp = pos[::-1].cumsum()[::-1]
    fp = neg[::-1].cumsum()[::-1]
    fn = pos.sum() - tp
    return float((tp / np.maximum(tp + fp + fn, 1)).max())


def _accepted(results: list[dict[str, Any]], side: str, optical: bool) -> list[dict[str, Any]]:
    return [
        r
        for r in results
        if r.get("side", TUNING) == side
        and r["optical"] == optical
        and not r.get("refused")
        and not r.get("cross")
    ]


def pooled(results: list[dict[str, Any]], side: str, optical: bool) -> dict[str, dict[str, float]]:
    """Pooled figures per row over the accepted regions of a side and kind (TP, FP, FN summed
    first): ``label_free`` change IoU, ``region_best`` (each region at its best threshold
    against the truth), ``one_best`` (one threshold against the truth for all regions),
    ``marked`` share of the scored pixels and ``not_changed`` share marked inside tiles
    tagged not changed."""
    out: dict[str, dict[str, float]] = {}
    chosen = _accepted(results, side, optical)
    for row in ROWS:
        entries = [r["rows"][row] for r in chosen if row in r["rows"]]
        if not entries:
            continue
        total = {
            key: np.sum([np.asarray(e[key]) for e in entries], axis=0)
            for key in ("counts", "oracle", "hist_pos", "hist_neg")
        }
        out[row] = {
            "label_free": _iou(total["counts"]),
            "region_best": _iou(total["oracle"]),
            "one_best": _best_single_threshold(total["hist_pos"], total["hist_neg"]),
        }
        for key in ("marked", "not_changed"):
            if all(key in e for e in entries):
                out[row][key] = _share(np.sum([e[key] for e in entries], axis=0))
    return out


def _true_share(r: dict[str, Any]) -> float:
    tp, fp, fn, tn = r["rows"]["naive (oracle)"]["counts"]
    return (tp + fn) / max(tp + fp + fn + tn, 1)


def table(results: list[dict[str, Any]]) -> str:
    """Per-region change IoU of every row present (the region's best threshold against the
    truth in brackets), the true and marked shares, then pooled rows per side and kind."""
    rows = [row for row in ROWS if any(row in r["rows"] for r in results)]
    header = (
        "| region | side | grid | tags 1/0 | true % | "
        + " | ".join(rows)
        + " | marked % (zero-shot / detector) | in 'not changed' tiles % | train s |"
    )
    lines = [header, "|---|---|---:|---|---:|" + "---:|" * (len(rows) + 3)]
    for r in results:
        cells = []
        for row in rows:
            entry = r["rows"].get(row)
            if entry is None:
                cells.append("–")
            elif row in PLAIN:
                cells.append(f"{_iou(entry['counts']):.3f}")
            else:
                cells.append(f"{_iou(entry['counts']):.3f} ({_iou(entry['oracle']):.3f})")
        marked = " / ".join(
            f"{100 * _share(r['rows'][k]['marked']):.1f}" if k in r["rows"] else "–" for k in SHARES
        )
        inside = " / ".join(
            f"{100 * _share(r['rows'][k]['not_changed']):.1f}"
            if k in r["rows"] and "not_changed" in r["rows"][k]
            else "–"
            for k in SHARES
        )
        train = (r.get("stages") or {}).get("train") or {}
        name = r["region"] + (" (refused)" if r.get("refused") else "")
        lines.append(
            f"| {name} | {r.get('side', TUNING)} | {r.get('grid', '–')} "
            f"| {r['tags'][0]}/{r['tags'][1]} | {100 * _true_share(r):.1f} | "
            + " | ".join(cells)
            + f" | {marked} | {inside} | {train.get('wall_s', '–')} |"
        )
    for side in (REPORTING, TUNING):
        for optical, label in ((True, "optical"), (False, "SAR, Landsat, heterogeneous")):
            lines += _pooled_lines(results, rows, side, optical, label)
    return "\n".join(lines)


def _pooled_lines(results, rows, side: str, optical: bool, label: str) -> list[str]:
    figures = pooled(results, side, optical)
    if not figures:
        return []
    chosen = _accepted(results, side, optical)
    scored = [r["rows"]["naive (oracle)"]["marked"][1] for r in chosen]
    true = sum(_true_share(r) * n for r, n in zip(chosen, scored)) / max(sum(scored), 1)
    lines = []
    for key, what in (
        ("label_free", f"**pooled, {side} side, {label}**"),
        ("region_best", f"pooled, {side}, {label}: best threshold per region (oracle)"),
        ("one_best", f"pooled, {side}, {label}: best single threshold (oracle)"),
    ):
        cells = [f"{figures[row][key]:.3f}" if row in figures else "–" for row in rows]
        tail = "| | | |"
        if key == "label_free":
            cells = [f"**{c}**" for c in cells]
            marked = " / ".join(
                f"{100 * figures[k]['marked']:.1f}" if "marked" in figures.get(k, {}) else "–"
                for k in SHARES
            )
            inside = " / ".join(
                f"{100 * figures[k]['not_changed']:.1f}"
                if "not_changed" in figures.get(k, {})
                else "–"
                for k in SHARES
            )
            tail = f"| {marked} | {inside} | |"
        true_cell = f"{100 * true:.1f}" if key == "label_free" else ""
        lines.append(f"| {what} | | | | {true_cell} | " + " | ".join(cells) + f" {tail}")
    return lines


def ratios(results: list[dict[str, Any]]) -> str:
    """The headline: per side and grid, the final detector's and the zero-shot map's pooled
    change IoU over naive differencing's oracle on the same pixels (the regions `kdmsi train`
    accepted), and what the analyst gets over all the optical regions: the detector, or the
    zero-shot map the refusal offers where training is refused."""
    lines = [
        "| side | grid | trained (refused) | final detector | zero-shot map | naive (oracle) "
        "| detector / naive | detector / zero-shot | analyst gets, all regions | naive, all |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for side in (REPORTING, TUNING):
        everything = [
            r
            for r in results
            if r.get("side", TUNING) == side and r["optical"] and not r.get("cross")
        ]
        for grid in sorted({_grid_mode(r) for r in everything}):
            subset = [r for r in everything if _grid_mode(r) == grid]
            trained = [r for r in subset if "final detector" in r["rows"]]
            refused = [r["region"] for r in subset if "final detector" not in r["rows"]]
            names = ", ".join(r["region"] for r in trained) + (
                f" ({', '.join(refused)})" if refused else ""
            )
            gets = _iou(
                np.sum(
                    [r["rows"]["final detector" if r in trained else "zero-shot map"]["counts"]
                     for r in subset if "zero-shot map" in r["rows"] or r in trained],
                    axis=0,
                )
            )  # fmt: skip
            naive_all = _iou(
                np.sum([r["rows"]["naive (oracle)"]["counts"] for r in subset], axis=0)
            )
            if not trained:
                lines.append(
                    f"| {side} | {grid} | none ({', '.join(refused)}) | – | – | – | – | – "
                    f"| {gets:.3f} | {naive_all:.3f} |"
                )
                continue
            figures = pooled(trained, side, True)
            det, naive = figures["final detector"]["label_free"], figures["naive (oracle)"]
            zero = figures.get("zero-shot map", {}).get("label_free", float("nan"))
            lines.append(
                f"| {side} | {grid} | {names} | {det:.3f} | {zero:.3f} | {naive['label_free']:.3f} "
                f"| {det / naive['label_free']:.2f}x | {det / zero:.2f}x | {gets:.3f} "
                f"| {naive_all:.3f} |"
            )
    return "\n".join(lines)


def paper_metrics(results: list[dict[str, Any]]) -> str:
    """The paper's six metrics (%) of every row, pooled over the accepted optical regions of
    each side."""
    keys = ("OA", "F1", "cIoU", "mIoU", "FP", "FN")
    lines = ["| side | pooled, optical | " + " | ".join(keys) + " |"]
    lines.append("|---|---|" + "---:|" * len(keys))
    for side in (REPORTING, TUNING):
        chosen = _accepted(results, side, True)
        for row in ROWS:
            entries = [r["rows"][row]["counts"] for r in chosen if row in r["rows"]]
            if entries:
                values = metrics(np.sum(entries, axis=0))
                cells = " | ".join(f"{100 * values[k]:.2f}" for k in keys)
                lines.append(f"| {side} | {row} | {cells} |")
    return "\n".join(lines)


def report(results: list[dict[str, Any]]) -> str:
    """The tables, as printed and written by ``--markdown``: the headline ratios, then per
    grid the regions and the paper's metrics."""
    parts = [ratios(results)]
    for grid in sorted({_grid_mode(r) for r in results}):
        subset = [r for r in results if _grid_mode(r) == grid]
        parts += [f"Tag grid: {grid}", table(subset), paper_metrics(subset)]
    return "\n\n".join(parts)


def _grid_mode(result: dict[str, Any]) -> str:
    return str(result.get("grid_mode", result.get("grid")))
