"""`kdmsi detect-batch`: many raster pairs, and rasters cut into row blocks, on a Dask cluster.

Without a scheduler address a local cluster starts (`distributed.LocalCluster`: N worker
processes, one thread each); with one, the work goes to a cluster the user already runs
(dask-jobqueue's SLURM/PBS clusters, Dask on Kubernetes, `dask scheduler` + `dask worker`).
Per pair: `plan_task` (align, band stretch, blocks) -> one `block_task` per row block ->
`finish_task` (mosaic, overviews, polygons), each a pure function of paths
(`kdmsi.detect.batch_tasks`), so the output folder and the inputs must be on a file system
every worker sees. A failed pair is reported in ``summary.csv`` and the others complete; pairs
whose outputs exist are skipped unless ``overwrite``. On Ctrl+C / SIGTERM the tasks are
cancelled, the cluster is stopped and the blocks' scratch folder and every temporary file go.
Dask is an optional extra (``kdmsi[dist]``): the rest of kdmsi never imports it.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from ..geo.atomic import remove_stale_temps, temp_prefix
from ..progress import CancelCheck, ProgressCallback, check_cancel, report
from .batch_pairs import PairJob, PairOutcome, write_summary
from .batch_tasks import BatchSettings, BlockDone, block_task, finish_task, plan_task
from .blocks import PairPlan

log = logging.getLogger(__name__)

DIST_EXTRA = "pip install 'kdmsi[dist]' (pinned in requirements-dist.txt)"
SCRATCH_NAME = "kdmsi-blocks"


class DaskUnavailable(ValueError):
    """Dask's distributed scheduler is not installed."""


def import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        message = f"detect-batch runs on Dask, which is not installed: {DIST_EXTRA}"
        raise DaskUnavailable(message) from None
    return distributed


@contextlib.contextmanager
def dask_client(scheduler: Optional[str], workers: int) -> Iterator[Any]:
    """A client of the cluster at ``scheduler``, or of a local cluster of ``workers`` worker
    processes with one thread each (Dask sets OMP_NUM_THREADS=1 in them), closed at exit."""
    distributed = import_distributed()
    # a failed pair is reported in the summary, and stopping busy workers is expected: Dask's
    # own lines about both (tracebacks, "still alive... killing") would only bury ours
    logging.getLogger("distributed").setLevel(logging.ERROR)
    cluster = None
    if scheduler:
        client = distributed.Client(scheduler, timeout="30s")
    else:
        cluster = distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.CRITICAL,
        )
        client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


class PairFailed(Exception):
    """A work unit's error as one line of text: it travels back from any worker whatever the
    original exception's class (some do not survive Dask's pickling)."""


def timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """``fn(*args)`` and the seconds it took (on the worker).

    Raises:
        PairFailed: what ``fn`` raised, in one line (kdmsi's own errors as they read; others
            with their class name).
    """
    start = time.perf_counter()
    try:
        return fn(*args), time.perf_counter() - start
    except (ValueError, OSError, MemoryError) as exc:  # the user errors of the detect path
        message = str(exc)
    except Exception as exc:  # noqa: BLE001 - a bug: keep what it was
        message = f"{type(exc).__name__}: {exc}"
    # raised outside the handler: an exception's context travels with it (tblib), and some
    # of ours (a FileNotFoundError that is also a ValueError) do not survive the trip
    raise PairFailed(" ".join(message.split()))


@dataclass
class _Pair:
    job: PairJob
    plan: Optional[PairPlan] = None
    blocks: dict[int, BlockDone] = field(default_factory=dict)
    futures: list = field(default_factory=list)
    seconds: float = 0.0
    outcome: Optional[PairOutcome] = None

    def tiles_done(self) -> int:
        """Tiles of the blocks finished so far."""
        return 0 if self.plan is None else sum(self.plan.tiles[i] for i in self.blocks)

    def fraction(self) -> float:
        if self.outcome is not None:
            return 1.0
        if self.plan is None:
            return 0.0
        return 0.05 + 0.9 * self.tiles_done() / max(1, sum(self.plan.tiles))


