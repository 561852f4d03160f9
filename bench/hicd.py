"""Quality-robust change detection: HiCD against the direct baseline and feature-MSE distillation.

For each domain (synthetic scenes from `kdmsi.data.synthetic`; the LEVIR-CD pairs of
``../shared/data/real`` when present) and each degradation preset of `kdmsi.training.degrade`, it
trains and scores, on held-out pairs whose after image is degraded by the preset (fixed seeds):

* teacher, clean pairs: the default detector (`kdmsi.recipe`: EfficientNet-Lite0 trunk with
  ImageNet weights, AdamW, frozen batch norms) trained on the clean training pairs' masks,
  scored on the clean test pairs (the upper bound);
* teacher, degraded after image: the same network on the degraded test pairs, not adapted;
* direct on degraded: the student trained on degraded pairs with cross-entropy only (baseline);
* feature-MSE distillation: + position-by-position feature MSE to the teacher's clean-pair
  features (``lambda_feat``);
* HiCD: + self / cross / change / global correlation distillation (`kdmsi.losses.hicd`);
* HiCD ablations (``--ablation-presets``): without the self, cross, global or change-feature
  term.

Within a domain every student has the same initialisation (a new network with the ImageNet
trunk, as the teacher started), tiles, augmentations, degradations, schedule and number of
steps (`kdmsi.training.hicd.train_hicd`), so only the loss differs. The figure is the change
IoU (cIoU, %) over all test pixels; "gap closed" is (HiCD - direct) / (teacher clean - direct).
``--seeds 0,1,2`` trains every student once per seed (initialisation of the new layers, batch
order, training degradations; the teacher and the test degradations stay fixed) and prints
mean ± sd, the run-to-run spread a difference has to beat. ``--tune`` runs the weight search
on validation scenes (seeds 201..) instead. Usage::

    nice -n 5 .venv/bin/python bench/hicd.py [--domains synthetic,real] [--seeds 0,1,2] [--quick]

writes ``bench/results/hicd.md`` (atomically; ``--out`` elsewhere) and prints the same tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from kdmsi import recipe
from kdmsi.data.pairs import PairDataset
from kdmsi.data.synthetic import make_scene, write_tile_dataset
from kdmsi.geo.atomic import atomic_output
from kdmsi.losses.hicd import HiCDLossConfig
from kdmsi.models import SiameseDeepLabV3Plus
from kdmsi.models.checkpoint import load_checkpoint, save_detector
from kdmsi.training import CDConfig, HiCDConfig, train_detector, train_hicd
from kdmsi.training.cd import detector_change_iou
from kdmsi.training.degrade import PRESETS, DegradedPairDataset

log = logging.getLogger("bench.hicd")

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real"
RESULTS = ROOT / "bench" / "results" / "hicd.md"
TEST_DEGRADE_SEED = 1000
# LEVIR-CD 256 px crops that are windows of the LEVIR-CD-1024 training images (SOURCES.md).
LEVIR_OVERLAP = ("test_102_0512_0000", "test_7_0256_0512")
TEACHER_ROW = "teacher, clean pairs (upper bound)"
DIRECT_ROW = "direct on degraded (baseline)"
FEAT_ROW = "feature-MSE distillation"
HICD_ROW = "HiCD"
ABLATIONS = {
    "HiCD - self": {"use_self": False},
    "HiCD - cross": {"use_cross": False},
    "HiCD - global": {"use_global": False},
    "HiCD - change features": {"use_cfd": False},
}


@dataclass(frozen=True)
class Protocol:
    """How one domain's teacher and students are trained."""

    teacher_epochs: int
    student_init: str
    student_epochs: int
    student_lr: float
    student_tiles: Optional[int] = None  # a fixed random subset of the training tiles


@dataclass
class Budget:
    """Sizes of one run of the bench."""

    tile: int = 64
    batch_size: int = recipe.BATCH_SIZE
    synth_train_scenes: int = 4
    synth_test_scenes: int = 6
    synth_size: int = 256
    synthetic: Protocol = Protocol(recipe.CD_EPOCHS, "imagenet", recipe.CD_EPOCHS, recipe.CD_LR)
    real: Protocol = Protocol(recipe.CD_EPOCHS, "imagenet", recipe.CD_EPOCHS, recipe.CD_LR, 128)


