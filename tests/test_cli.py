"""The CLI chain train-kd -> pseudo-labels -> train-cd -> evaluate, and its error answers."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from kdmsi.cli import main
from kdmsi.data import read_image

FAST_KD = ["--backbone", "resnet18", "--epochs", "1", "--batch-size", "4"]
FAST_CD = ["--backbone", "resnet18", "--epochs", "1", "--batch-size", "4"]


def run_chain(tmp_path, data, tile_size, capsys):
    kd, cd, pseudo = tmp_path / "kd.kdmsi", tmp_path / "cd.kdmsi", tmp_path / "pseudo"
    tile = ["--tile-size", str(tile_size)]
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


def test_cli_chain_on_synthetic_tiles(tmp_path, capsys):
    data = tmp_path / "data"
    assert (
        main(["synth", "--out", str(data), "--scenes", "2", "--size", "128", "--tile-size", "64"])
        == 0
    )
    assert (data / "labels.csv").is_file()
    _, _, pseudo = run_chain(tmp_path, data, 64, capsys)
    info = json.loads((pseudo / "pseudo_labels.json").read_text())
    assert info["threshold"]["method"].startswith("auto")


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
    kd, cd, _ = run_chain(tmp_path, data, 128, capsys)
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
