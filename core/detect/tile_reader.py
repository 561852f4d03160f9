"""Reading tiles for the model: windows of the aligned pair read in a background thread, one
batch ahead, converted once into preallocated float32 batches (stretch and normalisation
fused, never float64)."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from ..geo.tiling import (
    Window,
)

PREFETCH_BATCHES = 1  # batches queued ahead of the model (one more is being built)

_SCAN_PER_BATCH = 16  # hand over a (possibly short) batch after this many tiles per slot


@dataclass
class _Batch:
    """Tiles ready for the model.

    Attributes:
        windows: the tiles, in grid order.
        pre, post: normalised float32 [n, C, T, T], C-contiguous views of the reader's
            preallocated buffers (None when the batch is empty); valid until the next batch
            after this one is taken.
        valid: bool [h, w] per window.
        scanned: tiles of the grid read so far (computed or skipped).
    """

    windows: list[Window]
    pre: Optional[np.ndarray]
    post: Optional[np.ndarray]
    valid: list[np.ndarray]
    scanned: int


class TileReader:
    """Prepares batches in a background thread, one batch ahead of the model.

    Iterate over it inside a ``with`` block; leaving the block (normally, on an error, or on a
    cancel) stops and joins the thread. An error in the thread is re-raised by the iteration.
    GDAL datasets of the pair are only touched by the reader thread while it runs.

    Batches are filled in place in ``prefetch + 2`` preallocated float32 [batch, C, T, T]
    buffer pairs used in turn (one in the model, ``prefetch`` queued, one being built), so a
    batch's arrays stay untouched until the consumer has asked for the batch after the next.
    `cpu_s` is the reader thread's CPU time once it has finished, `wait_s` the time the
    consumer waited for batches.
    """

    _END = object()

    def __init__(
        self,
        prepare_into: Callable[[Window, np.ndarray, np.ndarray], Optional[np.ndarray]],
        windows: Sequence[Window],
        batch_size: int,
        channels: int,
        tile_size: int,
        prefetch: int = PREFETCH_BATCHES,
    ):
        self._prepare_into = prepare_into
        self._windows = list(windows)
        self._batch_size = batch_size
        prefetch = max(1, prefetch)
        shape = (batch_size, channels, tile_size, tile_size)
        self._buffers = [
            (np.empty(shape, np.float32), np.empty(shape, np.float32)) for _ in range(prefetch + 2)
        ]
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kdmsi-tile-reader", daemon=True)
        self.cpu_s = 0.0
        self.wait_s = 0.0

    def __enter__(self) -> TileReader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.05)  # unblock a pending put
        self._thread.join()

    def __iter__(self) -> Iterator[_Batch]:
        while True:
            start = time.perf_counter()
            item = self._queue.get()
            self.wait_s += time.perf_counter() - start
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        start = time.thread_time()
        try:
            for batch in self._batches():
                if not self._put(batch):
                    return
            self._put(self._END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread
            self._put(exc)
        finally:
            self.cpu_s = time.thread_time() - start

    def _batches(self) -> Iterator[_Batch]:
        count = 0  # batches handed out so far: picks the buffer pair
        pre, post = self._buffers[0]
        windows: list[Window] = []
        valids: list[np.ndarray] = []
        scanned_since = 0
        for index, window in enumerate(self._windows):
            if self._stop.is_set():
                return
            n = len(windows)
            valid = self._prepare_into(window, pre[n], post[n])
            scanned_since += 1
            if valid is not None:
                windows.append(window)
                valids.append(valid)
            if len(windows) == self._batch_size or scanned_since >= _SCAN_PER_BATCH * max(
                1, self._batch_size
            ):
                yield _batch(pre, post, windows, valids, index + 1)
                count += 1
                pre, post = self._buffers[count % len(self._buffers)]
                windows, valids, scanned_since = [], [], 0
        if windows or scanned_since:
            yield _batch(pre, post, windows, valids, len(self._windows))


def _batch(
    pre: np.ndarray,
    post: np.ndarray,
    windows: list[Window],
    valids: list[np.ndarray],
    scanned: int,
) -> _Batch:
    n = len(windows)
    if n == 0:
        return _Batch([], None, None, [], scanned)
    return _Batch(windows, pre[:n], post[:n], valids, scanned)