QUICK = Budget(
    synth_train_scenes=1,
    synth_test_scenes=1,
    synth_size=128,
    synthetic=Protocol(1, "imagenet", 1, recipe.CD_LR),
    real=Protocol(1, "imagenet", 1, recipe.CD_LR, 16),
)


@dataclass
class Domain:
    name: str
    train: PairDataset
    test: PairDataset
    protocol: Protocol
    description: str


def synthetic_domain(work: Path, budget: Budget, validation: bool = False) -> Domain:
    """Synthetic scenes, 1 m pixels, true masks: seeds 1.. for training, 101.. for testing
    (201.. for validation with `validation`)."""
    split, first = ("val", 201) if validation else ("test", 101)
    folders = {}
    for name, start, count in (
        ("train", 1, budget.synth_train_scenes),
        (split, first, budget.synth_test_scenes),
    ):
        folder = work / f"synthetic_{name}_{budget.synth_size}_{count}"
        if not (folder / "labels.csv").is_file():
            scenes = [
                make_scene(budget.synth_size, budget.synth_size, seed=s, pixel_size_m=1.0)
                for s in range(start, start + count)
            ]
            write_tile_dataset(scenes, folder, tile_size=budget.tile)
        folders[name] = folder
    train = PairDataset(folders["train"], tile_size=budget.tile)
    test = PairDataset(folders[split], tile_size=budget.tile)
    p = budget.synthetic
    text = (
        f"{budget.synth_train_scenes} training / {budget.synth_test_scenes} "
        f"{'validation' if validation else 'test'} scenes of {budget.synth_size}² px (1 m), "
        f"{len(train)} / {len(test)} tiles of {budget.tile} px. Teacher {p.teacher_epochs} "
        f"epochs from ImageNet weights; students from {p.student_init} weights, "
        f"{p.student_epochs} epochs, lr {p.student_lr}."
    )
    return Domain("synthetic", train, test, p, text)


def real_domain(budget: Budget) -> Optional[Domain]:
    """LEVIR-CD: the two 1024² images for training, the 256² crops outside them for testing."""
    if not (REAL / "pairs.csv").is_file():
        log.warning("real data not found at %s: skipping the real-data domain", REAL)
        return None
    train = PairDataset(REAL / "LEVIR-CD-1024", tile_size=budget.tile)
    names = sorted(p.stem for p in (REAL / "LEVIR-CD" / "A").iterdir())
    test_names = [n for n in names if n not in LEVIR_OVERLAP]
    test = PairDataset(REAL / "LEVIR-CD", tile_size=budget.tile, names=test_names)
    p = budget.real
    text = (
        f"LEVIR-CD (0.5 m). Teacher: {p.teacher_epochs} epochs from ImageNet weights on the 2 "
        f"images of LEVIR-CD-1024 ({len(train)} tiles of {budget.tile} px). Students: from "
        f"{p.student_init} weights, {p.student_epochs} epochs (lr {p.student_lr}) on a fixed "
        f"random {p.student_tiles} of those tiles. Test: the {len(test_names)} LEVIR-CD 256² "
        f"crops that do not overlap the training images ({len(test)} tiles)."
    )
    return Domain("real (LEVIR-CD)", train, test, p, text)


def teacher_for(domain: Domain, budget: Budget, work: Path) -> SiameseDeepLabV3Plus:
    """Train (or reuse from `work`) the clean-pair teacher of `domain` (last epoch kept)."""
    config = CDConfig(epochs=domain.protocol.teacher_epochs, batch_size=budget.batch_size, seed=0)
    key = f"{domain.name}_{config.backbone}_{len(domain.train)}_{config.epochs}_{config.lr}"
    path = work / f"teacher_{''.join(c if c.isalnum() else '_' for c in key)}.kdmsi"
    if path.is_file():
        return load_checkpoint(path)[0]
    result = train_detector(domain.train, config)
    save_detector(path, result.model, domain.train.bands, domain.train.normalisation, budget.tile)
    return result.model


def student_set(domain: Domain, seed: int = 0):
    """The students' training pairs: all training tiles, or a fixed random subset."""
    n = domain.protocol.student_tiles
    if n is None or n >= len(domain.train):
        return domain.train
    idx = np.random.default_rng(seed).choice(len(domain.train), n, replace=False)
    return torch.utils.data.Subset(domain.train, sorted(idx.tolist()))


