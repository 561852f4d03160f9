"""The one progress/cancel contract that crosses every long loop.

`progress(fraction, message)` gets a fraction in [0, 1] of the whole job; `cancelled()` is
polled between batches. The CLI maps them to a progress bar, QGIS to QgsProcessingFeedback.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator, Optional

ProgressCallback = Callable[[float, str], None]
CancelCheck = Callable[[], bool]


class Cancelled(Exception):
    """The user cancelled a long job; whatever it was writing has been removed."""


def no_progress(fraction: float, message: str) -> None:
    """A progress callback that ignores everything."""


def check_cancel(cancelled: Optional[CancelCheck]) -> None:
    """Raise `Cancelled` when the cancel check says so, or a stop signal came (see
    `interrupts_deferred`)."""
    if _received or (cancelled is not None and cancelled()):
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


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []
_deferring: list[int] = [0]


def stop_signal() -> int:
    """The stop signal (SIGINT, SIGTERM) received inside `watch_stop_signals`, else 0."""
    return _received[0] if _received else 0


@contextlib.contextmanager
def watch_stop_signals() -> Iterator[None]:
    """Treat SIGTERM (``timeout``, ``kill``, service managers) as Ctrl+C, and remember which
    one came: both raise KeyboardInterrupt in the main thread, so every output's cleanup runs.

    Remembering matters where the interrupt lands inside a GDAL callback: GDAL turns it into a
    RuntimeError ("User terminated"), which `stop_signal` then tells apart from a real error.
    Only the main thread can install handlers; elsewhere (a QGIS task) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        if not _received:
            _received.append(signum)
        if not _deferring[0]:
            raise KeyboardInterrupt

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _received.clear()


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Around GDAL calls that take Python callbacks: a stop signal inside is only recorded.

    An exception raised inside a GDAL callback is printed by GDAL's bindings as a traceback and
    turned into an unrelated RuntimeError ("User terminated"); instead, the callbacks see the
    signal through `check_cancel` / `stop_signal` and ask GDAL to stop, and the interrupt is
    raised here, once GDAL has returned.
    """
    _deferring[0] += 1
    try:
        yield
    except (RuntimeError, Cancelled):
        if _received:
            raise KeyboardInterrupt from None
        raise
    finally:
        _deferring[0] -= 1
    if _received and not _deferring[0]:
        raise KeyboardInterrupt