def detect_batch(
    jobs: Sequence[PairJob],
    out_dir: Path,
    settings: BatchSettings,
    *,
    scheduler: Optional[str] = None,
    workers: int = 2,
    overwrite: bool = False,
    progress: Optional[ProgressCallback] = None,
    cancelled: Optional[CancelCheck] = None,
) -> list[PairOutcome]:
    """Detect changes in every pair of ``jobs`` into ``out_dir`` on a Dask cluster and write
    ``summary.csv``; return the outcomes in the order of ``jobs``.

    Raises:
        DaskUnavailable: Dask is not installed.
        Cancelled, KeyboardInterrupt: stopped; finished pairs stay, nothing partial does.
    """
    pairs = {job.name: _Pair(job) for job in jobs}
    for pair in pairs.values():
        if not overwrite and pair.job.done(out_dir):
            pair.outcome = PairOutcome(pair.job.name, "skipped", message="outputs exist")
    todo = [p for p in pairs.values() if p.outcome is None]
    remove_stale_temps(SCRATCH_NAME, out_dir)
    scratch = out_dir / f"{temp_prefix(SCRATCH_NAME)}work"
    try:
        if todo:
            scratch.mkdir()
            with dask_client(scheduler, workers) as client:
                _run(client, todo, scratch, out_dir, settings, overwrite, progress, cancelled)
    finally:
        for pair in todo:
            if pair.outcome is None:
                pair.outcome = PairOutcome(pair.job.name, "cancelled", message="stopped")
            for stem in (pair.job.vector(out_dir).stem, pair.job.probability(out_dir).stem):
                remove_stale_temps(stem, out_dir)  # of workers killed with the cluster
        shutil.rmtree(scratch, ignore_errors=True)
        outcomes = [pairs[job.name].outcome for job in jobs]
        write_summary(out_dir, outcomes)  # type: ignore[arg-type]
    return outcomes  # type: ignore[return-value]


def _run(
    client: Any,
    todo: list[_Pair],
    scratch: Path,
    out_dir: Path,
    settings: BatchSettings,
    overwrite: bool,
    progress: Optional[ProgressCallback],
    cancelled: Optional[CancelCheck],
) -> None:
    """Submit each pair's plan, then its blocks, then its finish, as the previous step ends."""
    distributed = import_distributed()
    pending = distributed.as_completed()
    roles: dict[str, tuple[str, _Pair, int]] = {}

    def submit(kind: str, pair: _Pair, index: int, fn: Callable[..., Any], *args: Any) -> None:
        future = client.submit(timed, fn, *args, pure=False)
        roles[future.key] = (kind, pair, index)
        pair.futures.append(future)
        pending.add(future)

    for pair in todo:
        submit("plan", pair, 0, plan_task, pair.job, settings)
    for future in pending:
        check_cancel(cancelled)
        kind, pair, index = roles.pop(future.key)
        if pair.outcome is not None:
            continue  # the pair failed already
        if future.status != "finished":
            client.cancel([f for f in pair.futures if not f.done()])
            pair.outcome = PairOutcome(pair.job.name, "failed", message=_message(future))
            log.warning("%s failed: %s", pair.job.name, pair.outcome.message)
            _report(progress, todo)
            continue
        value, seconds = future.result()
        pair.seconds += seconds
        if kind == "plan":
            pair.plan = value
            for i in range(len(value.blocks)):
                path = scratch / f"{pair.job.name}-{i}.tif"
                submit("block", pair, i, block_task, value, i, pair.job.model, settings, path)
        elif kind == "block":
            pair.blocks[index] = value
            if len(pair.blocks) == len(pair.plan.blocks):  # type: ignore[union-attr]
                blocks = [pair.blocks[i] for i in sorted(pair.blocks)]
                args = (pair.plan, blocks, pair.job, out_dir, settings, overwrite)
                submit("finish", pair, 0, finish_task, *args)
        else:
            pair.outcome = PairOutcome(pair.job.name, "done", value, round(pair.seconds, 2))
            for block in pair.blocks.values():
                block.path.unlink(missing_ok=True)
        _report(progress, todo)


def _message(future: Any) -> str:
    try:
        exc = future.exception()
    except BaseException as error:  # cancelled, or the worker died with it
        exc = error
    if isinstance(exc, PairFailed):
        return str(exc)
    return " ".join(f"{type(exc).__name__}: {exc}".split()) if exc else future.status


def _report(progress: Optional[ProgressCallback], pairs: Sequence[_Pair]) -> None:
    finished = sum(p.outcome is not None for p in pairs)
    planned = [p.plan for p in pairs if p.plan is not None]
    tiles = sum(sum(plan.tiles) for plan in planned)
    done = sum(p.tiles_done() for p in pairs)
    fraction = sum(p.fraction() for p in pairs) / max(1, len(pairs))
    report(progress, fraction, f"pairs {finished}/{len(pairs)}, tiles {done}/{tiles}")


__all__ = ["DaskUnavailable", "detect_batch", "dask_client", "import_distributed"]
