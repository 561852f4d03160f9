"""`kdmsi detect-batch` on a local Dask cluster equals single-process `detect`, pair by pair and
block by block; a bad pair fails alone; bad input is one line; a re-run skips what is done."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from detect_helpers import features, read_band, scene, write_raster

from kdmsi.cli import main
from kdmsi.detect.blocks import row_blocks
from kdmsi.detect.with_model import detect_changes

pytest.importorskip("distributed")

TILE, OVERLAP = 64, 16  # `tiny_detector`'s tile and its default overlap
BIG_HEIGHT, BLOCK_ROWS = 700, 150  # the big pair: 4 row blocks; the small ones: 1
THRESHOLD = "0.4965"  # about the 90th percentile of the random detector's map: many polygons


def _pair(folder: Path, name: str, height: int, width: int, shift: int) -> tuple[Path, Path]:
    pre, post = scene(height, width)
    post = np.roll(post, shift, axis=2)
    return write_raster(folder / f"{name}_a.tif", pre), write_raster(folder / f"{name}_b.tif", post)


@pytest.fixture(scope="module")
def batch(tmp_path_factory, tiny_detector) -> dict:
    """Three small pairs, one big one and a corrupt one, run once by detect-batch."""
    root = tmp_path_factory.mktemp("batch")
    pairs = {f"small{i}": _pair(root, f"small{i}", 150, 170 + 20 * i, 7 * i) for i in range(3)}
    pairs["big"] = _pair(root, "big", BIG_HEIGHT, 180, 3)
    corrupt = root / "corrupt_b.tif"
    corrupt.write_bytes(b"not a GeoTIFF")
    with open(root / "pairs.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "before", "after"])
        for name, (before, after) in pairs.items():
            writer.writerow([name, before.name, after.name])  # relative to the csv
        writer.writerow(["corrupt", pairs["small0"][0].name, corrupt.name])
        writer.writerow(["missing", pairs["small0"][0].name, "nothing.tif"])
    out = root / "out"
    out.mkdir()
    args = ["detect-batch", "--pairs", str(root / "pairs.csv"), "--out-dir", str(out)]
    args += ["--model", str(tiny_detector), "--workers", "2", "--runtime", "torch"]
    args += ["--threshold", THRESHOLD]
    status = main([*args, "--block-rows", str(BLOCK_ROWS), "--device", "cpu"])
    return {"root": root, "out": out, "pairs": pairs, "status": status, "args": args}


def _summary(out: Path) -> dict[str, dict]:
    with open(out / "summary.csv", newline="") as handle:
        return {row["pair"]: row for row in csv.DictReader(handle)}


def test_each_pair_equals_single_process_detect(batch, tiny_detector, tmp_path):
    assert len(row_blocks(BIG_HEIGHT, TILE, OVERLAP, BLOCK_ROWS)) == 4
    for name, (before, after) in batch["pairs"].items():
        single = detect_changes(
            before,
            after,
            tiny_detector,
            tmp_path / f"{name}.gpkg",
            tmp_path / f"{name}.tif",
            runtime="torch",
            device="cpu",
            threshold=float(THRESHOLD),
        )
        out = batch["out"]
        mine = read_band(out / f"{name}_probability.tif")
        theirs = read_band(tmp_path / f"{name}.tif")
        assert mine.shape == theirs.shape
        assert np.abs(mine - theirs).max() <= 1e-6, name
        polygons = features(out / f"{name}.gpkg")
        expected = features(tmp_path / f"{name}.gpkg")
        assert len(polygons) == single.polygon_count == len(expected)
        for mine_f, theirs_f in zip(polygons, expected):  # probabilities agree to 1e-6
            a, b = dict(mine_f["properties"]), dict(theirs_f["properties"])
            assert (a["id"], a["area_m2"]) == (b["id"], b["area_m2"])
            assert a["mean_prob"] == pytest.approx(b["mean_prob"], abs=1e-6)
            assert a["max_prob"] == pytest.approx(b["max_prob"], abs=1e-6)
        assert [f["geometry"]["coordinates"] for f in polygons] == [
            f["geometry"]["coordinates"] for f in expected
        ]


def test_corrupt_pair_fails_alone_in_the_summary(batch):
    assert batch["status"] == 1  # a pair failed
    rows = _summary(batch["out"])
    assert [rows[n]["status"] for n in ("small0", "small1", "small2", "big")] == ["done"] * 4
    assert rows["corrupt"]["status"] == rows["missing"]["status"] == "failed"
    assert "corrupt_b.tif" in rows["corrupt"]["message"]
    assert rows["missing"]["message"].endswith("nothing.tif does not exist: check the path")
    assert not any("Exception" in rows[n]["message"] for n in ("corrupt", "missing"))
    assert int(rows["big"]["polygons"]) > 10
    left = sorted(p.name for p in batch["out"].iterdir())
    names = ("big", "small0", "small1", "small2")
    expected = [f"{n}{s}" for n in names for s in (".gpkg", "_probability.tif")]
    assert left == sorted([*expected, "summary.csv"])  # no block, scratch or temporary file


def test_rerun_skips_finished_pairs(batch, capsys):
    before = {p: p.stat().st_mtime_ns for p in batch["out"].glob("small*")}
    csv_path = batch["root"] / "done.csv"
    csv_path.write_text("name,before,after\n" + "".join(
        f"{n},{b.name},{a.name}\n" for n, (b, a) in batch["pairs"].items() if n != "big"
    ))  # fmt: skip
    args = ["detect-batch", "--pairs", str(csv_path), "--out-dir", str(batch["out"])]
    assert main([*args, "--model", batch["args"][6]]) == 0
    assert {r["status"] for r in _summary(batch["out"]).values()} == {"skipped"}
    assert {p: p.stat().st_mtime_ns for p in batch["out"].glob("small*")} == before


@pytest.mark.parametrize(
    "content, message",
    [
        ("name,before\nx,a.tif\n", "lacks the column(s) after"),
        ("name,before,after\n", "lists no pair"),
        ("name,before,after\nx/y,a.tif,b.tif\n", "cannot name output files"),
        ("name,before,after\nx,a.tif,b.tif\nX,a.tif,b.tif\n", "given twice"),
        ("name,before,after,bands\nx,a.tif,b.tif,0\n", "must be 1-based"),
    ],
)
def test_bad_pair_list_is_one_line(tmp_path, capsys, tiny_detector, content, message):
    (tmp_path / "pairs.csv").write_text(content)
    args = ["detect-batch", "--pairs", str(tmp_path / "pairs.csv"), "--out-dir", str(tmp_path)]
    assert main([*args, "--model", str(tiny_detector)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.csv"]


def test_missing_dask_names_the_extra(tmp_path, tiny_detector):
    (tmp_path / "pairs.csv").write_text("name,before,after\nx,a.tif,b.tif\n")
    code = (
        "import sys; sys.modules['distributed'] = None\n"
        "from kdmsi.cli import main\n"
        f"sys.exit(main(['detect-batch', '--pairs', {str(tmp_path / 'pairs.csv')!r}, "
        f"'--out-dir', {str(tmp_path)!r}, '--model', {str(tiny_detector)!r}]))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 2
    assert "kdmsi[dist]" in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_sigterm_stops_the_cluster_and_leaves_nothing_partial(batch, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    args = [a if a != str(batch["out"]) else str(out) for a in batch["args"]]
    command = [sys.executable, "-m", "kdmsi.cli", *args, "--block-rows", "48"]
    run = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=batch["root"])
    deadline = time.monotonic() + 120
    while not any(out.glob(".kdmsi-blocks.tmp-*/*.tif")) and time.monotonic() < deadline:
        assert run.poll() is None, run.communicate()[1]
        time.sleep(0.1)  # until a block is written: the workers are busy
    os.kill(run.pid, signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 143, err
    assert "cancelled (SIGTERM)" in err
    left = {p.name for p in out.iterdir()}
    assert "summary.csv" in left
    assert not any(name.startswith(".") for name in left)  # no scratch, no temporary file
    for stem in {n.rsplit(".", 1)[0].replace("_probability", "") for n in left} - {"summary"}:
        assert {f"{stem}.gpkg", f"{stem}_probability.tif"} <= left  # finished pairs are whole


def test_csv_paths_are_read_from_its_folder_and_model_from_the_command_line(tmp_path, monkeypatch):
    from kdmsi.detect.batch_pairs import read_pairs

    (tmp_path / "lists").mkdir()
    (tmp_path / "m.kdmsi").write_bytes(b"")
    (tmp_path / "lists" / "own.kdmsi").write_bytes(b"")
    (tmp_path / "lists" / "pairs.csv").write_text(
        'name,before,after,model,bands\na,x/b.tif,/abs/a.tif,,\nb,b.tif,a.tif,own.kdmsi,"3,2,1"\n'
    )
    monkeypatch.chdir(tmp_path)
    first, second = read_pairs("lists/pairs.csv", "m.kdmsi")
    assert first.before == tmp_path / "lists/x/b.tif" and first.after == Path("/abs/a.tif")
    assert first.model == tmp_path / "m.kdmsi" and first.bands is None  # from where it runs
    assert second.model == tmp_path / "lists/own.kdmsi" and second.bands == (3, 2, 1)
