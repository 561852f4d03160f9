"""The paper's ablation, reproduced: teacher CAM, student, student + MI, student + MSI, pseudo
labels and the final detector, on held-out synthetic scenes (fixed seeds) and on the real
sample pairs in ``../shared/data/real`` (skipped when absent).

Per domain the whole method runs unchanged, from random weights: teacher + student (KD) on the
training tiles' image labels, MSI pseudo labels (threshold chosen without pixel truth),
Siamese DeepLabV3+ on the pseudo labels; then `kdmsi.reports.ablation` scores every map on the
held-out
tiles, and the pseudo labels actually generated are scored against the training tiles' truth.
A training report (`kdmsi.reports.page`) of each domain goes to the work folder.

Writes ``bench/results/ablation.md``. Usage::

    nice -n 5 .venv/bin/python bench/ablation.py [--domains synthetic,real] [--threads 1]
        [--workdir DIR] [--out bench/results/ablation.md]

The synthetic preset is the one under which the method learns within minutes on a 2-core CPU
(see `SYNTHETIC` and the notes written with the table); every setting can be overridden.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from kdmsi.data.pairs import IGNORE_INDEX, PairDataset
from kdmsi.data.synthetic import make_scene, write_tile_dataset
from kdmsi.geo.atomic import atomic_output
from kdmsi.inference.pseudo_labels import generate_pseudo_labels, histograms_from_summary
from kdmsi.inference.thresholds import ThresholdChoice
from kdmsi.metrics.change import ConfusionCounts
from kdmsi.reports.ablation import ABLATION_ROWS, ROW_TITLES, ablation_rows, ablation_statistics
from kdmsi.reports.page import write_training_report
from kdmsi.reports.runs import label_metrics
from kdmsi.reports.tiles import build_report, dataset_truth
from kdmsi.training import CDConfig, KDConfig, train_detector, train_kd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
REAL_DATA = ROOT.parent / "shared" / "data" / "real"
REAL_SETS = ("LEVIR-CD", "WHU-CD", "GZ-CD", "DSIFN-CD")  # the 256 px RGB crops


@dataclass
class Domain:
    """One benchmark domain: data, and the method's training settings."""

    name: str
    tile_size: int
    kd_epochs: int
    kd_lr: float
    cd_epochs: int
    cd_lr: float
    batch_size: int = 8
    backbone: str = "resnet18"
    # synthetic scenes only
    train_scenes: int = 0
    test_scenes: int = 0
    scene_size: int = 0
    pixel_size_m: float = 0.5
    nuisance: bool = True
    change_fraction: float = 0.07


SYNTHETIC = Domain(
    name="synthetic",
    tile_size=128,
    kd_epochs=10,
    kd_lr=0.02,
    cd_epochs=6,
    cd_lr=0.01,
    train_scenes=16,
    test_scenes=6,
    scene_size=256,
    nuisance=False,
)
REAL = Domain(name="real", tile_size=128, kd_epochs=10, kd_lr=0.02, cd_epochs=6, cd_lr=0.01)


def synthetic_data(domain: Domain, work: Path) -> tuple[Path, Path]:
    """Training scenes (seeds 1..n) and held-out scenes (seeds 1000..) as tile datasets."""
    folders = []
    for name, first, count in (
        ("train", 1, domain.train_scenes),
        ("test", 1000, domain.test_scenes),
    ):
        folder = work / name
        scenes = [
            make_scene(
                domain.scene_size,
                domain.scene_size,
                seed=seed,
                pixel_size_m=domain.pixel_size_m,
                nuisance=domain.nuisance,
                change_fraction=domain.change_fraction,
            )
            for seed in range(first, first + count)
        ]
        write_tile_dataset(scenes, folder, tile_size=domain.tile_size)
        folders.append(folder)
    return folders[0], folders[1]


def real_data(work: Path) -> Optional[tuple[Path, Path]]:
    """The 256 px pairs of `REAL_SETS`, every third pair of each set held out (by name order);
    None when the sample data is absent."""
    if not (REAL_DATA / "pairs.csv").is_file():
        return None
    train, test = work / "train", work / "test"
    for root in (train, test):
        for sub in ("A", "B", "label"):
            (root / sub).mkdir(parents=True)
    for dataset in REAL_SETS:
        names = sorted(p.name for p in (REAL_DATA / dataset / "A").glob("*.png"))
        for i, name in enumerate(names):
            target = test if i % 3 == 1 else train
            for sub in ("A", "B", "label"):
                shutil.copy(REAL_DATA / dataset / sub / name, target / sub / f"{dataset}_{name}")
    return train, test


