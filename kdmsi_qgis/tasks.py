"""Running a `kdmsi` Processing algorithm as a QGIS background task (the dialog's one code path).

`AlgorithmRun` wraps `QgsProcessingAlgRunnerTask`: the algorithm's `prepareAlgorithm` runs
on the main thread when the run starts, `processAlgorithm` in the task manager's worker
thread, and `finished` is emitted back on the main thread with the results or the error
message. No widget is touched here, so it runs headless in tests.

`SpeedProbe` times each detector backbone on this machine (`kdmsi.runtime.speed`) in a task, so the
dialog can show the expected speed of each before the analyst picks one.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from qgis.core import (
    QgsApplication,
    QgsProcessingAlgRunnerTask,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProject,
    QgsTask,
)
from qgis.PyQt.QtCore import QObject, pyqtSignal


class RunFeedback(QgsProcessingFeedback):
    """Keeps the messages and the last error of a run, and re-emits them as signals."""

    def __init__(self, messages):
        super().__init__()
        self._messages = messages
        self.errors: list = []

    def pushInfo(self, info: str) -> None:  # noqa: N802 (QGIS API)
        super().pushInfo(info)
        self._messages.emit(info)

    def pushWarning(self, warning: str) -> None:  # noqa: N802 (QGIS API)
        super().pushWarning(warning)
        self._messages.emit(f"Warning: {warning}")

    def reportError(self, error: str, fatalError: bool = False) -> None:  # noqa: N802, N803
        super().reportError(error, fatalError)
        self.errors.append(error)
        self._messages.emit(f"Error: {error}")


class AlgorithmRun(QObject):
    """One run of a Processing algorithm in the background.

    Signals:
        progress(float): percent done.
        message(str): each log line of the run.
        finished(bool, dict, str): success, the algorithm's results, the error message ("" on
            success or when cancelled by the user).
    """

    progress = pyqtSignal(float)
    message = pyqtSignal(str)
    finished = pyqtSignal(bool, dict, str)

    def __init__(
        self,
        algorithm_id: str,
        parameters: Dict[str, Any],
        project: Optional[QgsProject] = None,
        parent: Optional[QObject] = None,
    ):
        super().__init__(parent)
        self.algorithm_id = algorithm_id
        self.parameters = dict(parameters)
        self.context = QgsProcessingContext()
        self.context.setProject(project or QgsProject.instance())
        self.feedback = RunFeedback(self.message)
        self.feedback.progressChanged.connect(self.progress.emit)
        self.task: Optional[QgsProcessingAlgRunnerTask] = None
        self.cancelled = False

    def start(self) -> bool:
        """Queue the task; False (and `finished` emitted) when the algorithm cannot start."""
        registry = QgsApplication.processingRegistry()
        algorithm = registry.algorithmById(self.algorithm_id)
        if algorithm is None:
            self._finish(False, {}, f"algorithm {self.algorithm_id} is not available")
            return False
        ok, problem = algorithm.checkParameterValues(self.parameters, self.context)
        if not ok:
            self._finish(False, {}, problem)
            return False
        # the constructor runs prepareAlgorithm here, on the main thread
        self.task = QgsProcessingAlgRunnerTask(
            algorithm, self.parameters, self.context, self.feedback
        )
        if self.task.isCanceled():  # prepareAlgorithm failed; its error went to feedback
            self._finish(False, {}, self._error("the run could not be prepared"))
            return False
        self.task.executed.connect(self._executed)
        QgsApplication.taskManager().addTask(self.task)
        return True

    def cancel(self) -> None:
        """Ask the run to stop; the algorithm stops at its next check (between batches)."""
        self.cancelled = True
        self.feedback.cancel()
        if self.task is not None:
            self.task.cancel()

    def is_running(self) -> bool:
        return self.task is not None and self.task.status() in (
            QgsProcessingAlgRunnerTask.TaskStatus.Queued,
            QgsProcessingAlgRunnerTask.TaskStatus.OnHold,
            QgsProcessingAlgRunnerTask.TaskStatus.Running,
        )

    def _error(self, fallback: str) -> str:
        return self.feedback.errors[-1] if self.feedback.errors else fallback

    def _executed(self, successful: bool, results: dict) -> None:
        if successful:
            self._finish(True, dict(results), "")
        elif self.cancelled:
            self._finish(False, {}, "")
        else:
            self._finish(False, {}, self._error(f"{self.algorithm_id} failed"))

    def _finish(self, ok: bool, results: dict, error: str) -> None:
        self.task = None
        self.finished.emit(ok, results, error)


def _probe(task, backbones, device: str, tile_size: int, overlap: Optional[int], pair_size):
    """Worker-thread body of `SpeedProbe`: {backbone: (s per tile pair, s for the pair)};
    ``overlap`` None: detect's default for the tile size."""
    from .bridge import require_dependencies

    require_dependencies()
    from kdmsi.geo.tiling import default_overlap
    from kdmsi.runtime.speed import expected_detect_seconds, measure_tile_speed

    if overlap is None:
        overlap = default_overlap(tile_size)

    measured = {}
    for i, backbone in enumerate(backbones):
        if task.isCanceled():
            break
        seconds = measure_tile_speed(backbone, device=device, tile_size=tile_size)
        pair = None
        if pair_size:
            pair = expected_detect_seconds(*pair_size, seconds, tile_size, overlap)
        measured[backbone] = (seconds, pair)
        task.setProgress(100.0 * (i + 1) / len(backbones))
    return measured


class SpeedProbe(QObject):
    """Times a random-initialised detector of each backbone on this machine, in a QGIS task.

    Signals:
        finished(dict, str): {backbone: (seconds per tile pair, expected seconds to detect a
            pair of `pair_size` (width, height) px with tiles overlapping by `overlap` px (None:
            detect's default), or None)}, and an error message ("" when the probe ran).
    """

    finished = pyqtSignal(dict, str)

    def __init__(
        self,
        backbones,
        device: str,
        tile_size: int,
        pair_size: Optional[tuple] = None,
        overlap: Optional[int] = None,
        parent: Optional[QObject] = None,
    ):
        super().__init__(parent)
        self.task = QgsTask.fromFunction(
            "Measuring detector speed",
            _probe,
            list(backbones),
            device,
            int(tile_size),
            None if overlap is None else min(int(overlap), int(tile_size) // 2),
            pair_size,
            on_finished=self._done,
        )

    def start(self) -> None:
        QgsApplication.taskManager().addTask(self.task)

    def _done(self, exception, result=None) -> None:
        if exception is not None:
            self.finished.emit({}, str(exception))
        else:
            self.finished.emit(dict(result or {}), "")
