"""The ``--maps`` rows of the real-pair benchmark (`real_pairs.py`): the teacher CAM, the
student and its MSI over the whole region, and the pseudo labels the detector trained on,
each computed in its own process (``real_pairs.py --stage map|pseudo``) and scored here."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from real_tables import score_row

MAPS = ("teacher-cam", "student", "msi")
REAL_PAIRS = str(Path(__file__).resolve().parent / "real_pairs.py")


def stage_map(kind: str, kd_model: str, before: str, after: str, out: str, bands: str) -> None:
    """Worker: a whole-region map of ``kind`` (teacher-cam, student, msi) from a KD model,
    through the detect path (tiles, blending), written as a probability GeoTIFF."""
    from kdmsi.data.normalisation import Normalisation
    from kdmsi.detect.with_runner import detect_with_predictor
    from kdmsi.inference.msi import (
        multiscale_sigmoid_inference,
        single_scale_probability,
        teacher_cam,
    )
    from kdmsi.models.checkpoint import load_checkpoint

    role = "teacher" if kind == "teacher-cam" else "student"
    model, meta = load_checkpoint(kd_model, role=role)
    predict = {
        "teacher-cam": lambda p, q: teacher_cam(model, p, q),
        "student": lambda p, q: single_scale_probability(model, p, q),
        "msi": lambda p, q: multiscale_sigmoid_inference(model, p, q),
    }[kind]
    detect_with_predictor(
        before,
        after,
        predict,
        Normalisation.from_dict(meta["normalisation"]),
        Path(out).with_suffix(".gpkg"),
        out,
        bands=[int(b) for b in bands.split(",")] if bands else None,
        tile_size=meta["tile_size"],  # as `kdmsi detect` runs a model
        overwrite=True,
    )


def stage_pseudo(
    kd_model: str, detector: str, before: str, after: str, tiles: str, out: str, bands: str
) -> None:
    """Worker: the MSI map of every tagged tile as `kdmsi train` computed it for the pseudo
    labels (same windows, stretch and normalisation), pasted into a float32 raster (NaN
    outside tagged tiles); the stored pseudo-label threshold goes into ``out``.json."""
    import torch

    from kdmsi.data.tagged import RasterTileDataset, read_tagged_windows
    from kdmsi.geo.align import align_pair
    from kdmsi.geo.stretch import pair_stretches
    from kdmsi.inference.feature_vote import zero_shot_tile_maps
    from kdmsi.inference.maps import collect_map_statistics, map_function
    from kdmsi.models.checkpoint import load_checkpoint, read_checkpoint

    student, meta = load_checkpoint(kd_model)
    summary = read_checkpoint(detector)["metadata"]["training"]
    chosen = [int(b) for b in bands.split(",")] if bands else None
    with align_pair(before, after, chosen) as pair:
        windows, size = read_tagged_windows(tiles, pair, meta["tile_size"])
        data = RasterTileDataset(pair, windows, pair_stretches(pair), _norm(meta), size)
        region = np.full((pair.height, pair.width), np.nan, np.float32)
        order = iter(range(len(data)))

        def paste(batch: dict, maps: dict) -> None:
            for prob in maps["msi"][:, 0].numpy():
                win = data.windows[next(order)]
                region[win.y : win.y + win.h, win.x : win.x + win.w] = prob[: win.h, : win.w]

        collect_map_statistics(
            data, {"msi": map_function("msi", student)}, torch.device("cpu"), 4, on_batch=paste
        )
        _write_float(out, region)
        if summary["pseudo_labels"].get("feature_vote"):  # the vote's second opinion, as trained
            changed = [i for i, label in enumerate(data.labels) if label == 1]
            distance = np.full((pair.height, pair.width), np.nan, np.float32)
            for index, values in zero_shot_tile_maps(data, changed).items():
                win = data.windows[index]
                distance[win.y : win.y + win.h, win.x : win.x + win.w] = values[: win.h, : win.w]
            _write_float(out.replace(".tif", "_vote.tif"), distance)
    Path(out + ".json").write_text(json.dumps(summary["pseudo_labels"]))


def _write_float(path: str, array: np.ndarray) -> None:
    from osgeo import gdal

    ds = gdal.GetDriverByName("GTiff").Create(
        path, array.shape[1], array.shape[0], 1, gdal.GDT_Float32
    )
    ds.GetRasterBand(1).WriteArray(array)
    ds = None


def _norm(meta: dict):
    from kdmsi.data.normalisation import Normalisation

    return Normalisation.from_dict(meta["normalisation"])


def map_stages(
    bands: str, folder: Path, kd_model: Path, detector: Path, grid_path: Path, run_stage
) -> dict[str, Any]:
    """The teacher, student and MSI maps of the whole region and the pseudo labels of the
    tagged tiles, each in its own process (``--maps``) started by ``run_stage``."""
    pair = [str(folder / "before.tif"), str(folder / "after.tif")]
    stages = {}
    for kind in MAPS:
        stages[kind] = run_stage(
            [sys.executable, REAL_PAIRS, "--stage", "map", kind, str(kd_model), *pair,
             str(folder / f"{kind}.tif"), bands],
            folder / f"{kind}.log",
        )  # fmt: skip
    stages["pseudo"] = run_stage(
        [sys.executable, REAL_PAIRS, "--stage", "pseudo", str(kd_model), str(detector), *pair,
         str(grid_path), str(folder / "pseudo_msi.tif"), bands],
        folder / "pseudo.log",
    )  # fmt: skip
    return stages


def _label_free_threshold(score: np.ndarray, tags, grid: int) -> float:
    """`kdmsi`'s ``auto`` threshold of a map from the tagged tiles' values (no truth)."""
    from kdmsi.inference.thresholds import ProbabilityHistograms, choose_threshold

    hists = ProbabilityHistograms()
    for (row, col), tag in tags.items():
        if tag is not None:
            tile = score[row * grid : (row + 1) * grid, col * grid : (col + 1) * grid]
            hists.add(np.nan_to_num(tile), tag)
    return choose_threshold(hists, "auto").value


def map_rows(
    folder: Path, truth: np.ndarray, tags, grid: int, changed_tiles, tagged
) -> dict[str, Any]:
    """The rows of the maps `map_stages` left in ``folder`` (none when it did not run)."""
    rows = {}
    for kind, title in zip(MAPS, ("teacher CAM", "student", "student + MSI")):
        if not (folder / f"{kind}.tif").is_file():
            continue  # without --maps, or a cross-dataset run: the detector only
        score = np.nan_to_num(_raster(folder / f"{kind}.tif"))
        value = _label_free_threshold(score, tags, grid)
        rows[title] = {**score_row(score, truth, score > value), "threshold": value}
    if (folder / "pseudo_msi.tif").is_file():
        rows.update(_pseudo_rows(folder, truth, changed_tiles, tagged))
    return rows


def _pseudo_rows(
    folder: Path, truth: np.ndarray, changed_tiles: np.ndarray, tagged: np.ndarray
) -> dict[str, Any]:
    """The pseudo labels the detector trained on (``--maps``), scored on the tagged tiles."""
    msi = _raster(folder / "pseudo_msi.tif")
    stored = json.loads((folder / "pseudo_msi.tif.json").read_text())
    value = stored["threshold"]["value"]
    where = tagged & ~np.isnan(msi)
    pseudo = np.nan_to_num(msi) * changed_tiles
    chosen = pseudo > value
    weight = stored.get("feature_vote") or 0.0
    rows = {}
    if weight and (folder / "pseudo_msi_vote.tif").is_file():  # as `kdmsi train` voted
        from kdmsi.inference.feature_vote import vote

        distance = np.nan_to_num(_raster(folder / "pseudo_msi_vote.tif"))
        chosen = vote(np.nan_to_num(msi), value, distance, weight) & changed_tiles
        rows["pseudo labels, MSI alone"] = {**score_row(pseudo, truth, pseudo > value, where)}
    rows["pseudo labels"] = {**score_row(pseudo, truth, chosen, where), "threshold": value}
    return rows


def _raster(path: Path) -> np.ndarray:
    from osgeo import gdal

    return gdal.Open(str(path)).ReadAsArray()