def iou(model: SiameseDeepLabV3Plus, data) -> float:
    return 100.0 * detector_change_iou(model, data, torch.device("cpu"))


def student_config(
    domain: Domain,
    budget: Budget,
    method: str,
    preset: str,
    loss: HiCDLossConfig,
    feat: float,
    seed: int = 0,
) -> HiCDConfig:
    """The students' recipe; ``seed`` sets their initialisation, batch order, augmentations
    and training degradations (the test degradations stay fixed)."""
    p = domain.protocol
    return HiCDConfig(
        method=method,
        preset=preset,
        init=p.student_init,
        epochs=p.student_epochs,
        batch_size=budget.batch_size,
        lr=p.student_lr,
        lambda_feat=feat,
        loss=loss,
        seed=seed,
        degrade_seed=seed,
        device="cpu",
    )


def run_domain(
    domain: Domain,
    budget: Budget,
    presets: list[str],
    ablation_presets: list[str],
    work: Path,
    loss: HiCDLossConfig,
    lambda_feat: float,
    seeds: tuple[int, ...] = (0,),
) -> dict:
    """Scores {row: {preset: [cIoU % per student seed]}} and timings (s) of one domain."""
    t0 = time.perf_counter()
    teacher = teacher_for(domain, budget, work)
    timings = {"teacher": time.perf_counter() - t0}
    clean = iou(teacher, domain.test)
    rows: dict[str, dict[str, list[float]]] = {
        TEACHER_ROW: {},
        "teacher, degraded after image": {},
    }
    budgets: dict[str, dict[str, list]] = {}  # row -> preset -> [steps, seconds, students]
    print(f"\n## {domain.name}: {domain.description}", flush=True)
    print(f"teacher on clean test pairs: cIoU {clean:.2f}", flush=True)
    students = student_set(domain)
    for preset in presets:
        test = DegradedPairDataset(domain.test, preset, TEST_DEGRADE_SEED)
        rows[TEACHER_ROW][preset] = [clean]
        rows["teacher, degraded after image"][preset] = [iou(teacher, test)]
        runs = {DIRECT_ROW: ("direct", loss), FEAT_ROW: ("feature-mse", loss)}
        runs[HICD_ROW] = ("hicd", loss)
        if preset in ablation_presets:
            for name, change in ABLATIONS.items():
                runs[name] = ("hicd", replace(loss, **change))
        for name, (method, loss_config) in runs.items():
            for seed in seeds:
                config = student_config(
                    domain, budget, method, preset, loss_config, lambda_feat, seed
                )
                start = time.perf_counter()
                result = train_hicd(teacher, students, config)
                key = f"{preset}/{name}" + (f"/seed {seed}" if len(seeds) > 1 else "")
                timings[key] = time.perf_counter() - start
                score = iou(result.model, test)
                rows.setdefault(name, {}).setdefault(preset, []).append(score)
                spent = budgets.setdefault(name, {}).setdefault(preset, [0, 0.0, 0])
                spent[0] = len(result.steps)  # the same for every seed of a row
                spent[1] += timings[key]
                spent[2] += 1
                print(
                    f"{preset:>10} {name:<32} seed {seed} cIoU {score:6.2f} ({timings[key]:.0f} s)",
                    flush=True,
                )
    timings["total"] = time.perf_counter() - t0
    return {
        "rows": rows,
        "budgets": budgets,
        "timings": timings,
        "description": domain.description,
    }


TUNE_FEAT = (1.0, 3.0, 10.0)
# Multiples of the default HiCD weights (15 / 1.5 / 3, chosen for a random-init ResNet-18 with
# SGD, where x1 gave each term a gradient of 0.3 x the cross-entropy's at the start).
TUNE_HICD = (0.03, 0.1, 1 / 3, 1.0, 10 / 3)


