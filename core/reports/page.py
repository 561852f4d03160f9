"""Training reports: one HTML page on which an analyst judges the pseudo labels before trusting
the detector.

A report folder holds::

    index.html     the page: no script, no network resource; images referenced relatively
    losses.png     loss curves of the teacher (L_cls), the student (L_kd) and the detector (CE)
    threshold.png  MSI probabilities on tiles labelled changed / unchanged, chosen threshold
    colour_*.png   colour bars of the probability maps and of the masks
    tiles/NN_*.png per sample tile: before | after | truth | teacher CAM | student |
                   student + MSI | pseudo label | final detector (one image per panel)
    report.json    the numbers behind the page

Panels a run cannot know yet (e.g. the detector after `train-kd`) are left out and the page
says which step adds them. The folder is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..geo.atomic import atomic_folder
from ..inference.thresholds import ProbabilityHistograms
from ..types import PathLike

log = logging.getLogger(__name__)


# Panel key -> (title, kind); the row order of the paper's figures.
PANELS: dict[str, tuple[str, str]] = {
    "pre": ("before", "rgb"),
    "post": ("after", "rgb"),
    "truth": ("truth", "mask"),
    "teacher-cam": ("teacher CAM", "prob"),
    "student": ("student", "prob"),
    "msi": ("student + MSI", "prob"),
    "pseudo-label": ("pseudo label", "mask"),
    "detector": ("final detector", "prob"),
}
METRIC_COLUMNS = ("cIoU", "F1", "OA", "FP", "FN")
PANEL_WIDTH_PX = 150  # display width of a tile panel on the page


class ReportError(ValueError):
    """A report that cannot be written; the message says how to fix it."""


def require_report_dependencies() -> None:
    """Raise `ReportError` when matplotlib (which draws the figures) is not installed; call it
    before a long training run that ends with a report."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise ReportError(
            "the training report needs matplotlib: install it (pip install matplotlib) or "
            "train without a report (--no-report / report_dir=None)"
        )


@dataclass
class TileRow:
    """One sample tile: its images and maps, all [H, W] (RGB [H, W, 3]).

    ``panels`` maps keys of `PANELS` to arrays: ``pre``/``post`` uint8 [H, W, 3]; ``truth`` and
    ``pseudo-label`` uint8 0 / 1 / 255 (= not scored); the others float [H, W] in [0, 1].
    """

    key: str
    label: Optional[int]
    panels: dict[str, np.ndarray]


@dataclass
class TrainingReport:
    """Everything a report page shows; any part may be missing.

    Histories are the trainers' per-epoch records (`KDResult.history`, `CDResult.history`),
    steps their per-step records, selections their model-selection records. ``threshold`` is
    a `ThresholdChoice.to_dict()`; ``histograms`` the MSI histograms it was chosen from.
    ``metrics`` maps a caption to a metrics table ({row: metrics as in `kdmsi.metrics.change`}).
    """

    title: str = "KD-MSI training report"
    kd_history: list[dict] = field(default_factory=list)
    kd_steps: list[dict] = field(default_factory=list)
    kd_selection: Optional[dict] = None
    cd_history: list[dict] = field(default_factory=list)
    cd_steps: list[dict] = field(default_factory=list)
    cd_selection: Optional[dict] = None
    threshold: Optional[dict] = None
    histograms: Optional[ProbabilityHistograms] = None
    rows: list[TileRow] = field(default_factory=list)
    metrics: dict[str, dict[str, dict]] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    """Shown first, in red: a run that stopped or produced something unusable."""


