"""The top-level `kdmsi` parser and the dispatch to the verbs, with the exit statuses.

User errors (bad paths, foreign checkpoints, inconsistent datasets) end with one line on stderr
and exit status 2; a cancel (Ctrl+C) exits with 130. Neither leaves partial files behind.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from . import detect, evaluate, train_steps, train_tags

EXIT_USAGE = 2
EXIT_CANCELLED = 130


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="kdmsi", description="Weakly supervised change detection (KD-MSI)"
    )
    parser.add_argument("--version", action="version", version=f"kdmsi {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)
    # in this order in `kdmsi --help`
    train_steps.add_parsers(sub)
    evaluate.add_parsers(sub)
    detect.add_parsers(sub)
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
    from ..progress import Cancelled
    from ..runtime.onnx_runner import keep_triton_out

    keep_triton_out()  # kdmsi never compiles kernels; see its docstring
    try:
        return args.func(args)
    except (Cancelled, KeyboardInterrupt):
        print("kdmsi: cancelled; no partial output was kept", file=sys.stderr)
        return EXIT_CANCELLED
    # CheckpointError, DatasetError, BackboneError, RuntimeUnavailable... are ValueErrors (not
    # imported here: they would import torch, which an ONNX model's detect never needs)
    except (ValueError, OSError, MemoryError) as exc:
        print(f"kdmsi {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
