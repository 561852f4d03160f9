"""`kdmsi detect-batch`: many pairs, and rasters cut into blocks, on a Dask cluster."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .common import log, run_with_bar
from .detect import map_options

EXIT_SOME_FAILED = 1


def cmd_detect_batch(args) -> int:
    from ..detect.batch import detect_batch, import_distributed
    from ..detect.batch_pairs import read_pairs
    from ..detect.batch_tasks import BatchSettings
    from ..geo.atomic import check_output_target

    out_dir = Path(args.out_dir)
    if not out_dir.is_dir():
        raise ValueError(f"--out-dir {out_dir} is not a folder: create it first")
    check_output_target(out_dir / "summary.csv", overwrite=True)  # writable, before any work
    jobs = read_pairs(args.pairs, args.model)
    if args.scheduler and not args.scheduler.startswith(("tcp://", "tls://", "inproc://")):
        raise ValueError(
            f"--scheduler {args.scheduler}: give the scheduler's address, e.g. tcp://host:8786"
        )
    import_distributed()  # a missing Dask: one line naming the extra, before any work
    settings = BatchSettings(
        runtime=args.runtime,
        device=args.device,
        batch_size=args.batch_size,
        tile_size=args.tile_size,
        overlap_px=args.overlap,
        threshold=args.threshold,
        min_area_m2=args.min_area,
        simplify_m=args.simplify,
        block_rows=args.block_rows,
        threads=args.threads,
    )
    outcomes = run_with_bar(
        "detect-batch",
        detect_batch,
        jobs,
        out_dir,
        settings,
        scheduler=args.scheduler,
        workers=args.workers,
        overwrite=args.overwrite,
    )
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")}
    failed = [o.pair for o in outcomes if o.status == "failed"]
    log.log(
        logging.WARNING if failed else logging.INFO,
        "%d pair(s) done, %d skipped (outputs exist), %d failed%s -> %s",
        counts["done"],
        counts["skipped"],
        counts["failed"],
        f" ({', '.join(failed)}: see the message column)" if failed else "",
        out_dir / "summary.csv",
    )
    return EXIT_SOME_FAILED if counts["failed"] else 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add detect-batch to the `kdmsi` subcommands."""
    from ..detect.blocks import DEFAULT_BLOCK_ROWS

    p = sub.add_parser(
        "detect-batch",
        help="detect over many pairs (and huge rasters in blocks) on a Dask cluster",
        description="Runs `detect` on every pair of a csv (name,before,after[,model][,bands]) "
        "on a local Dask cluster or an existing one; writes <name>.gpkg, "
        "<name>_probability.tif and summary.csv into --out-dir. Needs kdmsi[dist]. Exit "
        "status 1 when a pair failed (see summary.csv), 0 otherwise.",
    )
    p.add_argument("--pairs", required=True, help="csv: name,before,after[,model][,bands]")
    p.add_argument("--out-dir", required=True, help="output folder (seen by every worker)")
    p.add_argument("--model", help="model file for the rows without a model column")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", help="an existing Dask scheduler, e.g. tcp://host:8786")
    where.add_argument(
        "--workers", type=int, default=2, help="local cluster: worker processes (default 2)"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (1)")
    p.add_argument(
        "--block-rows",
        type=int,
        default=DEFAULT_BLOCK_ROWS,
        help=f"cut taller rasters into row blocks of about this many rows ({DEFAULT_BLOCK_ROWS})",
    )
    map_options(p, "0..1; default: the model's, else 0.5")
    p.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda")
    p.add_argument("--overwrite", action="store_true", help="redo pairs whose outputs exist")
    p.set_defaults(func=cmd_detect_batch)