def write_training_report(
    folder: PathLike, report: TrainingReport, overwrite: bool = False
) -> Path:
    """Write `report` as `folder/index.html` plus its PNG figures and `report.json`.

    The folder is built under a temporary name beside `folder` and renamed into place, so
    an error leaves no partial report. Returns the path of `index.html`.

    Raises:
        FileExistsError: `folder` exists and `overwrite` is False.
    """
    from .figures import colour_bar_figure, loss_figure, panel_image, threshold_figure

    require_report_dependencies()
    folder = Path(folder)
    with atomic_folder(folder, overwrite) as tmp:
        figures: dict[str, str] = {}
        if loss_figure(
            tmp / "losses.png",
            report.kd_history,
            report.kd_steps,
            report.kd_selection,
            report.cd_history,
            report.cd_steps,
            report.cd_selection,
        ):
            figures["losses"] = "losses.png"
        hists = report.histograms
        if hists is not None and hists.changed.sum() + hists.unchanged.sum() > 0:
            threshold_figure(tmp / "threshold.png", report.histograms, report.threshold)
            figures["threshold"] = "threshold.png"
        columns = [k for k in PANELS if any(k in row.panels for row in report.rows)]
        tiles: list[dict[str, str]] = []
        if report.rows:
            (tmp / "tiles").mkdir()
            for kind in ("prob", "mask"):
                if any(PANELS[k][1] == kind for k in columns):
                    colour_bar_figure(tmp / f"colour_{kind}.png", kind)
                    figures[f"colour_{kind}"] = f"colour_{kind}.png"
        for n, row in enumerate(report.rows, start=1):
            files = {}
            for key, image in row.panels.items():
                files[key] = f"tiles/{n:02d}_{key}.png"
                panel_image(tmp / files[key], image, PANELS[key][1])
            tiles.append(files)
        (tmp / "index.html").write_text(_page(report, figures, columns, tiles), encoding="utf-8")
        summary = _summary(report, figures, tiles)
        (tmp / "report.json").write_text(
            json.dumps(summary, indent=2, default=str), encoding="utf-8"
        )
    log.info("training report written to %s", folder / "index.html")
    return folder / "index.html"


def _label_text(label: Optional[int]) -> str:
    return {1: "labelled changed", 0: "labelled unchanged"}.get(label, "unlabelled")


def _row_caption(row: TileRow) -> str:
    parts = [f"tile {row.key}", _label_text(row.label)]
    truth = row.panels.get("truth")
    if truth is not None:
        scored = truth != 255
        share = float((truth[scored] == 1).mean()) if scored.any() else 0.0
        parts.append(f"truth {100 * share:.1f} % change")
    pseudo = row.panels.get("pseudo-label")
    if pseudo is not None:
        parts.append(f"pseudo label {100 * float((pseudo == 1).mean()):.1f} % change")
    return ", ".join(parts)


def _summary(report: TrainingReport, figures: dict, tiles: list[dict[str, str]]) -> dict:
    return {
        "title": report.title,
        "figures": figures,
        "tiles": [
            {
                "key": r.key,
                "label": r.label,
                "panels": [k for k in PANELS if k in r.panels],
                "files": files,
            }
            for files, r in zip(tiles, report.rows)
        ],
        "threshold": report.threshold,
        "kd": {"history": report.kd_history, "selection": report.kd_selection},
        "detector": {"history": report.cd_history, "selection": report.cd_selection},
        "metrics": report.metrics,
        "settings": report.settings,
        "notes": report.notes,
        "warnings": report.warnings,
    }