def run_domain(domain: Domain, train_root: Path, test_root: Path, work: Path) -> dict:
    """Train the whole method on `train_root`, score it on `test_root`; returns the results."""
    timings = {}
    start = time.perf_counter()
    train = PairDataset(train_root, tile_size=domain.tile_size)
    test = PairDataset(test_root, tile_size=domain.tile_size)
    kd_config = KDConfig(
        backbone=domain.backbone,
        epochs=domain.kd_epochs,
        lr=domain.kd_lr,
        batch_size=domain.batch_size,
        seed=0,
    )
    print(f"[{domain.name}] KD on {len(train)} tiles ({train.labels.count(1)} changed)", flush=True)
    kd = train_kd(train, kd_config)
    timings["KD"] = time.perf_counter() - start
    t = time.perf_counter()
    pseudo_dir = work / "pseudo"
    pseudo = generate_pseudo_labels(kd.student, train, pseudo_dir, threshold="auto")
    timings["pseudo labels"] = time.perf_counter() - t
    print(f"[{domain.name}] pseudo labels: {pseudo['threshold_description']}", flush=True)
    t = time.perf_counter()
    train_pseudo = PairDataset(
        train_root, tile_size=domain.tile_size, label_dir=pseudo_dir / "label"
    )
    cd_config = CDConfig(
        backbone=domain.backbone,
        epochs=domain.cd_epochs,
        lr=domain.cd_lr,
        batch_size=domain.batch_size,
        seed=0,
    )
    cd = train_detector(train_pseudo, cd_config)
    timings["detector"] = time.perf_counter() - t
    t = time.perf_counter()
    choice = ThresholdChoice(pseudo["threshold"]["value"], "chosen on the training tiles")
    stats = ablation_statistics(test, kd.teacher, kd.student, cd.model)
    rows = ablation_rows(stats, choice)
    pseudo_train = label_metrics(train_pseudo, train).metrics()
    timings["evaluation"] = time.perf_counter() - t
    report = build_report(
        train_pseudo,
        f"KD-MSI ablation benchmark: {domain.name}",
        kd={"history": kd.history, "steps": kd.steps, "selection": kd.selection},
        cd={"history": cd.history, "steps": cd.steps, "selection": cd.selection},
        teacher=kd.teacher,
        student=kd.student,
        detector=cd.model,
        pseudo=lambda i: train_pseudo.read_tile(i)[2],
        truth=dataset_truth(train),
        threshold=pseudo["threshold"],
        histograms=histograms_from_summary(pseudo),
        metrics={
            "Held-out tiles": rows,
            "Pseudo labels on the training tiles": {"pseudo labels": pseudo_train},
        },
        settings=asdict(domain),
    )
    write_training_report(work / "report", report, overwrite=True)
    timings["total"] = time.perf_counter() - start
    return {
        "domain": asdict(domain),
        "train_tiles": len(train),
        "train_changed": train.labels.count(1),
        "test_tiles": len(test),
        "test_changed": test.labels.count(1),
        "rows": rows,
        "baselines": trivial_baselines(test),
        "pseudo_train": pseudo_train,
        "pseudo_threshold": pseudo["threshold"],
        "kd_selection": kd.selection,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "report": str(work / "report" / "index.html"),
    }


def trivial_baselines(dataset: PairDataset) -> dict[str, float]:
    """IoU of two maps that need no network: every pixel changed, and every pixel of the
    tiles whose image label is changed (the image labels painted as masks)."""
    everything, by_label = ConfusionCounts(), ConfusionCounts()
    for i, label in enumerate(dataset.labels):
        truth = dataset.read_tile(i)[2]
        scored = truth != IGNORE_INDEX
        everything.update(np.ones(truth.shape, bool), truth == 1, scored)
        by_label.update(np.full(truth.shape, label == 1), truth == 1, scored)
    return {
        "every pixel changed": everything.metrics()["cIoU"],
        "tiles labelled changed, all pixels": by_label.metrics()["cIoU"],
    }


def ordering(rows: dict, key: str) -> dict[str, bool]:
    """The paper's claims on one metric: teacher CAM < student < student + MSI; MI <= student."""
    v = {k: rows[k][key] for k in ("teacher-cam", "student", "mi", "msi")}
    return {
        "teacher CAM < student": v["teacher-cam"] < v["student"],
        "student < student + MSI": v["student"] < v["msi"],
        "student + MI not better than student": v["mi"] <= v["student"],
    }