def tune_runs(loss: HiCDLossConfig) -> list[tuple[str, str, HiCDLossConfig, float]]:
    """(label, method, loss, lambda_feat) of the search: the baselines, then HiCD with its
    weights scaled, with one stage, with coarser or finer correlation pooling, and with a
    smaller queue, each changed alone from `loss`."""
    runs = [("direct", "direct", loss, 1.0)]
    runs += [(f"feature-MSE lambda_feat {f:g}", "feature-mse", loss, f) for f in TUNE_FEAT]
    for m in TUNE_HICD:
        scaled = replace(
            loss,
            lambda_sfd=loss.lambda_sfd * m,
            lambda_cfd=loss.lambda_cfd * m,
            lambda_global=loss.lambda_global * m,
        )
        runs.append((f"HiCD weights x{m:.2g}", "hicd", scaled, 1.0))
    for change in (
        {"stages": ("low",)},
        {"stages": ("high",)},
        {"max_side": 16},
        {"max_side": 64},
        {"queue_size": 256},
        {"self_dates": ("pre", "post")},
    ):
        label = "HiCD " + ", ".join(f"{k} {v}" for k, v in change.items())
        runs.append((label, "hicd", replace(loss, **change), 1.0))
    return runs


def tune(
    budget: Budget, work: Path, loss: HiCDLossConfig, preset: str, seeds: tuple[int, ...]
) -> None:
    """Print validation cIoU (mean ± sd over `seeds`) of each `tune_runs` setting on validation
    scenes (seeds 201..), never the test set."""
    domain = synthetic_domain(work, budget, validation=True)
    teacher = teacher_for(domain, budget, work)
    val = DegradedPairDataset(domain.test, preset, TEST_DEGRADE_SEED)
    print(f"tuning on {domain.description} Preset {preset}.", flush=True)
    print(f"teacher clean {iou(teacher, domain.test):.2f}, degraded {iou(teacher, val):.2f}")
    for label, method, loss_config, feat in tune_runs(loss):
        scores = []
        for seed in seeds:
            config = student_config(domain, budget, method, preset, loss_config, feat, seed)
            scores.append(iou(train_hicd(teacher, domain.train, config).model, val))
        print(f"| {label} | {cell(scores)} |", flush=True)


def mean(values: list[float]) -> float:
    return float(np.mean(values))


def cell(values: list[float]) -> str:
    """The mean, and ± the sample standard deviation over seeds when there are several."""
    if len(values) < 2:
        return f"{values[0]:.2f}"
    return f"{mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def beats(rows: dict, preset: str, other: str) -> bool:
    """HiCD's mean above `other`'s by more than the larger of the two standard deviations."""
    a, b = rows[HICD_ROW][preset], rows[other][preset]
    spread = max(np.std(a, ddof=1) if len(a) > 1 else 0.0, np.std(b, ddof=1) if len(b) > 1 else 0.0)
    return mean(a) - mean(b) > spread


def gap_share(rows: dict, preset: str) -> Optional[float]:
    """(HiCD - direct) / (teacher clean - direct) of the means, or None when the gap is not
    positive."""
    base = mean(rows[DIRECT_ROW][preset])
    gap = mean(rows[TEACHER_ROW][preset]) - base
    return (mean(rows[HICD_ROW][preset]) - base) / gap if gap > 0 else None


