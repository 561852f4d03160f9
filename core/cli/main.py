"""The top-level `kdmsi` parser and the dispatch to the verbs, with the exit statuses.

User errors (bad paths, foreign checkpoints, inconsistent datasets) end with one line on stderr
and exit status 2; Ctrl+C exits with 130 and SIGTERM with 143. None leaves partial files
behind.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import NoReturn, Optional, Sequence

from . import detect, detect_batch, evaluate, train_steps, train_tags

EXIT_USAGE = 2


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse answering a usage error with one line: what is wrong, and where to look
    (its subcommand parsers are of this class too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = OneLineErrorParser(
        prog="kdmsi", description="Weakly supervised change detection (KD-MSI)"
    )
    parser.add_argument("--version", action="version", version=f"kdmsi {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)
    # in this order in `kdmsi --help`
    train_steps.add_parsers(sub)
    evaluate.add_parsers(sub)
    detect.add_parsers(sub)
    detect_batch.add_parsers(sub)
    train_tags.add_parsers(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `kdmsi` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="kdmsi: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    from ..progress import Cancelled, stop_signal, watch_stop_signals
    from ..runtime.onnx_model import keep_triton_out
    from .common import check_cli_options

    keep_triton_out()  # kdmsi never compiles kernels; see its docstring
    with watch_stop_signals():
        try:
            check_one_process(args.command)
            check_cli_options(args)
            return args.func(args)
        except (Cancelled, KeyboardInterrupt):
            return _cancelled(stop_signal())
        # CheckpointError, DatasetError, BackboneError, RuntimeUnavailable... are ValueErrors
        # (not imported here: they would import torch, which an ONNX model's detect never needs)
        except (ValueError, OSError, MemoryError) as exc:
            if stop_signal():  # an interrupt GDAL reported as a write error
                return _cancelled(stop_signal())
            print(f"kdmsi {args.command}{_rank()}: error: {one_line(exc)}", file=sys.stderr)
            return EXIT_USAGE
        except RuntimeError:  # GDAL's "User terminated" when the interrupt hit its callback
            if stop_signal():
                return _cancelled(stop_signal())
            raise


DATA_PARALLEL_VERBS = ("train-kd", "train-cd", "train-hicd", "train")
"""The verbs that run under torchrun (`kdmsi.training.distributed`)."""


def check_one_process(command: str) -> None:
    """Refuse a verb that is not data-parallel when torchrun started several processes: each
    would write the same outputs."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and command not in DATA_PARALLEL_VERBS:
        raise ValueError(
            f"{command} runs in one process, not under torchrun (only "
            f"{', '.join(DATA_PARALLEL_VERBS)} do); for many pairs use detect-batch"
        )


def _rank() -> str:
    """`` (rank N)`` in a data-parallel run's processes other than the main one (torchrun
    sets RANK), whose errors then read apart from the main process's."""
    rank = os.environ.get("RANK", "0")
    return f" (rank {rank})" if rank not in ("", "0") else ""


def _cancelled(signum: int) -> int:
    """Exit status 130 after Ctrl+C (SIGINT), 143 after SIGTERM; outputs were cleaned up."""
    signum = signum or signal.SIGINT
    name = signal.Signals(signum).name
    print(f"kdmsi: cancelled ({name}); no partial output was kept", file=sys.stderr)
    return 128 + int(signum)


def one_line(exc: BaseException) -> str:
    """An error message on one line (library messages may carry a second line of detail)."""
    return " ".join(str(exc).split())
