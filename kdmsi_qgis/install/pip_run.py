"""Run pip in QGIS's Python: streamed output, progress from its lines, cancel, a log file."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from .environment import hidden_window

LineSink = Callable[[str], None]


class InstallCancelled(Exception):
    """The analyst cancelled; nothing was changed."""


class InstallError(Exception):
    """An install step failed; the message is one line naming the problem and the fix."""


class PipSteps:
    """Turns pip's output lines into a fraction of its work, for `total` packages (None:
    not known yet, as while resolving).

    pip prints one `Collecting`/`Processing` line per package it fetches, then
    `Installing collected packages: ...` and `Successfully installed ...`.
    """

    _FETCH = re.compile(r"^\s*(Collecting|Processing|Downloading|Obtaining)\s+(\S+)")

    def __init__(self, total: Optional[int]):
        self.total = max(1, total) if total else None
        self.seen: List[str] = []
        self.fraction = 0.0
        self.message = "starting pip"

    def feed(self, line: str) -> bool:
        """Update from one line; True when the fraction or message changed."""
        text = line.strip()
        fetch = self._FETCH.match(text)
        if fetch and fetch.group(1) != "Downloading":
            name = Path(fetch.group(2)).name
            self.seen.append(name)
            count = len(self.seen)
            if self.total is None:  # grows towards 0.8 without knowing the end
                self.fraction, self.message = 0.8 * count / (count + 4), name
            else:
                self.fraction = min(0.8, 0.8 * count / self.total)
                self.message = f"fetching {name} ({count} of {self.total})"
            return True
        if fetch:  # "Downloading torch-2.13.0-...whl (190.4 MB)": the size is all pip tells
            self.message = f"downloading {text.split(None, 1)[1]}"
            return True
        if text.startswith("Installing collected packages"):
            self.fraction, self.message = 0.85, "unpacking"
            return True
        if text.startswith("Successfully installed"):
            self.fraction, self.message = 1.0, "installed"
            return True
        return False


def _stop(process: subprocess.Popen) -> None:
    """Stop pip and whatever it started (build backends), politely first."""
    try:
        if os.name == "nt":
            process.send_signal(signal.CTRL_BREAK_EVENT)
        else:
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        process.kill()
        process.wait()


def run_pip(
    python: str,
    arguments: Sequence[str],
    env: Optional[Dict[str, str]] = None,
    on_line: Optional[LineSink] = None,
    cancelled: Callable[[], bool] = lambda: False,
    log_file: Optional[Path] = None,
) -> tuple:
    """`python -m pip <arguments>`; (exit status, output lines).

    Every line goes to `on_line` and `log_file` as it comes. `cancelled` is polled every
    0.1 s; when it turns true pip is stopped and `InstallCancelled` raised.
    """
    command = [python, "-m", "pip", *arguments]
    if os.name == "nt":  # its own process group (for CTRL_BREAK_EVENT), no console window
        group = {"creationflags": 0x00000200 | hidden_window()["creationflags"]}
    else:
        group = {"start_new_session": True}
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=env,
        **group,
    )
    lines: queue.Queue[Optional[str]] = queue.Queue()

    def read() -> None:
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    output: List[str] = []
    log = open(log_file, "a", encoding="utf-8") if log_file else None
    try:
        if log:
            log.write(f"$ {' '.join(command)}\n")
        while True:
            if cancelled():
                _stop(process)
                raise InstallCancelled("cancelled; nothing was changed")
            try:
                line = lines.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None:
                break
            output.append(line)
            if log:
                log.write(line + "\n")
                log.flush()
            if on_line:
                on_line(line)
        status = process.wait()
        if log:
            log.write(f"(exit status {status})\n")
        return status, output
    finally:
        if log:
            log.close()
        if process.poll() is None:
            process.kill()
        process.wait()
        reader.join(timeout=5)
        process.stdout.close()