def markdown(results: dict, presets: list[str], header: str) -> str:
    lines = [header, ""]
    for domain, res in results.items():
        rows = res["rows"]
        lines += [f"### {domain}", "", res["description"], ""]
        lines.append("| method | " + " | ".join(presets) + " |")
        lines.append("|---|" + "---:|" * len(presets))
        for name, values in rows.items():
            cells = [cell(values[p]) if p in values else "" for p in presets]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        shares = [gap_share(rows, p) for p in presets]
        lines.append(
            "| HiCD: share of the clean-to-degraded gap closed | "
            + " | ".join("n/a" if s is None else f"{100 * s:.0f} %" for s in shares)
            + " |"
        )
        wins = [p for p in presets if beats(rows, p, DIRECT_ROW) and beats(rows, p, FEAT_ROW)]
        means = [
            p
            for p in presets
            if mean(rows[HICD_ROW][p]) > max(mean(rows[DIRECT_ROW][p]), mean(rows[FEAT_ROW][p]))
        ]
        lines += [
            "",
            "HiCD beats both the direct baseline and feature-MSE by more than one standard "
            f"deviation in: {', '.join(wins) or 'none'}; by its mean alone in: "
            f"{', '.join(means) or 'none'} (of {', '.join(presets)}).",
            "",
            "Training budget per student (the same for every method of a preset): optimiser "
            "steps, and mean wall time on this machine's CPU:",
            "",
            "| method | " + " | ".join(presets) + " |",
            "|---|" + "---:|" * len(presets),
        ]
        for name, per_preset in res.get("budgets", {}).items():
            cells = []
            for p in presets:
                steps, seconds, count = per_preset.get(p, (0, 0.0, 0))
                cells.append(f"{steps} steps, {seconds / count:.0f} s" if count else "")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in res["timings"].items()),
            "",
        ]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", default="synthetic,real")
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--ablation-presets", default="multi")
    parser.add_argument("--workdir", help="keep datasets and teachers here (default: temporary)")
    parser.add_argument("--out", default=str(RESULTS), help="markdown results file")
    parser.add_argument("--quick", action="store_true", help="tiny smoke-test budget")
    parser.add_argument("--tune", action="store_true", help="only the weight search (validation)")
    parser.add_argument("--distance", choices=("mse", "kl"), default=HiCDLossConfig.distance)
    parser.add_argument("--lambda-sfd", type=float, default=HiCDLossConfig.lambda_sfd)
    parser.add_argument("--lambda-cfd", type=float, default=HiCDLossConfig.lambda_cfd)
    parser.add_argument("--lambda-global", type=float, default=HiCDLossConfig.lambda_global)
    parser.add_argument("--lambda-feat", type=float, default=HiCDConfig.lambda_feat)
    parser.add_argument(
        "--seeds",
        default="0",
        help="student seeds (comma-separated) for direct, feature-MSE and HiCD: mean ± sd",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)"
    )
    parser.add_argument(
        "--student-init",
        choices=("imagenet", "teacher", "random"),
        help="override every domain's student start (teacher: what train --quality-robust does)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    budget = QUICK if args.quick else Budget()
    if args.student_init:
        budget = replace(
            budget,
            synthetic=replace(budget.synthetic, student_init=args.student_init),
            real=replace(budget.real, student_init=args.student_init),
        )
    presets = [p for p in args.presets.split(",") if p]
    ablation_presets = [p for p in args.ablation_presets.split(",") if p]
    seeds = tuple(int(x) for x in args.seeds.split(",") if x.strip())
    loss = HiCDLossConfig(
        distance=args.distance,
        lambda_sfd=args.lambda_sfd,
        lambda_cfd=args.lambda_cfd,
        lambda_global=args.lambda_global,
    )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hicd-bench-") as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.tune:
            tune(budget, work, loss, (ablation_presets or ["multi"])[0], seeds)
            print(f"tuning took {time.perf_counter() - start:.0f} s")
            return 0
        domains = []
        for name in args.domains.split(","):
            if name == "synthetic":
                domains.append(synthetic_domain(work, budget))
            elif name == "real":
                domain = real_domain(budget)
                if domain is not None:
                    domains.append(domain)
        results = {
            d.name: run_domain(
                d, budget, presets, ablation_presets, work, loss, args.lambda_feat, seeds
            )
            for d in domains
        }
    total = time.perf_counter() - start
    header = (
        f"## HiCD bench (`bench/hicd.py`{' --quick' if args.quick else ''}): change IoU (%) "
        "on held-out pairs, after image degraded per preset\n\n"
        f"CPU ({torch.get_num_threads()} thread(s)), the default detector: Siamese DeepLabV3+ "
        f"on an ImageNet EfficientNet-Lite0 trunk, AdamW (lr {recipe.CD_LR:g}, new layers "
        f"x{recipe.HEAD_LR_MULT:g}), frozen batch norms; {budget.tile} px tiles, batch "
        f"{budget.batch_size}, "
        + (
            "one seed"
            if len(seeds) == 1
            else f"students of seeds {', '.join(map(str, seeds))} (mean ± sd)"
        )
        + ". HiCD loss: "
        f"{json.dumps(loss.to_dict())}; feature-MSE lambda_feat {args.lambda_feat}. "
        f"Total {total:.0f} s."
    )
    text = markdown(results, presets, header)
    print("\n" + text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out, overwrite=True) as tmp_path:
        tmp_path.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
