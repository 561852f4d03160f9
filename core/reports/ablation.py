"""The paper's ablation on any dataset with pixel masks: teacher CAM, student, student + MI,
student + MSI, pseudo labels and the final detector, scored by IoU, F1 and OA.

All maps come from one pass over the data (MI and MSI share nothing, but the pseudo-label row
reuses the MSI maps). The pseudo-label row is what `kdmsi pseudo-labels` would write for these
tiles: MSI above the pseudo-label threshold on tiles labelled changed, all background on tiles
labelled unchanged (the image labels are the weak labels the method trains on). Every other
threshold is chosen without pixel truth as in `kdmsi evaluate`; the best IoU over thresholds
(which needs the truth) is reported beside it to separate map quality from threshold choice.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ..data.pairs import PairDataset
from ..geo.atomic import atomic_output, check_output_target
from ..inference.maps import (
    MapStatistics,
    collect_map_statistics,
    map_function,
    metrics_from_statistics,
)
from ..inference.msi import DEFAULT_SCALES, multiscale_maps
from ..inference.thresholds import ThresholdChoice, choose_threshold
from ..progress import CancelCheck, ProgressCallback

ABLATION_ROWS = ("teacher-cam", "student", "mi", "msi", "pseudo-labels", "detector")
ROW_TITLES = {
    "teacher-cam": "teacher CAM",
    "student": "student",
    "mi": "student + MI",
    "msi": "student + MSI",
    "pseudo-labels": "pseudo labels",
    "detector": "final detector",
}
BEST_THRESHOLD_STEP = 0.01

log = logging.getLogger(__name__)


def ablation_statistics(
    dataset: PairDataset,
    teacher: torch.nn.Module,
    student: torch.nn.Module,
    detector: Optional[torch.nn.Module] = None,
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = True,
    device: Union[str, torch.device] = "cpu",
    batch_size: int = 4,
    progress: Optional[ProgressCallback] = None,
    cancelled: Optional[CancelCheck] = None,
) -> dict[str, MapStatistics]:
    """`MapStatistics` of every ablation row over `dataset` (which needs pixel masks).

    The ``pseudo-labels`` statistics are those of the MSI map times the tile's image label
    (tiles without a label keep their MSI map).
    """
    shared = _SharedMultiscale(student, scales, flip)
    functions = {
        "teacher-cam": map_function("teacher-cam", teacher),
        "student": map_function("student", student),
        "mi": lambda pre, post: shared(pre, post)[1],
        "msi": lambda pre, post: shared(pre, post)[0],
    }
    if detector is not None:
        functions["detector"] = map_function("detector", detector)
    pseudo = MapStatistics()

    def add_pseudo(batch: dict, maps: dict) -> None:
        masks = batch["mask"].numpy()
        for i, value in enumerate(batch["label"].tolist()):
            label = None if value < 0 else int(value)
            prob = maps["msi"][i, 0].numpy()
            pseudo.add(prob * (0.0 if label == 0 else 1.0), masks[i], label)

    stats = collect_map_statistics(
        dataset, functions, torch.device(device), batch_size, progress, cancelled, add_pseudo
    )
    stats["pseudo-labels"] = pseudo
    return {k: stats[k] for k in ABLATION_ROWS if k in stats}


class _SharedMultiscale:
    """MSI and MI of the last batch seen, so the two rows cost one set of forward passes."""

    def __init__(self, model: torch.nn.Module, scales: Sequence[float], flip: bool):
        self.model, self.scales, self.flip = model, scales, flip
        self._inputs: Optional[tuple] = None
        self._maps: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    def __call__(self, pre: torch.Tensor, post: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._inputs is None or self._inputs[0] is not pre or self._inputs[1] is not post:
            self._maps = multiscale_maps(self.model, pre, post, self.scales, self.flip)
            self._inputs = (pre, post)
        return self._maps


def ablation_rows(
    stats: dict[str, MapStatistics],
    pseudo_threshold: Optional[ThresholdChoice] = None,
    threshold: Union[str, float] = "auto",
    detector_threshold: Optional[ThresholdChoice] = None,
) -> dict[str, dict]:
    """Metrics per ablation row (keys of `ABLATION_ROWS` present in `stats`).

    Maps are cut at a threshold chosen without pixel truth (`threshold`, as `kdmsi evaluate`),
    the detector at ``detector_threshold`` (the one stored with it; default: its argmax), the
    pseudo labels at `pseudo_threshold` (default: chosen
    from this data's MSI maps like `kdmsi pseudo-labels --threshold auto`). Each row adds
    ``best_cIoU`` / ``best_threshold``: the best IoU over thresholds 0.01..0.99 (uses truth).
    """
    maps = {k: v for k, v in stats.items() if k != "pseudo-labels"}
    fixed = {"detector": detector_threshold} if detector_threshold is not None else None
    rows = metrics_from_statistics(maps, threshold, fixed)
    if "pseudo-labels" in stats:
        choice = pseudo_threshold
        if choice is None:
            choice = choose_threshold(stats["msi"].by_image_label, "auto")
            choice = ThresholdChoice(choice.value, f"{choice.method}, chosen on this data")
        values = stats["pseudo-labels"].counts_at(choice.value).metrics()
        rows["pseudo-labels"] = {
            **values,
            "threshold": choice.value,
            "threshold_method": choice.method,
        }
    for kind, st in stats.items():
        best, best_t = -1.0, None
        for t in np.arange(BEST_THRESHOLD_STEP, 1.0, BEST_THRESHOLD_STEP):
            value = st.counts_at(float(t)).metrics()["cIoU"]
            if value > best:
                best, best_t = value, round(float(t), 2)
        rows[kind]["best_cIoU"], rows[kind]["best_threshold"] = best, best_t
    return {k: rows[k] for k in ABLATION_ROWS if k in rows}


def format_ablation(rows: dict[str, dict], markdown: bool = False) -> str:
    """The table as fixed-width text or Markdown: IoU, F1, OA, FP, FN in %, the threshold and
    how it was chosen, and the best IoU over thresholds."""
    head = ["method", "IoU", "F1", "OA", "FP", "FN", "threshold", "best IoU (at)"]
    lines = []
    for kind, row in rows.items():
        lines.append(
            [
                ROW_TITLES.get(kind, kind),
                *(f"{100 * row[m]:.2f}" for m in ("cIoU", "F1", "OA", "FP", "FN")),
                f"{row['threshold']:.3f} ({row['threshold_method']})",
                f"{100 * row['best_cIoU']:.2f} ({row['best_threshold']:.2f})",
            ]
        )
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * 5 + "---|---:|"]
        out += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(str(r[i])) for r in [head, *lines]) for i in range(len(head))]
    fmt = [f"{{:<{w}}}" if i in (0, 6) else f"{{:>{w}}}" for i, w in enumerate(widths)]
    out = ["  ".join(f.format(c) for f, c in zip(fmt, head))]
    out.append("-" * len(out[0]))
    out += ["  ".join(f.format(c) for f, c in zip(fmt, line)) for line in lines]
    return "\n".join(out)


def save_ablation(
    folder: Union[str, Path], rows: dict[str, dict], info: dict, overwrite: bool = False
) -> tuple[Path, Path]:
    """Write `folder/ablation.md` (the table and `info` as notes) and `folder/ablation.json`
    ({"rows", "info"}), each atomically; the folder is created when missing."""
    folder = Path(folder)
    folder.mkdir(exist_ok=True)
    md, js = folder / "ablation.md", folder / "ablation.json"
    for path in (md, js):
        check_output_target(path, overwrite)
    notes = "\n".join(f"- {k}: {v}" for k, v in info.items())
    text = f"# KD-MSI ablation\n\n{format_ablation(rows, markdown=True)}\n\n{notes}\n"
    with atomic_output(md, overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    with atomic_output(js, overwrite) as tmp:
        tmp.write_text(json.dumps({"rows": rows, "info": info}, indent=2), encoding="utf-8")
    return md, js


def ablation_models(model_paths: Sequence[Union[str, Path]]) -> tuple[str, Optional[str]]:
    """(the KD model file, the detector file or None) among ``model_paths``, by their kind.

    Raises:
        ValueError: no KD model among them.
    """
    from ..models.checkpoint import read_checkpoint

    kd_path = detector_path = None
    for path in model_paths:
        if read_checkpoint(path)["metadata"]["kind"] == "kd":
            kd_path = str(path)
        else:
            detector_path = str(path)
    if kd_path is None:
        raise ValueError("--ablation needs the KD model (--model kd.kdmsi), plus the detector")
    return kd_path, detector_path


def pseudo_label_threshold(
    given: Optional[float],
    detector_meta: Optional[dict],
    detector_path: Optional[str],
    pseudo_labels: Optional[Union[str, Path]],
) -> tuple[Optional[ThresholdChoice], Optional[str]]:
    """The pseudo-label row's threshold and where it came from: ``given``, else the one stored
    with the detector, else the ``pseudo_labels.json`` beside a pseudo-label folder, else
    (None, None): chosen on the data (auto)."""
    if given is not None:
        return ThresholdChoice(given, "given"), "--pseudo-threshold"
    stored = ((detector_meta or {}).get("training") or {}).get("pseudo_labels") or {}
    if (stored.get("threshold") or {}).get("value") is not None:
        return ThresholdChoice(stored["threshold"]["value"], "stored with the detector"), str(
            detector_path
        )
    if pseudo_labels:
        info = Path(pseudo_labels).parent / "pseudo_labels.json"
        if info.is_file():
            value = json.loads(info.read_text())["threshold"]["value"]
            return ThresholdChoice(value, "from pseudo_labels.json"), str(info)
    return None, None


def evaluate_ablation(
    model_paths: Sequence[Union[str, Path]],
    data: Union[str, Path],
    out: Optional[Union[str, Path]] = None,
    *,
    scales: Sequence[float] = DEFAULT_SCALES,
    threshold: Union[str, float] = "auto",
    pseudo_threshold: Optional[float] = None,
    pseudo_labels: Optional[Union[str, Path]] = None,
    device: str = "auto",
    batch_size: int = 4,
    overwrite: bool = False,
    progress: Optional[ProgressCallback] = None,
) -> dict[str, dict]:
    """The paper's ablation table of a KD model file (and a detector's) among ``model_paths``
    on the tile dataset ``data`` (with pixel masks); saved to ``out`` (`save_ablation`, checked
    before the long pass) when given. Thresholds as `ablation_rows` and
    `pseudo_label_threshold`.

    Raises:
        ValueError: no KD model, or ``data`` without masks. FileExistsError, FileNotFoundError:
            ``out`` cannot take the table.
    """
    from ..inference.msi import pick_device
    from ..models.checkpoint import load_checkpoint
    from ..runtime.load import stored_threshold

    torch_device = pick_device(device)
    kd_path, detector_path = ablation_models(model_paths)
    if out is not None:
        out = Path(out)
        if not out.parent.is_dir():
            raise FileNotFoundError(f"folder {out.parent} does not exist; create it first")
        for name in ("ablation.md", "ablation.json"):  # answer before the long pass
            if (out / name).exists() and not overwrite:
                raise FileExistsError(f"{out / name} exists; choose another --out or --overwrite")
    teacher, meta = load_checkpoint(kd_path, role="teacher", device=torch_device)
    student, _ = load_checkpoint(kd_path, role="student", device=torch_device)
    detector = det_meta = detector_threshold = None
    if detector_path:
        detector, det_meta = load_checkpoint(detector_path, device=torch_device)
        detector_threshold = stored_threshold(det_meta)
    pseudo, pseudo_source = pseudo_label_threshold(
        pseudo_threshold, det_meta, detector_path, pseudo_labels
    )
    dataset = PairDataset.for_model(data, meta)
    if not dataset.has_masks:
        raise ValueError(f"{data} has no label/ masks for every image; cannot evaluate")
    stats = ablation_statistics(
        dataset, teacher, student, detector, scales, device=torch_device,
        batch_size=batch_size, progress=progress,
    )  # fmt: skip
    rows = ablation_rows(stats, pseudo, threshold, detector_threshold)
    if out is not None:
        info = {
            "data": str(Path(data).resolve()),
            "tiles": len(dataset),
            "kd_model": str(Path(kd_path).resolve()),
            "detector": str(Path(detector_path).resolve()) if detector_path else None,
            "scales": list(scales),
            "map_threshold": threshold,
            "pseudo_label_threshold_source": pseudo_source or "chosen on this data (auto)",
        }
        md, js = save_ablation(out, rows, info, overwrite)
        log.info("ablation table saved to %s and %s", md, js)
    return rows
