"""Training reports: contents, atomic writing, a headless browser render, the sample tiles'
maps, and the ablation table. The CLI runs that write reports are checked in test_cli.py."""

import json
from html.parser import HTMLParser

import numpy as np
import pytest

from kdmsi.inference.thresholds import ProbabilityHistograms, choose_threshold
from kdmsi.models.checkpoint import thin_steps
from kdmsi.reports.page import PANELS, TileRow, TrainingReport, write_training_report
from kdmsi.reports.tiles import sample_tiles


class _Sources(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        for key in ("href", "src"):
            if key in attrs:
                self.links.append(attrs[key])


def fake_report(n_rows=2, size=32) -> TrainingReport:
    rng = np.random.default_rng(0)
    hists = ProbabilityHistograms()
    hists.add(rng.beta(2, 5, (size, size)), 1)
    hists.add(rng.beta(1, 8, (size, size)), 0)
    kd_steps = [
        {"step": i, "epoch": i / 4, "total": 1.0, "cls": 0.7 - i / 50, "kd": 0.2 - i / 100}
        for i in range(1, 9)
    ]
    kd_history = [
        {"epoch": e, "train_cls": 0.7 - e / 20, "train_kd": 0.2 - e / 50, "train_total": 1.0}
        for e in (1, 2)
    ]
    rows = []
    for k in range(n_rows):
        image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        mask = (rng.random((size, size)) > 0.8).astype(np.uint8)
        mask[:, -3:] = 255
        panels = {"pre": image, "post": image[::-1], "truth": mask, "pseudo-label": mask}
        for key in ("teacher-cam", "student", "msi", "detector"):
            panels[key] = rng.random((size, size))
        rows.append(TileRow(f"tile<{k}>", 1 - k % 2, panels))
    return TrainingReport(
        title="test report",
        kd_history=kd_history,
        kd_steps=kd_steps,
        kd_selection={"criterion": "last_epoch", "epoch": 2, "value": None},
        cd_history=[{"epoch": 1, "train_ce": 0.5}],
        cd_steps=[{"step": 1, "epoch": 1.0, "ce": 0.5}],
        threshold=choose_threshold(hists).to_dict(),
        histograms=hists,
        rows=rows,
        metrics={"pseudo labels vs truth": {"pseudo labels": {"cIoU": 0.5, "F1": 0.6, "OA": 0.9}}},
    )


def test_report_folder_holds_page_figures_and_numbers(tmp_path):
    index = write_training_report(tmp_path / "report", fake_report())
    folder = index.parent
    assert index.name == "index.html"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no temporary left
    page = index.read_text()
    parser = _Sources()
    parser.feed(page)
    panels = [f"tiles/{n:02d}_{key}.png" for n in (1, 2) for key in PANELS]
    mask, prob = "colour_mask.png", "colour_prob.png"
    bars = [mask, prob, prob, prob, mask, prob]  # under every column but before / after
    assert parser.images == ["losses.png", "threshold.png", *bars, *panels]
    assert not [u for u in parser.links if "://" in u or u.startswith("//")]  # no network
    assert "tile&lt;0&gt;" in page and "<tile" not in page  # text is escaped
    assert "Otsu" in page and "threshold" in page.lower()
    from matplotlib.image import imread

    for src in parser.images:
        assert imread(folder / src).shape[0] > 20  # every referenced image decodes
    summary = json.loads((folder / "report.json").read_text())
    assert summary["tiles"][0]["panels"] == list(PANELS)
    assert imread(folder / "tiles" / "01_msi.png").shape == (32, 32, 4)  # native tile size
    assert summary["threshold"]["method"] == "auto"


def test_report_renders_in_a_headless_browser(tmp_path, render_page):
    index = write_training_report(tmp_path / "report", fake_report(n_rows=1))
    result = render_page(index)
    assert result["loaded"] == [True] and result["title"] == "test report"
    assert len(result["images"]) == 2 + 6 + len(PANELS)  # figures, colour bars, panels
    for src, complete, width, height in result["images"]:
        assert complete and width > 0 and height > 0, src


def test_report_is_written_atomically(tmp_path, monkeypatch):
    target = tmp_path / "report"
    write_training_report(target, fake_report(n_rows=1))
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_training_report(target, fake_report(n_rows=1))
    import kdmsi.reports.figures as figures

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(figures, "panel_image", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_training_report(target, fake_report(n_rows=1), overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # old report intact
    assert (target / "tiles" / "01_pre.png").is_file()
    monkeypatch.undo()
    empty = TrainingReport(title="nothing known yet")
    index = write_training_report(target, empty, overwrite=True)
    assert "Not chosen in this run" in index.read_text()
    assert sorted(p.name for p in target.iterdir()) == ["index.html", "report.json"]


def test_sample_tiles_mix_classes_reproducibly():
    labels = [1] * 10 + [0] * 10 + [None] * 3
    picked = sample_tiles(labels, 6, seed=0)
    assert picked == sample_tiles(labels, 6, seed=0) == sorted(picked)
    assert sum(labels[i] == 1 for i in picked) == 4 and sum(labels[i] == 0 for i in picked) == 2
    assert sorted(sample_tiles([1, 1, 0], 6)) == [0, 1, 2]
    assert len(sample_tiles([1] * 10, 6)) == 6
    steps = [{"step": i} for i in range(1, 2001)]
    thinned = thin_steps(steps, 100)
    assert len(thinned) == 100 and thinned[0]["step"] == 1 and thinned[-1]["step"] == 2000


def test_tile_rows_run_every_model_on_the_sampled_tiles(tmp_path):
    import torch

    from kdmsi.data.pairs import PairDataset
    from kdmsi.data.synthetic import make_scene, write_tile_dataset
    from kdmsi.models import SiameseCAMNet, SiameseDeepLabV3Plus
    from kdmsi.reports.tiles import build_report, dataset_truth

    write_tile_dataset([make_scene(64, 64, seed=s) for s in (1, 2)], tmp_path, tile_size=32)
    ds = PairDataset(tmp_path, tile_size=32)
    torch.manual_seed(0)
    cam_net = SiameseCAMNet("resnet18").eval()
    detector = SiameseDeepLabV3Plus("resnet18").eval()
    report = build_report(
        ds,
        "tiny",
        kd={"history": [{"epoch": 1, "train_cls": 0.6, "train_kd": 0.1}]},
        teacher=cam_net,
        student=cam_net,
        detector=detector,
        pseudo=lambda i: np.ones((32, 32), np.uint8),
        truth=dataset_truth(ds),
        scales=(1.0,),
        sample_count=3,
    )
    assert len(report.rows) == 3 and report.kd_history
    row = report.rows[0]
    assert list(row.panels) == list(PANELS)
    assert row.panels["pre"].shape == (32, 32, 3) and row.panels["pre"].dtype == np.uint8
    raw = ds.read_tile(ds.tiles.index(next(t for t in ds.tiles if t.key == row.key)))[0]
    assert np.abs(row.panels["pre"].astype(int) - raw.transpose(1, 2, 0)).max() <= 1
    assert all(0 <= row.panels[k].min() and row.panels[k].max() <= 1 for k in ("msi", "detector"))
    write_training_report(tmp_path / "report", report)
    assert (tmp_path / "report" / "tiles" / "03_detector.png").is_file()


def test_ablation_rows_use_the_pseudo_label_threshold_and_report_the_best():
    from kdmsi.inference.maps import MapStatistics
    from kdmsi.inference.thresholds import ThresholdChoice
    from kdmsi.reports.ablation import ABLATION_ROWS, ablation_rows, format_ablation

    rng = np.random.default_rng(0)
    truth = np.zeros((32, 32), np.uint8)
    truth[8:20, 8:20] = 1
    stats = {k: MapStatistics() for k in ABLATION_ROWS}
    for k, st in stats.items():
        sharp = 0.8 if k in ("msi", "pseudo-labels") else 0.4
        st.add(np.clip(truth * sharp + rng.random((32, 32)) * 0.5, 0, 1), truth, 1)
        st.add(rng.random((32, 32)) * (0 if k == "pseudo-labels" else 0.5), 0 * truth, 0)
    rows = ablation_rows(stats, ThresholdChoice(0.6, "stored"))
    assert list(rows) == list(ABLATION_ROWS)
    assert rows["pseudo-labels"]["threshold"] == 0.6
    assert rows["pseudo-labels"]["threshold_method"] == "stored"
    assert rows["detector"]["threshold_method"] == "argmax"
    assert rows["msi"]["best_cIoU"] == pytest.approx(1.0)
    assert rows["student"]["best_cIoU"] < 1.0
    for row in rows.values():
        assert row["cIoU"] + row["FP"] + row["FN"] == pytest.approx(1.0)
    auto = ablation_rows(stats)["pseudo-labels"]
    assert auto["threshold_method"].endswith("chosen on this data")
    text, md = format_ablation(rows), format_ablation(rows, markdown=True)
    assert "student + MSI" in text and "| pseudo labels |" in md


def test_a_missing_matplotlib_is_named_before_anything_is_written(tmp_path, monkeypatch):
    import importlib.util

    from kdmsi.reports.page import ReportError

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name)
    )
    with pytest.raises(ReportError, match="pip install matplotlib"):
        write_training_report(tmp_path / "report", TrainingReport())
    assert not list(tmp_path.iterdir())
