"""Sample tiles for the training report: which tiles, and every map of the method on them.

Works on any dataset whose items look like `kdmsi.data.pairs.PairDataset`'s (``pre``/``post``
normalised [C, T, T], ``label``, ``key``) and that has ``labels`` and ``normalisation``, e.g.
`PairDataset` and `kdmsi.data.tagged.RasterTileDataset`.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from ..data.pairs import IGNORE_INDEX, Normalisation, subset
from ..inference.maps import map_function
from ..inference.msi import DEFAULT_SCALES
from .page import PANELS, TileRow, TrainingReport

DEFAULT_SAMPLE_TILES = 6
MaskSource = Callable[[int], Optional[np.ndarray]]


def sample_tiles(
    labels: Sequence[Optional[int]], count: int = DEFAULT_SAMPLE_TILES, seed: int = 0
) -> list[int]:
    """Indices (sorted) of up to `count` tiles: two thirds labelled changed, the rest labelled
    unchanged; unlabelled tiles fill in when a class runs short. Reproducible for a seed."""
    rng = np.random.default_rng(seed)
    groups = {cls: [i for i, label in enumerate(labels) if label == cls] for cls in (1, 0, None)}
    want = {1: int(np.ceil(count * 2 / 3)), 0: count - int(np.ceil(count * 2 / 3))}
    chosen: list[int] = []
    for cls in (1, 0):
        pool = groups[cls]
        take = min(want[cls], len(pool))
        chosen += [int(i) for i in rng.choice(pool, size=take, replace=False)] if take else []
    rest = [i for g in groups.values() for i in g if i not in set(chosen)]
    if len(chosen) < count and rest:
        extra = min(count - len(chosen), len(rest))
        chosen += [int(i) for i in rng.choice(rest, size=extra, replace=False)]
    return sorted(chosen)


def display_rgb(image: torch.Tensor, normalisation: Normalisation) -> np.ndarray:
    """Undo the normalisation of a network input [C, H, W] -> uint8 [H, W, 3] for display.

    The first three bands are shown as RGB; one or two bands are shown as grey (band 1).
    """
    x = image.detach().cpu().float().numpy()
    mean = np.asarray(normalisation.mean, np.float32)[:, None, None]
    std = np.asarray(normalisation.std, np.float32)[:, None, None]
    values = np.clip((x * std + mean) * 255.0, 0, 255).astype(np.uint8)
    rgb = values[:3] if values.shape[0] >= 3 else np.repeat(values[:1], 3, axis=0)
    return np.ascontiguousarray(rgb.transpose(1, 2, 0))


def dataset_truth(dataset) -> Optional[MaskSource]:
    """Truth masks of a `PairDataset` whose `label/` holds pixel truth (None when it has none).

    Do not use it on a dataset whose masks are pseudo labels (e.g. `train-cd`'s).
    """
    if not hasattr(dataset, "read_tile") or not any(
        m is not None for m in getattr(dataset, "masks", {}).values()
    ):
        return None

    def truth(index: int) -> Optional[np.ndarray]:
        if dataset.masks[dataset.tiles[index].name] is None:
            return None
        return dataset.read_tile(index)[2]

    return truth


@torch.no_grad()
def tile_rows(
    dataset,
    indices: Sequence[int],
    teacher: Optional[torch.nn.Module] = None,
    student: Optional[torch.nn.Module] = None,
    detector: Optional[torch.nn.Module] = None,
    pseudo: Optional[MaskSource] = None,
    truth: Optional[MaskSource] = None,
    scales: Sequence[float] = DEFAULT_SCALES,
    device: Union[str, torch.device] = "cpu",
    batch_size: int = 2,
) -> list[TileRow]:
    """The report rows of tiles `indices` of `dataset`: images, truth and pseudo label when
    known, and the maps of the models given (teacher CAM; student and student + MSI; detector).

    Models are put in eval mode on `device`. Pseudo labels and truth come from callables
    index -> uint8 [T, T] (0 / 1 / 255) or None.
    """
    device = torch.device(device)
    functions = {}
    for kind, model in (
        ("teacher-cam", teacher),
        ("student", student),
        ("msi", student),
        ("detector", detector),
    ):
        if model is not None:
            model.to(device).eval()
            functions[kind] = map_function(kind, model, scales)
    items = subset(dataset, indices, augment=False)
    rows: list[TileRow] = []
    for start in range(0, len(items), batch_size):
        batch = [items[i] for i in range(start, min(start + batch_size, len(items)))]
        pre = torch.stack([b["pre"] for b in batch]).to(device)
        post = torch.stack([b["post"] for b in batch]).to(device)
        maps = {k: fn(pre, post).float().cpu().numpy()[:, 0] for k, fn in functions.items()}
        for j, item in enumerate(batch):
            index = indices[start + j]
            label = float(item["label"])
            panels: dict[str, np.ndarray] = {
                "pre": display_rgb(item["pre"], dataset.normalisation),
                "post": display_rgb(item["post"], dataset.normalisation),
            }
            known_truth = truth(index) if truth else None
            if known_truth is not None:
                panels["truth"] = _mask(known_truth)
            for kind, values in maps.items():
                panels[kind] = np.clip(values[j], 0.0, 1.0)
            known_pseudo = pseudo(index) if pseudo else None
            if known_pseudo is not None:
                panels["pseudo-label"] = _mask(known_pseudo)
            panels = {k: panels[k] for k in PANELS if k in panels}
            rows.append(TileRow(str(item["key"]), None if label < 0 else int(label), panels))
    return rows


def _mask(mask: np.ndarray) -> np.ndarray:
    """Any mask -> uint8 0 / 1 / 255 (255 kept, other non-zero values are change)."""
    mask = np.asarray(mask)
    out = (mask > 0).astype(np.uint8)
    out[mask == IGNORE_INDEX] = IGNORE_INDEX
    return out


def build_report(
    dataset,
    title: str,
    kd: Optional[dict] = None,
    cd: Optional[dict] = None,
    teacher: Optional[torch.nn.Module] = None,
    student: Optional[torch.nn.Module] = None,
    detector: Optional[torch.nn.Module] = None,
    pseudo: Optional[MaskSource] = None,
    truth: Optional[MaskSource] = None,
    threshold: Optional[dict] = None,
    histograms=None,
    scales: Sequence[float] = DEFAULT_SCALES,
    device: Union[str, torch.device] = "cpu",
    sample_count: int = DEFAULT_SAMPLE_TILES,
    **extra,
) -> TrainingReport:
    """A `TrainingReport` of a run: `kd` / `cd` are {"history", "steps", "selection"} records
    (as the trainers return and checkpoints store them), the rest as in `tile_rows` and
    `TrainingReport`; `extra` holds further `TrainingReport` fields (metrics, settings, notes).
    """
    kd, cd = kd or {}, cd or {}
    indices = sample_tiles(list(dataset.labels), sample_count)
    rows = tile_rows(dataset, indices, teacher, student, detector, pseudo, truth, scales, device)
    return TrainingReport(
        title=title,
        kd_history=list(kd.get("history") or []),
        kd_steps=list(kd.get("steps") or []),
        kd_selection=kd.get("selection"),
        cd_history=list(cd.get("history") or []),
        cd_steps=list(cd.get("steps") or []),
        cd_selection=cd.get("selection"),
        threshold=threshold,
        histograms=histograms,
        rows=rows,
        **extra,
    )
