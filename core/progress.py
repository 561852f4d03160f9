"""The one progress/cancel contract that crosses every long loop.

`progress(fraction, message)` gets a fraction in [0, 1] of the whole job; `cancelled()` is
polled between batches. The CLI maps them to a progress bar, QGIS to QgsProcessingFeedback.
"""

from __future__ import annotations

from typing import Callable, Optional

ProgressCallback = Callable[[float, str], None]
CancelCheck = Callable[[], bool]


class Cancelled(Exception):
    """The user cancelled a long job; whatever it was writing has been removed."""


def no_progress(fraction: float, message: str) -> None:
    """A progress callback that ignores everything."""


def never_cancelled() -> bool:
    return False


def check_cancel(cancelled: Optional[CancelCheck]) -> None:
    """Raise `Cancelled` when the cancel check says so."""
    if cancelled is not None and cancelled():
        raise Cancelled("cancelled by the user")


def report(progress: Optional[ProgressCallback], fraction: float, message: str) -> None:
    """Call `progress` (when given) with `fraction` clipped to [0, 1]."""
    if progress is not None:
        progress(min(1.0, max(0.0, float(fraction))), message)


def sub_progress(
    progress: Optional[ProgressCallback], start: float, end: float
) -> ProgressCallback:
    """A callback for one stage of a job that maps the stage's [0, 1] onto [start, end]."""
    report = progress or no_progress

    def stage(fraction: float, message: str) -> None:
        report(start + (end - start) * min(max(fraction, 0.0), 1.0), message)

    return stage