def markdown(results: list[dict], command: str) -> str:
    """All domains' tables as one Markdown document."""
    out = [
        "# KD-MSI ablation (bench/ablation.py)",
        "",
        f"Reproduce: `{command}`",
        "",
        "IoU = change IoU (cIoU), F1 = mean of the change and background F1, OA = overall "
        "accuracy, in %. Maps are cut at a threshold chosen without pixel truth (as `kdmsi "
        "evaluate`), the pseudo labels at the threshold `kdmsi pseudo-labels` chose on the "
        "training tiles (tiles labelled unchanged are all background), the detector at its "
        "argmax. *best IoU* is the IoU at the best threshold (found with the truth): it "
        "separates the quality of a map from the choice of its threshold.",
    ]
    for r in results:
        d = r["domain"]
        out += ["", f"## {d['name']}", ""]
        if d["name"] == "synthetic":
            out.append(
                f"{d['train_scenes']} training and {d['test_scenes']} held-out scenes of "
                f"{d['scene_size']} px ({d['pixel_size_m']} m pixels, nuisance changes "
                f"{'on' if d['nuisance'] else 'off'}, change fraction {d['change_fraction']}), "
                f"tiles of {d['tile_size']} px."
            )
        else:
            out.append(
                f"256 px pairs of {', '.join(REAL_SETS)}: every third pair of each set held out; "
                f"tiles of {d['tile_size']} px."
            )
        out.append(
            f"Training: {r['train_tiles']} tiles ({r['train_changed']} changed); held out: "
            f"{r['test_tiles']} tiles ({r['test_changed']} changed). {d['backbone']} from random "
            f"weights, KD {d['kd_epochs']} epochs (lr {d['kd_lr']}), detector {d['cd_epochs']} "
            f"epochs (lr {d['cd_lr']}), batch {d['batch_size']}, seed 0. KD model kept: epoch "
            f"{r['kd_selection']['epoch']} by {r['kd_selection']['criterion']}."
        )
        out += [
            "",
            "| method | IoU | F1 | OA | threshold | best IoU (at) |",
            "|---|---:|---:|---:|---|---:|",
        ]
        for kind in ABLATION_ROWS:
            row = r["rows"].get(kind)
            if row is None:
                continue
            out.append(
                f"| {ROW_TITLES[kind]} | {100 * row['cIoU']:.2f} | {100 * row['F1']:.2f} | "
                f"{100 * row['OA']:.2f} | {row['threshold']:.3f} ({row['threshold_method']}) | "
                f"{100 * row['best_cIoU']:.2f} ({row['best_threshold']:.2f}) |"
            )
        p = r["pseudo_train"]
        out += [
            "",
            "Reference maps without a network, on the held-out tiles: "
            + ", ".join(f"{k}: IoU {100 * v:.2f}" for k, v in r["baselines"].items())
            + ".",
            "",
            f"Pseudo labels as generated, on the training tiles: IoU {100 * p['cIoU']:.2f}, "
            f"F1 {100 * p['F1']:.2f}, OA {100 * p['OA']:.2f} (threshold "
            f"{r['pseudo_threshold']['value']:.3f}, {r['pseudo_threshold']['method']}).",
            "",
            "Paper's ordering: "
            + "; ".join(
                f"{claim}: at the chosen threshold {'yes' if a else 'no'}, at the best "
                f"threshold {'yes' if b else 'no'}"
                for (claim, a), b in zip(
                    ordering(r["rows"], "cIoU").items(), ordering(r["rows"], "best_cIoU").values()
                )
            )
            + ".",
            "",
            "Time (s): " + ", ".join(f"{k} {v}" for k, v in r["timings_s"].items()) + ".",
        ]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--domains", default="synthetic,real")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    parser.add_argument("--workdir", type=Path, help="keep data, pseudo labels, reports here")
    parser.add_argument("--out", type=Path, default=RESULTS / "ablation.md")
    for field in (
        "kd_epochs",
        "cd_epochs",
        "train_scenes",
        "test_scenes",
        "scene_size",
        "tile_size",
    ):
        parser.add_argument(f"--{field.replace('_', '-')}", type=int)
    parser.add_argument("--kd-lr", type=float)
    parser.add_argument("--nuisance", type=int, choices=(0, 1), help="synthetic nuisance changes")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {
        k: v for k, v in vars(args).items() if v is not None and k in Domain.__dataclass_fields__
    }
    if "nuisance" in overrides:
        overrides["nuisance"] = bool(overrides["nuisance"])
    work = args.workdir or Path(tempfile.mkdtemp(prefix="kdmsi_ablation_"))
    results = []
    for name in [d.strip() for d in args.domains.split(",") if d.strip()]:
        folder = work / name
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        if name == "synthetic":
            domain = replace(SYNTHETIC, **overrides)
            data = synthetic_data(domain, folder)
        elif name == "real":
            real_overrides = {
                k: v
                for k, v in overrides.items()
                if k in ("kd_epochs", "cd_epochs", "kd_lr", "tile_size")
            }
            domain = replace(REAL, **real_overrides)
            data = real_data(folder)
            if data is None:
                print(f"[real] skipped: no sample data at {REAL_DATA}", flush=True)
                continue
        else:
            parser.error(f"unknown domain {name!r}")
        result = run_domain(domain, *data, folder)
        results.append(result)
        print(json.dumps({k: result[k] for k in ("timings_s", "report")}), flush=True)
    command = "nice -n 5 .venv/bin/python bench/ablation.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    text = markdown(results, command.strip())
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(args.out, overwrite=True) as tmp:
        tmp.write_text(text, encoding="utf-8")
    print(f"written {args.out}; work folder {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
