"""The CLI chain train-kd -> pseudo-labels -> train-cd -> evaluate, and its error answers."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from kdmsi.cli import main
from kdmsi.data.pairs import read_image

# the default recipe (pretrained EfficientNet-Lite0), shortened: enough KD steps for the tiny
# sets below to give pseudo labels that are neither empty nor all change
FAST_KD = ["--epochs", "10", "--batch-size", "4"]
FAST_CD = ["--epochs", "1", "--batch-size", "4"]


def run_chain(tmp_path, data, tile_size, capsys, report=True):
    """train-kd, pseudo-labels, train-cd (with their default training reports unless `report`
    is False), evaluate."""
    kd, cd, pseudo = tmp_path / "kd.kdmsi", tmp_path / "cd.kdmsi", tmp_path / "pseudo"
    tile = ["--tile-size", str(tile_size)] + ([] if report else ["--no-report"])
    assert main(["train-kd", "--data", str(data), "--out", str(kd), *FAST_KD, *tile]) == 0
    assert (
        main(
            [
                "pseudo-labels",
                "--model",
                str(kd),
                "--data",
                str(data),
                "--out",
                str(pseudo),
                "--scales",
                "1,2",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train-cd",
                "--data",
                str(data),
                "--labels",
                str(pseudo / "label"),
                "--out",
                str(cd),
                *FAST_CD,
                *tile,
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(kd),
                "--model",
                str(cd),
                "--data",
                str(data),
                "--scales",
                "1,2",
                "--pseudo-labels",
                str(pseudo / "label"),
                "--json",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert set(rows) == {"teacher-cam", "student", "mi", "msi", "detector", "pseudo-labels"}
    for row in rows.values():
        assert 0.0 <= row["cIoU"] <= 1.0
        assert row["cIoU"] + row["FP"] + row["FN"] == pytest.approx(1.0)
    return kd, cd, pseudo


def test_cli_chain_on_synthetic_tiles(tmp_path, capsys, render_page):
    data = tmp_path / "data"
    assert (
        main(["synth", "--out", str(data), "--scenes", "2", "--size", "128", "--tile-size", "64"])
        == 0
    )
    assert (data / "labels.csv").is_file()
    kd, cd, pseudo = run_chain(tmp_path, data, 64, capsys)
    info = json.loads((pseudo / "pseudo_labels.json").read_text())
    assert info["threshold"]["method"].startswith("auto")
    assert info["kd_model"] == str(kd.resolve()) and info["msi_histogram"]["bins"] == 100
    check_reports(tmp_path)
    page = render_page(tmp_path / "cd_report" / "index.html")  # a headless browser sees it all
    assert page["loaded"] == [True] and len(page["images"]) > 2 * 8
    assert all(complete and width > 0 for _, complete, width, _ in page["images"])
    check_ablation(tmp_path, kd, cd, data, info, capsys)


def check_reports(folder):
    """The training runs wrote their reports beside the models (`<model stem>_report`)."""
    kd_report = json.loads((folder / "kd_report" / "report.json").read_text())
    kd_panels = ["pre", "post", "truth", "teacher-cam", "student", "msi"]
    assert kd_report["tiles"] and all(t["panels"] == kd_panels for t in kd_report["tiles"])
    assert kd_report["threshold"] is None and kd_report["kd"]["history"]
    full = json.loads((folder / "cd_report" / "report.json").read_text())
    every = [*kd_panels, "pseudo-label", "detector"]
    assert full["tiles"] and all(t["panels"] == every for t in full["tiles"])
    assert {"losses", "threshold", "colour_prob", "colour_mask"} == set(full["figures"])
    assert full["threshold"]["method"].startswith("auto")
    assert full["kd"]["history"] and full["detector"]["history"]
    (rows,) = full["metrics"].values()
    assert 0 <= rows["pseudo labels"]["cIoU"] <= 1
    assert (folder / "cd_report" / "index.html").is_file()


def check_ablation(folder, kd, cd, data, pseudo_info, capsys):
    argv = ["evaluate", "--ablation", "--model", str(kd), "--model", str(cd), "--data", str(data)]
    argv += ["--scales", "1", "--out", str(folder / "ablation")]
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for title in ("teacher CAM", "student + MI", "student + MSI", "pseudo labels", "detector"):
        assert title in printed
    saved = json.loads((folder / "ablation" / "ablation.json").read_text())
    rows = saved["rows"]
    assert list(rows) == ["teacher-cam", "student", "mi", "msi", "pseudo-labels", "detector"]
    assert rows["pseudo-labels"]["threshold"] == pytest.approx(pseudo_info["threshold"]["value"])
    assert saved["info"]["pseudo_label_threshold_source"] == str(cd)
    for row in rows.values():
        assert row["cIoU"] + row["FP"] + row["FN"] == pytest.approx(1.0)
    assert "| student + MSI |" in (folder / "ablation" / "ablation.md").read_text()
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    no_kd = ["evaluate", "--ablation", "--model", str(cd), "--data", str(data)]
    assert main(no_kd) == 2 and "needs the KD model" in capsys.readouterr().err


@pytest.mark.real_data
def test_cli_chain_on_real_tiles(tmp_path, capsys, real_data):
    """LEVIR-CD, WHU-CD, DSIFN-CD and GZ-CD 256 px crops, downsized copies for CPU speed."""
    data = tmp_path / "real"
    for sub in ("A", "B", "label"):
        (data / sub).mkdir(parents=True)
    for ds in ("LEVIR-CD", "WHU-CD", "GZ-CD", "DSIFN-CD"):
        for src in sorted((real_data / ds / "A").glob("*.png"))[:2]:
            for sub in ("A", "B", "label"):
                shutil.copy(real_data / ds / sub / src.name, data / sub / f"{ds}_{src.name}")
    # LEVIR's unchanged pair gives the needed unchanged tiles
    for sub in ("A", "B", "label"):
        shutil.copy(
            real_data / "LEVIR-CD" / sub / "train_386_0512_0768.png",
            data / sub / "LEVIR-CD_train_386_0512_0768.png",
        )
    kd, cd, _ = run_chain(tmp_path, data, 128, capsys, report=False)  # reports: synthetic test
    assert not (tmp_path / "kd_report").exists() and not (tmp_path / "cd_report").exists()
    assert read_image(data / "label" / "LEVIR-CD_train_386_0512_0768.png").max() == 0


def test_bad_inputs_answer_with_one_line_and_exit_2(tmp_path, capsys):
    garbage = tmp_path / "garbage.kdmsi"
    garbage.write_bytes(np.random.default_rng(0).bytes(1000))
    data = tmp_path / "data"
    main(["synth", "--out", str(data), "--scenes", "1", "--size", "64", "--tile-size", "64"])
    capsys.readouterr()
    cases = [
        (["evaluate", "--model", str(garbage), "--data", str(data)], "not a readable kdmsi"),
        (
            ["train-kd", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m")],
            "needs folders A/",
        ),
        (
            ["train-kd", "--data", str(data), "--out", str(tmp_path / "no" / "m.kdmsi")],
            "does not exist",
        ),
        (["train-kd", "--data", str(data), "--out", str(garbage)], "--overwrite"),
        (
            [
                "pseudo-labels",
                "--model",
                str(garbage),
                "--data",
                str(data),
                "--out",
                str(tmp_path / "p"),
            ],
            "not a readable kdmsi",
        ),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err


def test_console_script_help_runs_without_torch_work():
    out = subprocess.run(
        [sys.executable, "-m", "kdmsi.cli", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("train-kd", "pseudo-labels", "train-cd", "evaluate"):
        assert command in out.stdout


def test_backbone_choices_per_command(capsys):
    from kdmsi.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(
        [
            "train-cd",
            "--data",
            "d",
            "--labels",
            "l",
            "--out",
            "o",
            "--backbone",
            "mobilenet_v3_large",
        ]
    )
    assert args.backbone == "mobilenet_v3_large"
    args = parser.parse_args(
        ["train", "--before", "b", "--after", "a", "--tiles", "t", "--out", "o"]
        + ["--detector-backbone", "mobilenet_v3_large"]
    )
    assert (args.backbone, args.detector_backbone) == ("efficientnet_lite0", "mobilenet_v3_large")
    assert args.weights == "imagenet" and args.tile_size is None  # tile size: the grid's
    with pytest.raises(SystemExit):
        parser.parse_args(
            ["train-kd", "--data", "d", "--out", "o", "--backbone", "mobilenet_v3_large"]
        )
    assert "invalid choice" in capsys.readouterr().err
