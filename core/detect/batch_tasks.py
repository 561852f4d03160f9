"""The work units of `kdmsi detect-batch`, run on the Dask workers: pure functions of paths,
settings and a block index, so any worker (local process, a SLURM job, a pod) can run any of
them. Each worker opens its own GDAL handles and loads a model file once (`worker_model`)."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..runtime.load import LoadedModel
from .batch_pairs import PairJob
from .blocks import DEFAULT_BLOCK_ROWS, PairPlan, finish_pair, plan_pair, predict_block


@dataclass(frozen=True)
class BatchSettings:
    """The detect options every pair of a batch shares (`kdmsi detect`'s, same defaults).

    ``threads``: torch threads per worker (one per core the worker may use).
    """

    runtime: str = "auto"
    device: str = "auto"
    batch_size: int = 4
    tile_size: Optional[int] = None
    overlap_px: Optional[int] = None
    threshold: Optional[float] = None
    min_area_m2: float = 0.0
    simplify_m: float = 0.0
    block_rows: int = DEFAULT_BLOCK_ROWS
    threads: int = 1


@functools.lru_cache(maxsize=4)
def worker_model(model_path: Path, settings: BatchSettings) -> LoadedModel:
    """The model, loaded once per worker process and kept for its later tasks."""
    from ..runtime.load import load_runner
    from .process_tuning import tune_process_for_detect

    tune_process_for_detect()
    if settings.runtime != "onnx" and not str(model_path).lower().endswith(".onnx"):
        import torch

        torch.set_num_threads(max(1, settings.threads))
    return load_runner(
        model_path,
        settings.runtime,
        settings.device,
        tile_size=settings.tile_size,
        batch_size=settings.batch_size,
    )


def plan_task(job: PairJob, settings: BatchSettings) -> PairPlan:
    """Open, align and stretch one pair and cut it into blocks (`plan_pair`), with the
    model's defaults for what the settings leave open."""
    from .with_model import model_defaults

    model = worker_model(job.model, settings)
    overlap, bands, threshold = model_defaults(
        model, job.model, job.before, job.after, overlap_px=settings.overlap_px,
        bands=job.bands, threshold=settings.threshold,
    )  # fmt: skip
    return plan_pair(
        job.before,
        job.after,
        model.normalisation,
        bands=bands,
        bounds=None,
        tile_size=model.tile_size,
        overlap_px=overlap,
        threshold=threshold,
        block_rows=settings.block_rows,
        model_info={"model": str(job.model), **model.info},
    )


@dataclass(frozen=True)
class BlockDone:
    """A finished block: its file, tiles run with a valid pixel, seconds."""

    path: Path
    tiles_computed: int
    seconds: float


def block_task(
    plan: PairPlan, index: int, model_path: Path, settings: BatchSettings, path: Path
) -> BlockDone:
    """Predict block ``index`` of ``plan`` into ``path``."""
    start = time.perf_counter()
    model = worker_model(model_path, settings)
    computed = predict_block(
        plan,
        index,
        model.run_batch,
        model.normalisation,
        path,
        batch_size=model.batch_size or settings.batch_size,
    )
    return BlockDone(path, computed, time.perf_counter() - start)


def finish_task(
    plan: PairPlan,
    blocks: Sequence[BlockDone],
    job: PairJob,
    out_dir: Path,
    settings: BatchSettings,
    overwrite: bool,
) -> int:
    """Mosaic and polygonize one pair (`finish_pair`); return its polygon count.

    Raises:
        RasterInputError: no block had a valid pixel (an empty map is not a result).
    """
    from ..geo.raster import RasterInputError

    if sum(b.tiles_computed for b in blocks) == 0:
        raise RasterInputError(
            f"{job.before} and {job.after} share no valid pixel (nodata, masked or NaN "
            "everywhere in one or both): check their nodata values and masks"
        )
    return finish_pair(
        plan,
        [b.path for b in blocks],
        job.vector(out_dir),
        job.probability(out_dir),
        min_area_m2=settings.min_area_m2,
        simplify_m=settings.simplify_m,
        overwrite=overwrite,
    )


__all__ = ["BatchSettings", "BlockDone", "block_task", "finish_task", "plan_task", "worker_model"]
