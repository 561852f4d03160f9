"""The training report's images (matplotlib, no pyplot): loss curves, threshold histograms,
colour bars, and the sample tiles' panels.

Each function writes one PNG file. pyplot is never imported, so drawing does not touch a GUI
(e.g. QGIS's Qt event loop) and needs no display. Panels are plain images (colour-mapped
arrays at their own pixel size): the page lays them out, so no figure is drawn per tile.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..inference.thresholds import ProbabilityHistograms

PROBABILITY_CMAP = "magma"
# Masks: 0 no change (black), 1 change (white), 255 not scored / unknown (grey).
MASK_COLOURS = ("#000000", "#ffffff", "#7f7f7f")
DPI = 80
PANEL_INCHES = 2.1
HIST_PLOT_BINS = 100


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _curve(ax, steps: Sequence[dict], history: Sequence[dict], key: str, label: str, colour):
    """Per-step values (thin) and per-epoch means (markers) of `key` against the epoch."""
    if steps:
        ax.plot(
            [s["epoch"] for s in steps],
            [s[key] for s in steps],
            color=colour,
            alpha=0.35,
            linewidth=0.8,
        )
    epoch_key = f"train_{key}"
    points = [(h["epoch"], h[epoch_key]) for h in history if epoch_key in h]
    if points:
        ax.plot(*zip(*points), "o-", color=colour, label=f"{label} (epoch mean)", markersize=4)
    elif steps:
        ax.plot([], [], color=colour, label=label)


def _mark_selection(ax, selection: Optional[dict]) -> None:
    if selection and selection.get("epoch"):
        ax.axvline(
            selection["epoch"],
            color="#2ca02c",
            linestyle="--",
            linewidth=1,
            label=f"kept: epoch {selection['epoch']}",
        )


def loss_figure(
    path: Path,
    kd_history: Sequence[dict] = (),
    kd_steps: Sequence[dict] = (),
    kd_selection: Optional[dict] = None,
    cd_history: Sequence[dict] = (),
    cd_steps: Sequence[dict] = (),
    cd_selection: Optional[dict] = None,
) -> bool:
    """Loss curves: teacher (classification BCE), student (distillation MSE), detector (CE).

    Held-out / validation values are drawn on the panel of the network they select. Returns
    False (and writes nothing) when there is no history at all.
    """
    panels = []
    if kd_history or kd_steps:
        panels += ["teacher", "student"]
    if cd_history or cd_steps:
        panels.append("detector")
    if not panels:
        return False
    fig = _figure(4.2 * len(panels), 3.2)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, name in zip(axes, panels):
        if name == "teacher":
            _curve(ax, kd_steps, kd_history, "cls", "train L_cls", "#1f77b4")
            key = "heldout_teacher_cls_loss"
            held = [(h["epoch"], h[key]) for h in kd_history if h.get(key) is not None]
            if held:
                ax.plot(*zip(*held), "s--", color="#d62728", label="held-out L_cls", ms=4)
            _mark_selection(ax, kd_selection)
            ax.set_title("teacher: classification loss (BCE)")
        elif name == "student":
            _curve(ax, kd_steps, kd_history, "kd", "train L_kd", "#ff7f0e")
            _validation(ax, kd_history, "val_change_iou", "val. student cIoU")
            _mark_selection(ax, kd_selection)
            ax.set_title("student: distillation loss (MSE to CAM)")
        else:
            _curve(ax, cd_steps, cd_history, "ce", "train CE", "#9467bd")
            _validation(ax, cd_history, "val_change_iou", "val. detector cIoU")
            _mark_selection(ax, cd_selection)
            ax.set_title("detector: cross-entropy on pseudo labels")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    fig.savefig(path)
    return True


def _validation(ax, history: Sequence[dict], key: str, label: str) -> None:
    points = [(h["epoch"], h[key]) for h in history if h.get(key) is not None]
    if not points:
        return
    twin = ax.twinx()
    twin.plot(*zip(*points), "s--", color="#2ca02c", label=label, markersize=4)
    twin.set_ylim(0, 1)
    twin.set_ylabel(label, fontsize=8)
    twin.legend(fontsize=7, loc="center right")


def threshold_figure(
    path: Path, histograms: ProbabilityHistograms, threshold: Optional[dict]
) -> None:
    """Histograms of the MSI probability on tiles labelled changed / unchanged (pixel share
    per bin, log scale) with the chosen threshold and its candidates as vertical lines."""
    fig = _figure(6.4, 3.2)
    ax = fig.subplots()
    edges = np.linspace(0.0, 1.0, HIST_PLOT_BINS + 1)
    for counts, label, colour in (
        (histograms.changed, "tiles labelled changed", "#d62728"),
        (histograms.unchanged, "tiles labelled unchanged", "#1f77b4"),
    ):
        coarse = counts.reshape(HIST_PLOT_BINS, -1).sum(axis=1).astype(float)
        if coarse.sum() > 0:
            share = coarse / coarse.sum()
            ax.stairs(share, edges, color=colour, label=f"{label} ({int(coarse.sum()):,} px)")
    if threshold:
        lines = [
            (threshold.get("otsu_changed"), "Otsu on changed tiles", ":", "#ff7f0e"),
            (
                threshold.get("unchanged_quantile"),
                f"{100 * (threshold.get('quantile') or 0):g}th pct. on unchanged tiles",
                "-.",
                "#17becf",
            ),
            (threshold.get("value"), f"chosen: {threshold['value']:.3f}", "-", "#2ca02c"),
        ]
        for value, label, style, colour in lines:
            if value is not None:
                ax.axvline(value, linestyle=style, color=colour, linewidth=1.5, label=label)
    ax.set_yscale("log")
    ax.set_xlim(0, 1)
    ax.set_xlabel("student + MSI change probability")
    ax.set_ylabel("share of pixels")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(path)


def panel_image(path: Path, image: np.ndarray, kind: str) -> None:
    """Write one panel as a PNG at its own pixel size (no axes, no text; fast).

    kind ``rgb``: uint8 [H, W, 3]; ``prob``: float [H, W] in [0, 1], coloured with
    `PROBABILITY_CMAP`; ``mask``: uint8 [H, W] 0 / 1 / 255 coloured with `MASK_COLOURS`.
    """
    from matplotlib import colormaps
    from matplotlib.colors import to_rgb
    from matplotlib.image import imsave

    if kind == "rgb":
        rgb = np.asarray(image, np.uint8)
    elif kind == "prob":
        rgba = colormaps[PROBABILITY_CMAP](np.clip(image, 0.0, 1.0), bytes=True)
        rgb = rgba[..., :3]
    else:
        palette = np.array([to_rgb(c) for c in MASK_COLOURS]) * 255
        codes = np.where(image == 1, 1, np.where(image == 0, 0, 2))
        rgb = palette[codes].astype(np.uint8)
    imsave(path, np.ascontiguousarray(rgb), format="png")


def colour_bar_figure(path: Path, kind: str) -> None:
    """A small horizontal colour bar: the probability scale (``prob``) or the mask legend."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import BoundaryNorm, ListedColormap, Normalize
    from matplotlib.figure import Figure

    fig = Figure(figsize=(PANEL_INCHES, 0.55), dpi=DPI)
    cax = fig.add_axes((0.08, 0.55, 0.84, 0.35))
    if kind == "prob":
        mappable = ScalarMappable(Normalize(0.0, 1.0), colormaps[PROBABILITY_CMAP])
        ticks, labels = [0.0, 0.25, 0.5, 0.75, 1.0], ["0", ".25", ".5", ".75", "1"]
    else:
        norm = BoundaryNorm([-0.5, 0.5, 1.5, 2.5], 3)
        mappable = ScalarMappable(norm, ListedColormap(MASK_COLOURS))
        ticks, labels = [0, 1, 2], ["no change", "change", "not scored"]
    bar = fig.colorbar(mappable, cax=cax, orientation="horizontal")
    bar.set_ticks(ticks)
    bar.set_ticklabels(labels)
    bar.ax.tick_params(labelsize=7, length=2, pad=1)
    fig.savefig(path)