_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1400px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; display: block; margin: 0.4em 0; }
table.tiles td, table.tiles th { border: none; padding: 2px; text-align: center; }
table.tiles td.caption { text-align: left; font-size: 0.85em; color: #444; padding-top: 0.8em; }
img.panel { width: PANEL_WIDTHpx; image-rendering: pixelated; margin: 0; }
img.bar { width: PANEL_WIDTHpx; margin: 0; }
.note { color: #555; font-size: 0.92em; }
.warning { color: #a00; font-weight: bold; border-left: 4px solid #a00; padding-left: 8px; }
"""


def _e(value) -> str:
    return html.escape(str(value))


def _page(
    report: TrainingReport,
    figures: dict[str, str],
    columns: list[str],
    tiles: list[dict[str, str]],
) -> str:
    style = _STYLE.replace("PANEL_WIDTH", str(PANEL_WIDTH_PX))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(report.title)}</title><style>{style}</style></head><body>",
        f"<h1>{_e(report.title)}</h1>",
    ]
    parts += [f'<p class="warning">{_e(w)}</p>' for w in report.warnings]
    parts += [f'<p class="note">{_e(n)}</p>' for n in report.notes]
    parts.append("<h2>Training</h2>")
    if "losses" in figures:
        parts.append(f'<img src="{figures["losses"]}" alt="loss curves">')
        parts.append(_selection_text(report))
    else:
        parts.append('<p class="note">No training history in this run.</p>')
    parts.append("<h2>Pseudo-label threshold</h2>")
    parts.append(_threshold_text(report.threshold))
    if "threshold" in figures:
        parts.append(f'<img src="{figures["threshold"]}" alt="MSI histograms and threshold">')
    for caption, rows in report.metrics.items():
        parts.append(f"<h2>{_e(caption)}</h2>")
        parts.append(_metrics_table(rows))
    parts.append("<h2>Sample tiles</h2>")
    if tiles:
        parts.append(_tile_table(report, figures, columns, tiles))
    else:
        parts.append('<p class="note">No sample tiles.</p>')
    if report.settings:
        parts.append("<h2>Settings</h2><table>")
        for key, value in report.settings.items():
            parts.append(f"<tr><td>{_e(key)}</td><td>{_e(value)}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _tile_table(
    report: TrainingReport,
    figures: dict[str, str],
    columns: list[str],
    tiles: list[dict[str, str]],
) -> str:
    """The paper's figure as a table: one row per tile, one column per panel, colour bars
    under the column titles."""
    out = [
        '<p class="note">All probability maps share one colour scale (0 to 1). Tiles labelled '
        "unchanged get an all-background pseudo label whatever the maps show.</p>",
        '<table class="tiles"><tr>',
    ]
    out += [f"<th>{_e(PANELS[k][0])}</th>" for k in columns]
    out.append("</tr><tr>")
    for key in columns:
        bar = figures.get(f"colour_{PANELS[key][1]}")
        out.append(
            f'<td><img class="bar" src="{bar}" alt="colour bar"></td>' if bar else "<td></td>"
        )
    out.append("</tr>")
    for files, row in zip(tiles, report.rows):
        caption = _e(_row_caption(row))
        out.append(f'<tr><td class="caption" colspan="{len(columns)}">{caption}</td></tr><tr>')
        for key in columns:
            if key in files:
                alt = f"{PANELS[key][0]} of tile {row.key}"
                out.append(f'<td><img class="panel" src="{files[key]}" alt="{_e(alt)}"></td>')
            else:
                out.append("<td></td>")
        out.append("</tr>")
    out.append("</table>")
    return "\n".join(out)


def _selection_text(report: TrainingReport) -> str:
    lines = []
    for name, sel in (
        ("Teacher + student", report.kd_selection),
        ("Detector", report.cd_selection),
    ):
        if sel:
            value = sel.get("value")
            shown = f" = {value:.4f}" if isinstance(value, (int, float)) else ""
            lines.append(f"{name}: kept epoch {sel.get('epoch')} by {sel.get('criterion')}{shown}.")
    return f'<p class="note">{_e(" ".join(lines))}</p>' if lines else ""


def _threshold_text(threshold: Optional[dict]) -> str:
    if not threshold:
        return (
            '<p class="note">Not chosen in this run: `kdmsi pseudo-labels` (or `kdmsi train`) '
            "chooses it from the student's MSI maps.</p>"
        )
    value, method = threshold["value"], threshold.get("method", "")
    text = f"Threshold <b>{value:.3f}</b> ({_e(method)}). "
    how = {
        "auto": "The larger of Otsu's threshold of the MSI probabilities on tiles labelled "
        "changed and a high percentile of those on tiles labelled unchanged (where every pixel "
        "is background): no pixel truth is used.",
        "auto (Otsu only)": "Otsu's threshold of the MSI probabilities on tiles labelled changed "
        "(no tile was labelled unchanged).",
        "otsu": "Otsu's threshold of the MSI probabilities on tiles labelled changed.",
        "unchanged-quantile": "A high percentile of the MSI probabilities on tiles labelled "
        "unchanged.",
        "explicit": "Given by the user.",
    }.get(method, "")
    details = []
    if threshold.get("otsu_changed") is not None:
        details.append(f"Otsu on changed tiles: {threshold['otsu_changed']:.3f}")
    if threshold.get("unchanged_quantile") is not None:
        q = 100 * (threshold.get("quantile") or 0)
        details.append(
            f"{q:g}th percentile on unchanged tiles: {threshold['unchanged_quantile']:.3f}"
        )
    extra = f" ({'; '.join(details)})" if details else ""
    return f"<p>{text}{_e(how)}{_e(extra)}</p>"


def _metrics_table(rows: dict[str, dict]) -> str:
    head = "".join(f"<th>{c} %</th>" for c in METRIC_COLUMNS)
    out = [f"<table><tr><th>method</th>{head}<th>threshold</th></tr>"]
    for name, row in rows.items():
        cells = "".join(
            f"<td>{100 * row[c]:.2f}</td>" if c in row else "<td></td>" for c in METRIC_COLUMNS
        )
        t = row.get("threshold")
        t_text = f"{t:.3f} ({row.get('threshold_method', '')})" if t is not None else ""
        out.append(f"<tr><td>{_e(name)}</td>{cells}<td>{_e(t_text)}</td></tr>")
    out.append("</table>")
    return "\n".join(out)
